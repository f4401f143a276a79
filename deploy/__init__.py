"""The deployer behind fabfile.py: workstation -> boards over SSH (DESIGN.md §5).

inventory (boards) -> remote (SSH, quoting, python/venv/CANN env) -> onboard (board-side
steps, stdlib only) -> release (deploy, rollback) / runner (board CLI) / status / doctor /
boardsetup; fleet runs a task on each board and reports failures per board.
"""

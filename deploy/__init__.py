"""The deployer behind the Fabric tasks (tasks.py): workstation -> boards over SSH or locally (docs/design.md §5).

inventory (boards) -> ssh (connections) -> remote (commands, board-side operations, uploads,
lock) -> onboard/ (the board-side half, stdlib only) -> release (deploy, rollback) /
board_cli (the board's CLI) / status / doctor / boardsetup; fleet runs a task on each board.
"""

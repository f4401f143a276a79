"""Board-side half of the deployer: runs ON THE BOARD, sent as source by deploy.remote.

Standard library only (Python >= 3.8), no shell: every path arrives inside one JSON argument,
so nothing from the inventory or the user is ever interpreted by a shell. Each operation
prints one JSON line. `files` holds the shared helpers and the entry point, `store` the
release store (docs/design.md §5), `probe` what the doctor and setup ask about the board.
"""

"""Errors of the deployer: each one names the board, what happened and what to do."""
from __future__ import annotations


class DeployError(Exception):
    """A task failed on one board; `str()` is the one line the user sees."""

    def __init__(self, board: str, message: str):
        super().__init__(f"{board}: {message}")
        self.board = board
        self.message = message


class InventoryError(Exception):
    """inventory.yml is missing, malformed, or a board's field is wrong."""

"""Errors of the deployer: each one names the board, what happened (detail) and what to do (fix)."""
from __future__ import annotations


class DeployError(Exception):
    """A task failed on one board; `str()` is the one line the user sees: `board: detail; fix`."""

    def __init__(self, board: str, detail: str, fix: str = ""):
        self.board, self.detail, self.fix = board, detail, fix
        super().__init__(f"{board}: {self.message}")

    @property
    def message(self) -> str:
        """The line without the board's name."""
        return f"{self.detail}; {self.fix}" if self.fix else self.detail


class BoardRefused(DeployError):
    """A board-side step refused or hit an OS error (errno kept: ENOSPC means a full disk)."""

    def __init__(self, board: str, detail: str, errno: int | None = None, fix: str = ""):
        super().__init__(board, detail, fix)
        self.errno = errno


class Interrupted(DeployError):
    """The user pressed Ctrl-C; the detail says what state the board was left in."""


class InventoryError(Exception):
    """inventory.yml is missing, malformed, or a board's field is wrong."""


class NotStarted(DeployError):
    """A board of a fleet that was never touched: Ctrl-C came first, or an earlier board's failure stopped the rollout."""

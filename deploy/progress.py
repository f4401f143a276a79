"""Upload progress on stderr: one tqdm bar per board on a terminal, nothing when stderr is not one."""
from __future__ import annotations

import sys
from contextlib import contextmanager

from tqdm import tqdm


class Progress:
    """Bytes sent to one board; `file(name)` gives the callback for paramiko's `put(callback=)`."""

    def __init__(self, board: str, stream=None):
        self.board = board
        self.stream = stream or sys.stderr
        self.bar = None
        self._sent = 0  # of the current file

    @contextmanager
    def upload(self, total: int):
        """A bar over `total` bytes while the block uploads (a log or a pipe gets no progress lines)."""
        live = hasattr(self.stream, "isatty") and self.stream.isatty()
        with tqdm(total=total, desc=self.board, unit="B", unit_scale=True, unit_divisor=1024, file=self.stream,
                  disable=not live, leave=False, dynamic_ncols=True) as self.bar:
            yield self

    def file(self, name: str):
        """Start the next file; returns the callback(bytes_done, file_total) that advances the bar."""
        self._sent = 0
        self.bar.set_postfix_str(name, refresh=False)
        return self._advance

    def _advance(self, done: int, total: int) -> None:
        self.bar.update(done - self._sent)
        self._sent = done

"""Upload progress on stderr: a live line per file on a terminal, one line per file otherwise."""
from __future__ import annotations

import sys


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


class Progress:
    """Callback for paramiko's `put`: shows `board: file done/total percent`."""

    def __init__(self, board: str, stream=None):
        self.board = board
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self._shown = -1

    def start(self, name: str, index: int, count: int) -> None:
        self.name, self.index, self.count, self._shown = name, index, count, -1

    def __call__(self, done: int, total: int) -> None:
        percent = 100 if total == 0 else done * 100 // total
        if self.live and percent != self._shown:
            self._shown = percent
            self.stream.write(f"\r{self._line(done, total, percent)}")
            self.stream.flush()

    def finish(self, total: int) -> None:
        self.stream.write(("\r" if self.live else "") + self._line(total, total, 100) + "\n")
        self.stream.flush()

    def _line(self, done: int, total: int, percent: int) -> str:
        return (f"{self.board}: [{self.index}/{self.count}] {self.name} "
                f"{human_bytes(done)}/{human_bytes(total)} {percent:3d}%")

"""Ctrl-C during a deploy: noted while a board step runs, acted on between steps.

A step started on the board runs to its end whatever happens here (the board does not see
our Ctrl-C), so stopping mid-step would leave the user guessing whether `current` moved.
Deferred, the deployer stops at the next step boundary and can say exactly what happened.
An upload stops after the chunk in flight: a KeyboardInterrupt inside paramiko's SFTP code
could leave the session waiting forever for an answer it already consumed.

Boards deployed in threads (deploy/fleet.py) share one `Interrupts`: signals reach the main
thread only, so the fleet installs the handler there and every board reads the same flag.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager

from tqdm import tqdm

_shared: "Interrupts | None" = None  # the fleet's, while boards run in threads


class Interrupts:
    """A SIGINT handler that only records; the deploy looks at `pending` between steps (and upload chunks)."""

    def __init__(self, notice: str = ""):
        self.pending = False
        self.notice = notice  # said on stderr at the first Ctrl-C (a fleet: boards finish their step first)

    def _note(self, signum, frame) -> None:
        if self.pending and self.notice:  # a second Ctrl-C on a fleet: the user will not wait for the steps
            print("second Ctrl-C: quitting now; a board mid-step finishes that step by itself", file=sys.stderr)
            os._exit(130)
        self.pending = True
        if self.notice:
            tqdm.write(self.notice, file=sys.stderr)  # above the boards' progress bars

    @contextmanager
    def deferred(self):
        """Record Ctrl-C instead of raising it while the block runs (main thread only: signals live there)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self._note)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def for_board() -> Interrupts:
    """The fleet's shared Interrupts while boards run in threads, else a new one for this board."""
    return _shared or Interrupts()


def stopping() -> bool:
    """Whether Ctrl-C came during a threaded fleet's run: boards not started yet stay untouched."""
    return bool(_shared and _shared.pending)


@contextmanager
def shared(notice: str):
    """One Interrupts for every board of a threaded fleet, its handler in the main thread."""
    global _shared
    _shared = Interrupts(notice)
    try:
        with _shared.deferred():
            yield _shared
    finally:
        _shared = None

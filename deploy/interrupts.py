"""Ctrl-C during a deploy: noted while a board step runs, acted on between steps.

A step started on the board runs to its end whatever happens here (the board does not see
our Ctrl-C), so stopping mid-step would leave the user guessing whether `current` moved.
Deferred, the deployer stops at the next step boundary and can say exactly what happened.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class Interrupts:
    """A SIGINT handler that only records; `raising()` lets Ctrl-C stop a local step (an upload) at once."""

    def __init__(self):
        self.pending = False

    def _note(self, signum, frame) -> None:
        self.pending = True

    def _stop(self, signum, frame) -> None:
        # noted too: paramiko may turn the KeyboardInterrupt into a link error while it closes a file
        self.pending = True
        raise KeyboardInterrupt

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

    @contextmanager
    def raising(self):
        """Inside `deferred`: Ctrl-C raises KeyboardInterrupt again (for work that is only local)."""
        if self.pending:
            raise KeyboardInterrupt
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, self._stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

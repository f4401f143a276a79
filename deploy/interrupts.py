"""Ctrl-C during a deploy: noted while a board step runs, acted on between steps.

A step started on the board runs to its end whatever happens here (the board does not see
our Ctrl-C), so stopping mid-step would leave the user guessing whether `current` moved.
Deferred, the deployer stops at the next step boundary and can say exactly what happened.
An upload stops after the chunk in flight: a KeyboardInterrupt inside paramiko's SFTP code
could leave the session waiting forever for an answer it already consumed.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class Interrupts:
    """A SIGINT handler that only records; the deploy looks at `pending` between steps (and upload chunks)."""

    def __init__(self):
        self.pending = False

    def _note(self, signum, frame) -> None:
        self.pending = True

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

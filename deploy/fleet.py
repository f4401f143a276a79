"""Run one action on each selected board; results and failures per board.

Fabric's groups run one command on every host; our tasks are Python functions that hold a
session (upload, verify, switch), so each board gets the action in its own thread (at most
`parallel` at once; one board, or `--parallel 1`, runs in this thread as before) and the
outcome of each lands in a Fabric GroupResult keyed by board: a value, or the error.
A board's printed lines are held until it is done and then printed together, so boards never
interleave; the guarantees of each board's action (lock, checks, switch) are its own.
"""
from __future__ import annotations

import io
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Callable

from fabric import GroupResult
from invoke.exceptions import Exit
from tqdm import tqdm

from deploy import interrupts as ctrl_c
from deploy.errors import DeployError, Interrupted, InventoryError, NotStarted
from deploy.inventory import Board, load_inventory, select
from deploy.remote import Remote, connect
from deploy.ssh import LINK_ERRORS, check_key
from deploy.text import shown

INTERRUPTED = 130  # the shell's status for a program stopped by Ctrl-C
DEFAULT_PARALLEL = 8  # boards at once unless --parallel says otherwise
NOTICE = "Ctrl-C: each board stops at its next step; boards not started yet are left alone (Ctrl-C again quits now)"


def boards(name: str | None) -> list[Board]:
    """The boards a task acts on; an inventory problem (or a key file that is no key) ends it with one line."""
    try:
        chosen = select(load_inventory(), name)
        for board in chosen:
            if not board.local:
                check_key(board)
    except InventoryError as e:
        raise Exit(f"inventory: {e}", code=2) from None
    return chosen


def one_board(name: str | None, task: str) -> Board:
    """The single board an interactive task needs: the named one, or the only one."""
    chosen = boards(name)
    if len(chosen) > 1:
        raise Exit(f"{task}: the inventory has {len(chosen)} boards ({', '.join(b.name for b in chosen)}); "
                   f"pick one with --board NAME", code=2)
    return chosen[0]


def count(value, option: str, task: str) -> int:
    """A whole-number option; anything else ends the task with one line and status 2."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise Exit(f"{task}: --{option} must be a whole number >= 1, not {value!r}", code=2)
    return number


def workers(parallel, chosen: list[Board], task: str) -> int:
    """Boards at once: --parallel N (a whole number >= 1), default min(8, boards)."""
    if parallel is None:
        return max(1, min(DEFAULT_PARALLEL, len(chosen)))
    return count(parallel, "parallel", task)


def attempt(board: Board, action: Callable[[Remote], object], task: str):
    """action(remote) on one board: its value, or the DeployError saying why not (Interrupted included)."""
    try:
        with connect(board) as remote:
            return action(remote)
    except DeployError as e:
        return e
    except LINK_ERRORS as e:
        return DeployError(board.name, f"connection lost during {task} ({type(e).__name__}: {e})",
                           f"check the board and run `fab {task}` again")


class _PerThread(io.TextIOBase):
    """sys.stdout while boards run in threads: a board's prints go to its own buffer, the rest through."""

    def __init__(self, real):
        self.real, self.local = real, threading.local()

    def write(self, text: str) -> int:
        buffer = getattr(self.local, "buffer", None)
        (buffer if buffer is not None else self.real).write(text)
        return len(text)

    def flush(self) -> None:
        self.real.flush()

    def isatty(self) -> bool:
        return self.real.isatty()

    def fileno(self) -> int:  # code that asks for the terminal itself gets the real one
        return self.real.fileno()

    @property
    def encoding(self) -> str:
        return self.real.encoding


class _Threads:
    """The boards of one run in a thread pool; `stop` (a board's name) ends the rollout after a failure."""

    def __init__(self, action, task: str, stop_on_failure: bool, out: _PerThread):
        self.action, self.task, self.stop_on_failure, self.out = action, task, stop_on_failure, out
        self.stop: str | None = None
        self.lock = threading.Lock()

    def one(self, board: Board):
        if ctrl_c.stopping():
            return NotStarted(board.name, "not started (Ctrl-C); nothing changed on it")
        if self.stop:
            return _stopped(board, self.stop)
        self.out.local.buffer = io.StringIO()
        try:
            value = attempt(board, self.action, self.task)
        finally:
            text, self.out.local.buffer = self.out.local.buffer.getvalue(), None
        with self.lock:
            if isinstance(value, DeployError) and self.stop_on_failure and not self.stop:
                self.stop = board.name
            if text:
                tqdm.write(text.rstrip("\n"), file=sys.stdout)  # above any progress bars, whole
        return value


def run(chosen: list[Board], action: Callable[[Remote], object], task: str, parallel: int = 1,
        stop_on_failure: bool = False) -> GroupResult:
    """action(remote) on each board, `parallel` at once; {board: its value or its DeployError}.

    One board at a time (parallel 1, or one board): Ctrl-C stops the fleet with the board's Interrupted."""
    results = {}
    if parallel <= 1 or len(chosen) <= 1:
        for board in chosen:
            failed = _failed(results)
            if stop_on_failure and failed:
                results[board] = _stopped(board, failed[0])
                continue
            value = attempt(board, action, task)
            if isinstance(value, Interrupted):
                raise value
            results[board] = value
        return GroupResult(results)
    real = sys.stdout
    sys.stdout = out = _PerThread(real)
    try:
        pool = _Threads(action, task, stop_on_failure, out)
        with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="board") as threads:
            for board, value in zip(chosen, list(threads.map(pool.one, chosen))):
                results[board] = value
    finally:
        sys.stdout = real
    return GroupResult(results)


def _stopped(board: Board, failed: str) -> NotStarted:
    """The value of a board a rollout never started because `failed` failed before it."""
    return NotStarted(board.name, f"not started: the rollout stopped after {failed} failed; nothing changed on it")


def _failed(results: dict) -> list[str]:
    """Names of the boards whose value is an error so far (GroupResult.failed is computed once, on first use)."""
    return [board.name for board, value in results.items() if isinstance(value, BaseException)]


def _interrupted(results: GroupResult, task: str) -> None:
    """After Ctrl-C on a fleet: one line per board, saying what happened on it."""
    for board, value in results.items():
        if isinstance(value, DeployError):
            print(shown(str(value)), file=sys.stderr)
        else:
            print(shown(f"{board.name}: {task} finished before the Ctrl-C" + (f": {value}" if isinstance(value, str) else "")),
                  file=sys.stderr)


def on_each(chosen: list[Board], action: Callable[[Remote], object], task: str, parallel: int = 1,
            canary: int = 0, report: Callable[[GroupResult], None] | None = None) -> GroupResult:
    """run() (the first `canary` boards first, then the rest, stopping at the first failure), report(results),
    then one line per failed board on stderr and a non-zero exit naming them."""
    phases = [chosen[:canary], chosen[canary:]] if canary else [chosen]
    found = {}
    try:
        with ctrl_c.shared(NOTICE) if parallel > 1 and len(chosen) > 1 else nullcontext() as stop:
            for phase in phases:
                failed = _failed(found)
                for board in phase if failed else ():  # a canary failed: the rest stay as they are
                    found[board] = NotStarted(board.name, f"not started: canary {failed[0]} failed; nothing changed on it")
                if not failed:
                    found.update(run(phase, action, task, parallel, stop_on_failure=bool(canary)))
    except Interrupted as e:  # one board at a time: its line says what happened
        print(shown(str(e)), file=sys.stderr)
        raise Exit(code=INTERRUPTED) from None
    results = GroupResult(found)
    if stop is not None and stop.pending:
        _interrupted(results, task)
        raise Exit(code=INTERRUPTED)
    if report:
        report(results)
    for error in results.failed.values():
        print(shown(str(error)), file=sys.stderr)
    failed = [board.name for board, e in results.failed.items() if not isinstance(e, NotStarted)]
    skipped = [board.name for board, e in results.failed.items() if isinstance(e, NotStarted)]
    if results.failed and len(chosen) > 1:
        left = f"; not started: {', '.join(skipped)}" if skipped else ""
        raise Exit(f"{task} failed on {len(failed)} of {len(chosen)} boards: {', '.join(failed)}{left}", code=1)
    if results.failed:
        raise Exit(code=1)
    return results


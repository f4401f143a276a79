"""Run one action on each selected board; results and failures per board.

Fabric's groups run one command on every host; our tasks are Python functions that hold a
session (upload, verify, switch), so each board gets the action in turn, in inventory order,
and the outcome of each lands in a Fabric GroupResult keyed by board: a value, or the error.
"""
from __future__ import annotations

import sys
from typing import Callable

from fabric import GroupResult
from invoke.exceptions import Exit

from deploy.errors import DeployError, Interrupted, InventoryError
from deploy.inventory import Board, load_inventory, select
from deploy.remote import Remote, connect
from deploy.ssh import LINK_ERRORS, check_key
from deploy.text import shown

INTERRUPTED = 130  # the shell's status for a program stopped by Ctrl-C


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


def run(chosen: list[Board], action: Callable[[Remote], object], task: str) -> GroupResult:
    """action(remote) on each board; {board: its value or its DeployError}. Ctrl-C stops the fleet."""
    results = GroupResult()
    for board in chosen:
        try:
            with connect(board) as remote:
                results[board] = action(remote)
        except Interrupted:
            raise
        except DeployError as e:
            results[board] = e
        except LINK_ERRORS as e:
            results[board] = DeployError(board.name, f"connection lost during {task} ({type(e).__name__}: {e})",
                                         f"check the board and run `fab {task}` again")
    return results


def on_each(chosen: list[Board], action: Callable[[Remote], None], task: str) -> GroupResult:
    """run(), then one line per failed board on stderr and a non-zero exit naming them."""
    try:
        results = run(chosen, action, task)
    except Interrupted as e:
        print(shown(str(e)), file=sys.stderr)
        raise Exit(code=INTERRUPTED) from None
    for error in results.failed.values():
        print(shown(str(error)), file=sys.stderr)
    failed = [board.name for board in results.failed]
    if failed and len(chosen) > 1:
        raise Exit(f"{task} failed on {len(failed)} of {len(chosen)} boards: {', '.join(failed)}", code=1)
    if failed:
        raise Exit(code=1)
    return results

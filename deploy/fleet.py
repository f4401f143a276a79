"""Run one action on each selected board; failures are reported per board, one line each."""
from __future__ import annotations

import sys
from typing import Callable

from invoke.exceptions import Exit

from deploy.errors import DeployError, InventoryError
from deploy.inventory import Board, load_inventory, select
from deploy.remote import LINK_ERRORS, Remote, connect


def boards(name: str | None) -> list[Board]:
    """The boards a task acts on; an inventory problem ends the task with its one line."""
    try:
        return select(load_inventory(), name)
    except InventoryError as e:
        raise Exit(f"inventory: {e}", code=2) from None


def one_board(name: str | None, task: str) -> Board:
    """The single board an interactive task needs: the named one, or the only one."""
    chosen = boards(name)
    if len(chosen) > 1:
        raise Exit(f"{task}: the inventory has {len(chosen)} boards ({', '.join(b.name for b in chosen)}); "
                   f"pick one with --board NAME", code=2)
    return chosen[0]


def on_each(chosen: list[Board], action: Callable[[Remote], None], task: str) -> None:
    """Connect to each board in turn and run action; exit non-zero naming those that failed."""
    failed = []
    for board in chosen:
        try:
            with connect(board) as remote:
                action(remote)
        except DeployError as e:
            print(str(e), file=sys.stderr)
            failed.append(board.name)
        except LINK_ERRORS as e:
            print(f"{board.name}: connection lost during {task} ({type(e).__name__}: {e}); "
                  f"check the board and run `fab {task}` again", file=sys.stderr)
            failed.append(board.name)
    if failed and len(chosen) > 1:
        raise Exit(f"{task} failed on {len(failed)} of {len(chosen)} boards: {', '.join(failed)}", code=1)
    if failed:
        raise Exit(code=1)

"""Fabric tasks: workstation -> boards. The boards are in inventory.yml (or $EDGE_LLM_INVENTORY).

    fab deploy --bundle bundles/model [--board NAME]   upload, verify on the board, switch `current`
    fab chat | generate --prompt TEXT | bench | status | rollback   [--board NAME]
    fab setup [--wheels DIR] [--with-plugin] | doctor [--bundle DIR] [--json]   prepare / check boards

Each task acts on every board, or the one named; the work lives in the deploy/ package.
"""
from __future__ import annotations

import json
from pathlib import Path

from fabric import task
from invoke.exceptions import Exit

from board.manifest import BundleError
from deploy import boardsetup
from deploy import doctor as checkup
from deploy import fleet, release, runner
from deploy.progress import Progress
from deploy.status import board_status, status_line


def _bundle(path, what, verify=True):
    """The local bundle with board/ code; a corrupt one ends the task with one line."""
    try:
        return release.collect(path, verify=verify)
    except BundleError as e:
        raise Exit(f"{what}: {e}", code=2) from None


@task(help={"bundle": "bundle directory (from `python -m host build`)", "board": "only this board",
            "no_reuse": "upload every file even when the board already has it"})
def deploy(c, bundle, board=None, no_reuse=False):
    """Upload a bundle and board/ code, verify every sha256 on the board, switch `current`."""
    chosen = fleet.boards(board)
    payload = _bundle(bundle, "refusing to deploy")

    def one(remote):
        print(release.deploy(remote, payload, Progress(remote.board.name), reuse=not no_reuse).line(remote.board.name))

    fleet.on_each(chosen, one, "deploy")


@task(help={"board": "only this board"})
def rollback(c, board=None):
    """Make the previously deployed release current again."""
    fleet.on_each(fleet.boards(board), lambda remote: print(release.rollback(remote)), "rollback")


@task(help={"board": "only this board", "json": "one JSON object per board"})
def status(c, board=None, json_=False):
    """Current release, its bundle and model, free memory and disk."""

    def one(remote):
        s = board_status(remote)
        print(json.dumps(s) if json_ else status_line(s))

    fleet.on_each(fleet.boards(board), one, "status")


@task(help={"prompt": "the prompt", "max_new_tokens": "tokens to generate", "greedy": "greedy decoding",
            "board": "only this board"})
def generate(c, prompt, max_new_tokens=64, greedy=False, board=None):
    """Generate once from a prompt on the board's current release and print the text."""
    chosen = fleet.boards(board)

    def one(remote):
        if len(chosen) == 1:  # one board: stream the text as the board produces it
            runner.generate(remote, prompt, int(max_new_tokens), greedy, stream=True)
        else:
            print(f"[{remote.board.name}] {runner.generate(remote, prompt, int(max_new_tokens), greedy)}", end="")

    fleet.on_each(chosen, one, "generate")


@task(help={"prompt_tokens": "prompt length", "new_tokens": "tokens to generate", "board": "only this board"})
def bench(c, prompt_tokens=64, new_tokens=64, board=None):
    """Run the board's benchmark; one JSON line per board."""
    fleet.on_each(fleet.boards(board),
                  lambda remote: print(json.dumps(runner.bench(remote, int(prompt_tokens), int(new_tokens)))), "bench")


@task(help={"board": "the board to talk to (needed when the inventory has several)"})
def chat(c, board=None):
    """Interactive chat with the board's current release (Ctrl-D to quit)."""
    codes = []
    fleet.on_each([fleet.one_board(board, "chat")], lambda remote: codes.append(runner.chat(remote)), "chat")
    if codes and codes[0] != 0:
        raise Exit(code=codes[0])


@task(help={"board": "only this board", "bundle": "compare memory and disk with this bundle (default: the current release)",
            "json": "one JSON object per board"})
def doctor(c, board=None, bundle=None, json_=False):
    """Read-only checks: can each board run the bundle? One line per check, with the fix."""
    payload = _bundle(bundle, "doctor", verify=False) if bundle else None
    results = [(b, checkup.doctor(b, payload)) for b in fleet.boards(board)]
    for b, checks in results:
        if json_:
            print(json.dumps(checkup.report_json(b, checks)))
        else:
            print("\n".join(checkup.report_lines(b, checks)))
    if not all(checkup.ready(checks) for _, checks in results):
        raise Exit(code=1)


@task(help={"board": "only this board", "wheels": "directory of wheels to install from, offline (pip --no-index)",
            "with_plugin": "build and install the custom op plugin from docker/plugin/ (needs CANN on the board)",
            "system_site_packages": "let the venv see the board python's own packages"})
def setup(c, board=None, wheels=None, with_plugin=False, system_site_packages=False):
    """Make boards ready: install path, venv with board/requirements.txt, CANN env.sh, plugin. Idempotent."""

    def one(remote):
        steps = boardsetup.setup(remote, wheels and Path(wheels), with_plugin, system_site_packages)
        print("\n".join(boardsetup.setup_lines(remote.board.name, steps)))

    fleet.on_each(fleet.boards(board), one, "setup")

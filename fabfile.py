"""Fabric tasks: workstation -> boards. The boards are in inventory.yml (or $EDGE_LLM_INVENTORY).

    fab deploy --bundle bundles/model [--board NAME]   upload, verify on the board, switch `current`
    fab chat | generate --prompt TEXT | bench | status | rollback   [--board NAME]

Each task acts on every board, or the one named; the work lives in the deploy/ package.
"""
from __future__ import annotations

import json
import sys

from fabric import task
from invoke.exceptions import Exit

from board.manifest import BundleError
from deploy import fleet, release, runner
from deploy.progress import Progress
from deploy.status import board_status, status_line


@task(help={"bundle": "bundle directory (from `python -m host build`)", "board": "only this board",
            "no_reuse": "upload every file even when the board already has it"})
def deploy(c, bundle, board=None, no_reuse=False):
    """Upload a bundle and board/ code, verify every sha256 on the board, switch `current`."""
    chosen = fleet.boards(board)
    try:
        payload = release.collect(bundle)
    except BundleError as e:
        raise Exit(f"refusing to deploy: {e}", code=2) from None

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
        text = runner.generate(remote, prompt, int(max_new_tokens), greedy)
        sys.stdout.write(text if len(chosen) == 1 else f"[{remote.board.name}] {text}")
        sys.stdout.flush()

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

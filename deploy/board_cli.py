"""The board's own CLI (`python -m board ...`, board/__main__.py) seen from the workstation.

`generate`, `bench` and `chat` run on the current release; `verify` is the board's check of a
release before `current` moves to it (the board's python, in its venv, with its CANN env).
"""
from __future__ import annotations

import json
import sys
import time

from deploy.errors import DeployError
from deploy.remote import Remote


def _need_release(remote: Remote) -> None:
    if remote.run(["test", "-d", remote.path("current", "board")], env=False).exited != 0:
        raise DeployError(remote.board.name, f"no release deployed under {remote.root}", "run `fab deploy --bundle DIR` first")


def _checked(remote: Remote, args: list[str], what: str, stream: bool = False) -> str:
    """stdout of `python -m board ARGS` (shown as it comes when stream); DeployError with its last error line."""
    _need_release(remote)
    current = remote.path("current")
    result = remote.board_cli([*args, "--bundle", current], release=current, hide="stderr" if stream else True)
    if result.exited != 0:
        raise DeployError(remote.board.name, f"{what} failed on the board: {result.last_line()}")
    return result.stdout


def generate(remote: Remote, prompt: str, max_new_tokens: int, greedy: bool = False, stream: bool = False,
             raw: bool = False) -> str:
    """The text the board's model generates for one prompt (streamed to stdout when stream): an answer to it
    when the bundle has a chat template, else its continuation; raw: always the continuation."""
    args = ["generate", "--prompt", prompt, "--max-new-tokens", str(max_new_tokens), "--chat", "no" if raw else "auto"]
    return _checked(remote, args + (["--greedy"] if greedy else []), "generate", stream)


def bench(remote: Remote, prompt_tokens: int, new_tokens: int, record: bool = False) -> dict:
    """The board's benchmark JSON, with the board's name added; with record, kept in <path>/bench.json with the
    release it ran on, for `fab status`."""
    out = _checked(remote, ["bench", "--prompt-tokens", str(prompt_tokens), "--new-tokens", str(new_tokens), "--json"], "bench")
    try:
        result = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise DeployError(remote.board.name, f"bench printed no JSON (got {out.strip()[-200:]!r})",
                          "update board/ and redeploy") from None
    if record:
        on = remote.onboard("index", root=remote.root)["current"]
        remote.onboard("write_text", path=remote.path("bench.json"),
                       text=json.dumps({**result, "release": on, "at": time.time()}) + "\n")
    return {"board": remote.board.name, **result}


def chat(remote: Remote) -> int:
    """Interactive chat (the board CLI owns the conversation); its exit status.

    A terminal gets a pty (line editing, Ctrl-C stops an answer); piped input is passed as is,
    so the end of it ends the chat as Ctrl-D would (a pty would wait for a key forever).
    """
    _need_release(remote)
    current = remote.path("current")
    tty = sys.stdin.isatty()
    return remote.board_cli(["chat", "--bundle", current], release=current, pty=tty, hide=False,
                            in_stream=None if tty else sys.stdin).exited


def verify(remote: Remote, release: str, modules: list) -> None:
    """The board's own check of a release before it becomes current; DeployError saying what to fix.

    Its python must import what the backend needs, and `python -m board verify` of the release
    (from the release's own board/ package) must pass: manifest, integrity rule, every sha256.
    """
    board = remote.board.name
    imports = remote.onboard("imports", runtime=True, modules=modules)
    if imports["failed"]:
        what = "; ".join(f"{name} ({why})" for name, why in sorted(imports["failed"].items()))
        raise DeployError(board, f"the board's python {imports['executable']} cannot import {what}",
                          f"run `fab setup --board {board}`")
    result = remote.board_cli(["verify", "--bundle", release], release=release)
    if result.exited != 0:
        raise DeployError(board, f"the board's check of the new release failed: {result.last_line()}",
                          f"run `fab setup --board {board}` and check the bundle with `python -m board verify --bundle DIR`")

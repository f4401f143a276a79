"""Run the board's own CLI (`python -m board ...`, see board/__main__.py) on the current release."""
from __future__ import annotations

import json

from deploy.errors import DeployError
from deploy.remote import Remote


def _need_release(remote: Remote) -> None:
    if remote.run(["test", "-d", remote.path("current", "board")], env=False).exited != 0:
        raise DeployError(remote.board.name, f"no release deployed under {remote.root}; run `fab deploy --bundle DIR` first")


def _checked(remote: Remote, args: list[str], what: str, stream: bool = False) -> str:
    """stdout of `python -m board ARGS` (shown as it comes when stream); DeployError with its last error line."""
    _need_release(remote)
    r = remote.board_cli([*args, "--bundle", remote.path("current")], hide="stderr" if stream else True)
    if r.exited != 0:
        why = (r.stderr.strip().splitlines() or [f"exit status {r.exited}"])[-1]
        raise DeployError(remote.board.name, f"{what} failed on the board: {why}")
    return r.stdout


def generate(remote: Remote, prompt: str, max_new_tokens: int, greedy: bool = False, stream: bool = False) -> str:
    """The text the board's model generates for one prompt (streamed to stdout when stream)."""
    args = ["generate", "--prompt", prompt, "--max-new-tokens", str(max_new_tokens)]
    return _checked(remote, args + (["--greedy"] if greedy else []), "generate", stream)


def bench(remote: Remote, prompt_tokens: int, new_tokens: int) -> dict:
    """The board's benchmark JSON, with the board's name added."""
    out = _checked(remote, ["bench", "--prompt-tokens", str(prompt_tokens), "--new-tokens", str(new_tokens), "--json"], "bench")
    try:
        result = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise DeployError(remote.board.name, f"bench printed no JSON (got {out.strip()[-200:]!r}); update board/ and redeploy") from None
    return {"board": remote.board.name, **result}


def chat(remote: Remote) -> int:
    """Interactive chat in a pty (the board CLI owns the conversation); its exit status."""
    _need_release(remote)
    return remote.board_cli(["chat", "--bundle", remote.path("current")], pty=True, hide=False).exited

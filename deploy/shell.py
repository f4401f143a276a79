"""Shell words for command lines sent to a board: every value quoted, only `$HOME` expands."""
from __future__ import annotations

import shlex


class HomePath(str):
    """A path below the remote user's home, written without the `$HOME/` prefix."""


def home_relative(path: str) -> str:
    """An inventory path for the shell: `~/x` becomes a HomePath (the remote $HOME), others as is."""
    return HomePath(path[2:]) if path.startswith("~/") else path


def quote(value: str) -> str:
    """Shell-quote one word; a HomePath becomes "$HOME"/'rest' so only $HOME expands."""
    if isinstance(value, HomePath):
        return '"$HOME"/' + shlex.quote(str(value))
    return shlex.quote(value)

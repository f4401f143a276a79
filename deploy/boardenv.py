"""What `fab setup` makes and `fab doctor` checks: CANN's set_env.sh, the plugin path, pinned packages, env.sh.

Both import these from here, so setup installs exactly what the doctor looks for.
"""
from __future__ import annotations

from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from board.ascend import PLUGIN_VENDOR
from deploy.inventory import Board
from deploy.shell import HomePath, home_relative, quote

# Where CANN's toolkit installs its environment script on Ascend boards (root or user install).
CANN_ENV_CANDIDATES = ("/usr/local/Ascend/ascend-toolkit/set_env.sh", HomePath("Ascend/ascend-toolkit/set_env.sh"))
REQUIREMENTS = Path(__file__).resolve().parents[1] / "board" / "requirements.txt"


def cann_scripts(board: Board) -> list:
    """The set_env.sh paths to try, as shell words (`~/` stays relative to the remote $HOME)."""
    return [home_relative(board.cann_env)] if board.cann_env else list(CANN_ENV_CANDIDATES)


def cann_candidates(board: Board) -> list:
    """The same paths as the board-side probe expands them (`~/...`)."""
    return [f"~/{p}" if isinstance(p, HomePath) else p for p in cann_scripts(board)]


def plugin_dir(root: str) -> str:
    """Where `fab setup --with-plugin` installs the custom op plugin on the board."""
    return f"{root}/opp/vendors/{PLUGIN_VENDOR}"


def pins(path: Path = REQUIREMENTS) -> dict:
    """Canonical name -> pinned version from a requirements file; ValueError on an unpinned line."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement as e:
            raise ValueError(f"{path}: {line!r} is not a requirement ({e})") from None
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if len(exact) != 1:
            raise ValueError(f"{path}: {line!r} must pin one version (name==version)")
        out[canonicalize_name(req.name)] = exact[0]
    return out


def env_script(cann_script: str | None, plugin: str | None) -> str:
    """<root>/env.sh: what `fab setup` found, sourced before every board command."""
    lines = ["# Written by `fab setup`; sourced before every board command (deploy/remote.py)."]
    if cann_script:
        lines.append(f". {quote(cann_script)}")
    else:
        lines.append("# No CANN set_env.sh was found on this board at setup time.")
    if plugin:
        lines.append(f'export ASCEND_CUSTOM_OPP_PATH={quote(plugin)}${{ASCEND_CUSTOM_OPP_PATH:+:$ASCEND_CUSTOM_OPP_PATH}}')
    return "\n".join(lines) + "\n"

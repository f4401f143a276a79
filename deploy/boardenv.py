"""What `fab setup` makes and `fab doctor` checks: CANN's set_env.sh, the plugin path, the board's
requirement set, env.sh.

Both import these from here, so setup installs exactly what the doctor looks for. A requirement set
is one of board/requirements*.txt read for one board: its Python picks the lines (pip markers),
its backend picks the file (acl boards: numpy < 2), its machine and glibc pick the wheels.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from board.ascend import CANN_PYTHON, PLUGIN_VENDOR, version_key
from deploy.inventory import Board
from deploy.shell import HomePath, home_relative, quote

# Where CANN's toolkit installs its environment script on Ascend boards (root or user install).
CANN_ENV_CANDIDATES = ("/usr/local/Ascend/ascend-toolkit/set_env.sh", HomePath("Ascend/ascend-toolkit/set_env.sh"))
BOARD_DIR = Path(__file__).resolve().parents[1] / "board"
REQUIREMENTS = {"onnxruntime": BOARD_DIR / "requirements.txt", "acl": BOARD_DIR / "requirements-acl.txt"}
SERVE_REQUIREMENTS = BOARD_DIR / "requirements-serve.txt"
LOCKS = BOARD_DIR / "locks"  # <backend>-pyX.Y.txt, serve-pyX.Y.txt: closures made by scripts/lock-board.py
# The Pythons the sets are locked and tested for (pyproject.toml's requires-python is the lower bound).
PYTHONS = ((3, 9), (3, 10), (3, 11), (3, 12))
MACHINES = ("aarch64", "x86_64")  # the architectures onnxruntime publishes Linux wheels for


def cann_scripts(board: Board) -> list:
    """The set_env.sh paths to try, as shell words (`~/` stays relative to the remote $HOME)."""
    return [home_relative(board.cann_env)] if board.cann_env else list(CANN_ENV_CANDIDATES)


def cann_candidates(board: Board) -> list:
    """The same paths as the board-side probe expands them (`~/...`)."""
    return [f"~/{p}" if isinstance(p, HomePath) else p for p in cann_scripts(board)]


def plugin_dir(root: str) -> str:
    """Where `fab setup --with-plugin` installs the custom op plugin on the board."""
    return f"{root}/opp/vendors/{PLUGIN_VENDOR}"


def requirement_lines(path: Path) -> list:
    """The requirement lines of a requirements file, with `-r FILE` includes expanded in place
    (comments and blank lines dropped)."""
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            out += requirement_lines(path.parent / line[3:].strip())
        elif line:
            out.append(line)
    return out


def pins(path: Path, python: tuple) -> dict:
    """Canonical name -> pinned version for a board whose Python is `python` (major, minor);
    ValueError on a line that is not one exact pin, or on a name pinned twice for one Python."""
    env = {"python_version": "%d.%d" % tuple(python[:2]), "python_full_version": "%d.%d.0" % tuple(python[:2])}
    out = {}
    for line in requirement_lines(path):
        try:
            req = Requirement(line)
        except InvalidRequirement as e:
            raise ValueError(f"{path}: {line!r} is not a requirement ({e})") from None
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if len(exact) != 1:
            raise ValueError(f"{path}: {line!r} must pin one version (name==version)")
        if req.marker and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        if name in out:
            raise ValueError(f"{path}: {req.name} is pinned twice for Python {env['python_version']}")
        out[name] = exact[0]
    return out


def runtime_modules(backend: str) -> list:
    """What the board's python must import to run a release: the packages of its requirements file
    but onnxruntime (their import names are their names), then the backend's own module."""
    names = [Requirement(line).name for line in requirement_lines(REQUIREMENTS[backend])]
    return [n for n in dict.fromkeys(names) if n != "onnxruntime"] + [backend]


@dataclass(frozen=True)
class RequirementSet:
    """What one board gets: a requirements file read for the board's Python, and its lock."""

    file: Path
    python: tuple  # (major, minor)
    machine: str
    pins: dict  # canonical name -> version of the packages board code imports
    lock: Path  # every package installed, pinned (what `fab setup` installs)

    @property
    def name(self) -> str:
        return f"{self.lock.relative_to(BOARD_DIR.parent)} for {self.machine}"

    def serve_lock(self) -> Path:
        return LOCKS / f"serve-py{self.python[0]}.{self.python[1]}.txt"

    def summary(self) -> str:
        return ", ".join(f"{n}=={v}" for n, v in sorted(self.pins.items()))


def requirement_set(backend: str, python, machine: str) -> RequirementSet:
    """The set for a board; ValueError naming the fix when no set fits its Python or machine."""
    python = tuple(python[:2])
    if python < PYTHONS[0]:
        raise ValueError(f"the board's Python {python[0]}.{python[1]} is older than {PYTHONS[0][0]}.{PYTHONS[0][1]}, "
                         f"the oldest the board package runs on: install Python "
                         f"{'-'.join('%d.%d' % p for p in (PYTHONS[0], PYTHONS[-1]))} (e.g. conda) and set "
                         f"'python' in the inventory to it")
    if machine not in MACHINES:
        raise ValueError(f"the board is {machine}: onnxruntime publishes wheels for {' and '.join(MACHINES)} only")
    kind = "acl" if backend == "acl" else "onnxruntime"
    lock = LOCKS / f"{kind}-py{python[0]}.{python[1]}.txt"
    if not lock.is_file():
        raise ValueError(f"the board's Python {python[0]}.{python[1]} has no locked requirement set (locked: "
                         f"{', '.join('%d.%d' % p for p in PYTHONS)}): use one of those Pythons and set 'python' in "
                         f"the inventory to it")
    return RequirementSet(REQUIREMENTS[kind], python, machine, pins(REQUIREMENTS[kind], python), lock)


def wheel_platforms(machine: str, glibc: str | None) -> list:
    """pip's --platform tags for a board: manylinux_2_17 up to the board's glibc (aarch64 wheels of
    numpy 2 and onnxruntime are manylinux_2_27/2_28, so manylinux2014 alone finds none)."""
    minor = int(glibc.split(".")[1]) if glibc and glibc.startswith("2.") else 28
    return [f"manylinux_2_{m}_{machine}" for m in range(17, max(minor, 17) + 1)]


def download_args(rset: RequirementSet, glibc: str | None, dest: str = "wheels/", serve: bool = True) -> list:
    """`pip download` arguments, run on any machine, that fetch a board's wheels for `fab setup --wheels`
    (--no-deps: the locks list every package, and pip would read their markers for its own Python)."""
    words = ["download", "--no-deps", "--only-binary=:all:", "--python-version", "%d.%d" % rset.python]
    for tag in wheel_platforms(rset.machine, glibc):
        words += ["--platform", tag]
    root = BOARD_DIR.parent
    words += ["-r", str(rset.lock.relative_to(root))] + (["-r", str(rset.serve_lock().relative_to(root))] if serve else [])
    return words + ["-d", dest]


def download_command(rset: RequirementSet, glibc: str | None, dest: str = "wheels/") -> str:
    """download_args as one command line to show (run from the project's checkout)."""
    return " ".join(["pip", *download_args(rset, glibc, dest)])


def cann_fit(cann: str | None, python, numpy: str | None) -> tuple:
    """(ok, detail) of the board's Python and numpy against what its CANN release asks (board/ascend.py's
    CANN_PYTHON); ok is None when there is no CANN or no rule for it."""
    if not cann:
        return None, "no CANN"
    rules = [r for r in CANN_PYTHON if version_key(cann) >= version_key(r[0])]
    if not rules:
        return None, f"CANN {cann}: no recorded Python/numpy rule"
    _, low, high, numpy_spec = rules[-1]
    asks = f"CANN {cann} asks Python {low[0]}.{low[1]}-{high[0]}.{high[1]} and numpy {numpy_spec}"
    problems = []
    if not low <= tuple(python[:2]) <= high:
        problems.append(f"Python {python[0]}.{python[1]}")
    if numpy and not SpecifierSet(numpy_spec).contains(numpy, prereleases=True):
        problems.append(f"numpy {numpy}")
    return (not problems), asks + (f"; the board has {' and '.join(problems)}" if problems else "")


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

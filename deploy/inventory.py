"""inventory.yml: the boards a task acts on, read and validated into `Board` records.

`EDGE_LLM_INVENTORY` overrides the file's path. String values may use `${VAR}` for an
environment variable; local paths accept `~`. A board with `connection: local` is this machine:
it needs no host, user or key, and its python defaults to the one running `fab`.
"""
from __future__ import annotations

import getpass
import os
import re
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from board import backends as board_backends
from board.ascend import SOCS, soc_hint
from deploy.errors import InventoryError

DEFAULT_INVENTORY = Path(__file__).resolve().parents[1] / "inventory.yml"
BACKENDS = tuple(b for b in board_backends.BACKENDS if b != "auto")  # a board names the one it runs
CONNECTIONS = ("ssh", "local")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Board:
    name: str
    host: str
    user: str
    key: str | None  # local private key file (None for a local board)
    path: str  # install path on the board (absolute, or ~/...)
    backend: str
    port: int = 22
    known_hosts: str = "~/.ssh/known_hosts"
    python: str = "python3"
    soc: str | None = None
    trust_new_host: bool = False  # first contact adds the host key to known_hosts
    keep_releases: int = 3
    connect_timeout: int = 10
    cann_env: str | None = None  # set_env.sh on the board; default: the usual CANN locations
    connection: str = "ssh"  # local: this machine, run as local processes instead of over SSH

    @property
    def local(self) -> bool:
        return self.connection == "local"

    @property
    def key_file(self) -> Path:
        return Path(self.key).expanduser()

    @property
    def known_hosts_file(self) -> Path:
        return Path(self.known_hosts).expanduser()


_REQUIRED = {"ssh": ("name", "host", "user", "key", "path", "backend"), "local": ("name", "path", "backend")}
_FIELDS = {f.name: f for f in fields(Board)}


def inventory_path() -> Path:
    """The inventory file: `EDGE_LLM_INVENTORY` when set, else inventory.yml beside fabfile.py."""
    return Path(os.environ.get("EDGE_LLM_INVENTORY") or DEFAULT_INVENTORY)


def _expand(value, where: str):
    if not isinstance(value, str):
        return value

    def sub(match: re.Match) -> str:
        name = match.group(1)
        if name == "USER" and name not in os.environ:  # unset in containers and cron; the login name is meant
            return getpass.getuser()
        if name not in os.environ:
            raise InventoryError(f"{where}: ${{{name}}} is not set in the environment; set it or write the value")
        return os.environ[name]

    return _VAR.sub(sub, value)


def _check(board: dict, where: str) -> None:
    """Types and ranges of one board's fields; raises naming the field and the fix."""

    def bad(field: str, want: str) -> InventoryError:
        return InventoryError(f"{where}: field '{field}' {want} (got {board[field]!r})")

    for name in ("host", "user", "key", "path", "known_hosts", "python", "cann_env", "connection"):
        if name in board and board[name] is not None and (not isinstance(board[name], str) or not board[name]):
            raise bad(name, "must be a non-empty string")
    if not _NAME.match(str(board["name"])):
        raise bad("name", "must be letters, digits, '.', '_' or '-'")
    for name, low, high in (("port", 1, 65535), ("keep_releases", 1, 100), ("connect_timeout", 1, 600)):
        if name in board and (type(board[name]) is not int or not low <= board[name] <= high):
            raise bad(name, f"must be an integer {low}-{high}")
    if board.get("connection", "ssh") not in CONNECTIONS:
        raise bad("connection", f"must be one of {', '.join(CONNECTIONS)}")
    if board["backend"] not in BACKENDS:
        raise bad("backend", f"must be one of {', '.join(BACKENDS)}")
    if board.get("soc") is not None and board["soc"] not in SOCS:
        raise bad("soc", f"must be one of {', '.join(SOCS)} ({soc_hint()})")
    if "trust_new_host" in board and not isinstance(board["trust_new_host"], bool):
        raise bad("trust_new_host", "must be true or false")
    path = board["path"]
    if not (path.startswith("/") or path.startswith("~/")) or "\n" in path:
        raise bad("path", "must be absolute or start with ~/ (e.g. /home/HwHiAiUser/edge-llm)")


def _local_defaults() -> dict:
    """What a board on this machine needs no line for: who and where it is, and the python running `fab`."""
    return {"host": "localhost", "user": getpass.getuser(), "key": None, "python": sys.executable}


def parse_inventory(data, source: str) -> list[Board]:
    """Boards from the inventory's parsed YAML; InventoryError naming board and field."""
    if not isinstance(data, dict) or not isinstance(data.get("boards"), list) or not data["boards"]:
        raise InventoryError(f"{source}: expected a top-level 'boards:' list with at least one board")
    boards, seen = [], set()
    for i, raw in enumerate(data["boards"], 1):
        where = f"{source}: board #{i}"
        if not isinstance(raw, dict):
            raise InventoryError(f"{where}: expected a mapping of fields (name, host, user, ...)")
        if raw.get("name"):
            where = f"{source}: board '{raw['name']}'"
        unknown = sorted(set(raw) - set(_FIELDS))
        if unknown:
            raise InventoryError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(_FIELDS)}")
        board = {k: _expand(v, f"{where}: field '{k}'") for k, v in raw.items()}
        if board.get("connection") == "local":
            board = {**_local_defaults(), **board}
        missing = [k for k in _REQUIRED.get(board.get("connection"), _REQUIRED["ssh"]) if board.get(k) in (None, "")]
        if missing:
            raise InventoryError(f"{where}: missing field(s) {', '.join(missing)}")
        _check(board, where)
        if board["name"] in seen:
            raise InventoryError(f"{where}: the name is used twice; board names must be unique")
        seen.add(board["name"])
        boards.append(Board(**board))
    return boards


def load_inventory(path: Path | None = None) -> list[Board]:
    """Read and validate the inventory file (default: `inventory_path()`)."""
    path = Path(path) if path else inventory_path()
    try:
        text = path.read_text()
    except OSError as e:
        raise InventoryError(f"{path}: cannot read the inventory ({e.strerror}); set EDGE_LLM_INVENTORY or create it") from None
    except UnicodeDecodeError:
        raise InventoryError(f"{path}: not a text file (an inventory is YAML); set EDGE_LLM_INVENTORY to the right file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InventoryError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    return parse_inventory(data, str(path))


def select(boards: list[Board], name: str | None) -> list[Board]:
    """All boards, or the one named; InventoryError listing the names when it is unknown."""
    if not name:
        return boards
    chosen = [b for b in boards if b.name == name]
    if not chosen:
        raise InventoryError(f"no board named '{name}' in the inventory (boards: {', '.join(b.name for b in boards)})")
    return chosen

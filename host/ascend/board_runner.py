"""ATC on the board itself over SSH: upload the ONNX, compile with one core, fetch the .om.

This is the one place host reaches into deploy (its inventory and SSH connection), through
`board_runner`, imported only when a compile asks for the board.
"""
from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Protocol

from board.ascend import board_model, soc_hint
from host.ascend.atc import BOARD_ATC_ENV, BOARD_CPU, AtcCommand, ToolMissing, failure, produced_om
from host.ascend.runners import FACTS_SOURCE, cann_from_facts
from host.errors import InputError


class BoardShell(Protocol):
    """What the board runner needs from a connection (RemoteBoardShell adapts deploy.remote)."""

    def run(self, argv: list[str], cwd: str | None = None) -> tuple[int, str]: ...
    def put(self, local: Path, remote: str) -> None: ...
    def get(self, remote: str, local: Path) -> None: ...
    def scratch(self) -> str: ...


@dataclass
class BoardRunner:
    """`open_shell()` is a context manager yielding a BoardShell; paths are relative to a
    scratch directory on the board, so the command is known before connecting."""

    open_shell: Callable[[], ContextManager[BoardShell]]
    board: str
    name: str = "board"
    cann: str | None = None  # read on the board during `run`
    machine: str = BOARD_CPU  # ATC runs on the board: no --host_env_* needed

    def paths(self, bundle: Path, onnx_name: str, workdir: Path) -> tuple[str, str]:
        return onnx_name, "model"

    def argv(self, command: AtcCommand) -> list[str]:
        return ["env", *(f"{k}={v}" for k, v in BOARD_ATC_ENV.items()), *command.argv]

    def cann_version(self) -> str | None:
        return self.cann

    def run(self, command: AtcCommand, bundle: Path, workdir: Path) -> Path:
        onnx_name = command.argv[1].split("=", 1)[1]
        with self.open_shell() as shell:
            remote_dir = shell.scratch()
            rc, output = shell.run(["mkdir", "-p", remote_dir])
            if rc != 0:
                raise ToolMissing(f"board {self.board}: cannot create {remote_dir} ({output.strip()}); is its disk full?")
            try:
                for f in sorted(Path(bundle).glob(onnx_name + "*")):  # model.onnx and its .data
                    shell.put(f, f"{remote_dir}/{f.name}")
                rc, output = shell.run(self.argv(command), cwd=remote_dir)
                if rc != 0:
                    raise failure(output, rc, command.soc)
                _, listing = shell.run(["ls", "-1", remote_dir])  # model.om, or model_linux_aarch64.om
                name = produced_om(listing.split())
                if name is None:
                    raise failure(output + f"\n(ATC exited 0 but wrote no model*.om in {remote_dir})", 0, command.soc)
                om = Path(workdir) / "model.om"
                shell.get(f"{remote_dir}/{name}", om)
                rc, output = shell.run(["python3", "-c", FACTS_SOURCE])
                self.cann = cann_from_facts(output) if rc == 0 else None
                return om
            finally:
                shell.run(["rm", "-rf", remote_dir])


@dataclass
class RemoteBoardShell:
    """BoardShell over deploy.remote.Remote (which sources the board's CANN environment)."""

    remote: object  # deploy.remote.Remote

    def run(self, argv: list[str], cwd: str | None = None) -> tuple[int, str]:
        r = self.remote.run(argv, cwd=cwd)
        return r.exited, r.stdout + r.stderr

    def put(self, local: Path, remote: str) -> None:
        self.remote.put(local, remote)

    def get(self, remote: str, local: Path) -> None:
        self.remote.get(remote, local)

    def scratch(self) -> str:
        # Under the install path, not /tmp: /tmp is often RAM on these boards, and ATC needs the RAM.
        return self.remote.path(f"atc-{uuid.uuid4().hex[:8]}")


def board_runner(name: str | None, soc: str) -> BoardRunner:
    """A BoardRunner for an inventory board over deploy.remote; checks the board's soc."""
    if not name:
        raise InputError("--runner board needs --board NAME (a board of inventory.yml)")
    try:
        from deploy import remote
        from deploy.errors import DeployError, InventoryError
        from deploy.inventory import load_inventory, select
    except ImportError as e:
        raise ToolMissing(f"the board runner needs the deploy extras ({e.name} missing): pip install -e '.[deploy]'") from None
    try:
        (board,) = select(load_inventory(), name)
    except InventoryError as e:
        raise InputError(str(e)) from None
    if board.soc and board.soc != soc:
        raise InputError(
            f"board {name} is {board.soc} ({board_model(board.soc)}) in the inventory but --soc is {soc} "
            f"({board_model(soc)}); an .om for one does not load on the other ({soc_hint()})"
        )

    @contextlib.contextmanager
    def open_shell():
        try:
            with remote.connect(board) as r:
                yield RemoteBoardShell(r)
        except DeployError as e:
            raise ToolMissing(f"board {name}: {e}") from None

    return BoardRunner(open_shell=open_shell, board=name)

"""The Ascend compile step: check ops, run ATC (local, Docker or board), put model.om in the bundle.

The bundle changes only after ATC succeeded: model.om is staged under a temporary name, then
it and the manifest (graph.om, files with sha256) are renamed into place back to back.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Protocol

import onnx

from board.manifest import BundleError, FileEntry, Manifest, load_manifest, sha256_file, write_manifest
from host.atc import BOARD_BY_SOC, DEFAULT_PRECISION, AtcCommand, derive_atc_command, resolve_soc, soc_hint
from host.errors import BuildError, InputError
from host.opcheck import OpReport, check_model

OM_NAME = "model.om"
DEFAULT_IMAGE = "edge-llm/cann:8.0.0-310b"
PLUGIN_MARKER = b"MatMulInteger"  # the plugin's OriginOpType strings are literals in its .so
# ATC on an 8-16 GB board runs out of memory compiling kernels in parallel; one core, one
# compiler process is slower but finishes (CANN's documented knobs for this).
BOARD_ATC_ENV = {"MAX_COMPILE_CORE_NUMBER": "1", "TE_PARALLEL_COMPILER": "1"}
RUNNERS = ("auto", "local", "docker", "board")


class ToolMissing(InputError):
    """The tool a runner needs (atc, Docker daemon, image, plugin, board) is not available."""


class CompileError(BuildError):
    """ATC ran and failed; the message carries the likely cause and the tail of its output."""


@dataclass(frozen=True)
class CompileConfig:
    bundle: Path
    soc: str
    runner: str = "auto"
    precision_mode: str = DEFAULT_PRECISION
    image: str = DEFAULT_IMAGE
    board: str | None = None


# --- plugin and failure diagnosis ----------------------------------------------------------
def plugin_dirs(env: dict) -> list[Path]:
    """Where ATC looks for custom framework plugins: ASCEND_CUSTOM_OPP_PATH, then opp vendors."""
    dirs = [Path(p) for p in env.get("ASCEND_CUSTOM_OPP_PATH", "").split(":") if p]
    if env.get("ASCEND_OPP_PATH"):
        dirs += sorted(p for p in (Path(env["ASCEND_OPP_PATH"]) / "vendors").glob("*") if p.is_dir())
    return dirs


def find_plugin(env: dict) -> Path | None:
    """The installed ONNX parser plugin that registers MatMulInteger, or None."""
    for d in plugin_dirs(env):
        for lib in sorted((d / "framework" / "onnx").glob("*.so")):
            if PLUGIN_MARKER in lib.read_bytes():
                return lib
    return None


def plugin_missing_message(env: dict) -> str:
    looked = [str(d / "framework/onnx") for d in plugin_dirs(env)] or ["(ASCEND_CUSTOM_OPP_PATH and ASCEND_OPP_PATH unset)"]
    return (
        "the graph uses MatMulInteger but no ATC plugin registering it is installed (ATC would fail with "
        f"E19010 'No parser is registered for op MatMulInteger'); looked in {', '.join(looked)}; build and "
        "install it with docker/plugin/build.sh, or use --runner docker (the CANN image has it)"
    )


def explain_failure(output: str, returncode: int, soc: str) -> str:
    """One line naming the likely cause of an ATC failure and what to do."""
    board = BOARD_BY_SOC.get(soc, "unknown")
    if "E19010" in output or "No parser is registered" in output:
        return "ATC has no parser for an op (E19010): install docker/plugin (see docker/plugin/build.sh) where ATC looks"
    if returncode in (-9, 137) or "Killed" in output or "out of memory" in output.lower():
        return (f"ATC was killed, most likely out of memory: set {' '.join(f'{k}={v}' for k, v in BOARD_ATC_ENV.items())} "
                "(the board runner does), add swap, or compile with --runner docker on a workstation")
    if "soc_version" in output or "E10001" in output:
        return f"ATC rejected an option, often --soc_version: {soc} is for {board} boards ({soc_hint()})"
    return f"ATC failed (exit {returncode}) compiling for {soc} ({board} board)"


def _failure(output: str, returncode: int, soc: str) -> CompileError:
    tail = "\n".join(output.strip().splitlines()[-20:])
    return CompileError(f"{explain_failure(output, returncode, soc)}\natc output (last lines):\n{tail}")


# --- runners -----------------------------------------------------------------------------
class Runner(Protocol):
    name: str

    def paths(self, bundle: Path, onnx_name: str, workdir: Path) -> tuple[str, str]:
        """(--model, --output) as ATC will see them."""

    def run(self, command: AtcCommand, bundle: Path, workdir: Path) -> Path:
        """Run ATC; return the local path of the produced .om."""


@dataclass
class LocalRunner:
    """`atc` from PATH, in this process's environment (CANN's set_env.sh already sourced)."""

    atc: str
    env: dict
    name: str = "local"

    @classmethod
    def find(cls, env: dict | None = None) -> "LocalRunner":
        env = dict(os.environ if env is None else env)
        atc = shutil.which("atc", path=env.get("PATH"))
        if atc is None:
            raise ToolMissing(
                "atc is not on PATH: install the CANN toolkit and `source /usr/local/Ascend/ascend-toolkit/set_env.sh`, "
                "or use --runner docker (image built by `make docker-build`) or --runner board --board NAME"
            )
        return cls(atc=atc, env=env)

    def check_plugin(self) -> Path:
        lib = find_plugin(self.env)
        if lib is None:
            raise ToolMissing(plugin_missing_message(self.env))
        return lib

    def paths(self, bundle: Path, onnx_name: str, workdir: Path) -> tuple[str, str]:
        return str(Path(bundle).resolve() / onnx_name), str(Path(workdir).resolve() / "model")

    def run(self, command: AtcCommand, bundle: Path, workdir: Path) -> Path:
        argv = [self.atc] + command.argv[1:]
        proc = subprocess.run(argv, cwd=workdir, env=self.env, capture_output=True, text=True)
        output = proc.stdout + proc.stderr
        om = Path(workdir) / "model.om"
        if proc.returncode != 0 or not om.is_file():
            raise _failure(output, proc.returncode, command.soc)
        return om


@dataclass
class DockerRunner:
    """ATC inside the CANN image (docker/cann.Dockerfile), bundle mounted read-only at /bundle."""

    client: object  # docker.DockerClient
    image: str
    name: str = "docker"

    @classmethod
    def connect(cls, image: str, client_factory=None) -> "DockerRunner":
        if client_factory is None:
            try:
                import docker
            except ImportError:
                raise ToolMissing("the Docker SDK is not installed: `pip install docker==7.1.0` (or `make setup`)") from None
            client_factory = docker.from_env
        try:
            client = client_factory()
            client.ping()
        except Exception as e:  # DockerException and socket errors: the daemon is not reachable
            raise ToolMissing(
                f"no Docker daemon reachable ({type(e).__name__}): start Docker or set DOCKER_HOST, "
                "or use --runner local (CANN toolkit) or --runner board --board NAME"
            ) from None
        try:
            client.images.get(image)
        except Exception:
            raise ToolMissing(
                f"Docker image {image} is not present: build it with `make docker-build` "
                f"(docker build -f docker/cann.Dockerfile -t {image} docker/), or pass --image TAG"
            ) from None
        return cls(client=client, image=image)

    def paths(self, bundle: Path, onnx_name: str, workdir: Path) -> tuple[str, str]:
        return f"/bundle/{onnx_name}", "/out/model"

    def run(self, command: AtcCommand, bundle: Path, workdir: Path) -> Path:
        container = self.client.containers.run(
            self.image,
            command=command.argv,
            volumes={
                str(Path(bundle).resolve()): {"bind": "/bundle", "mode": "ro"},
                str(Path(workdir).resolve()): {"bind": "/out", "mode": "rw"},
            },
            working_dir="/out",
            user=f"{os.getuid()}:{os.getgid()}",
            detach=True,
        )
        try:
            status = container.wait().get("StatusCode", 1)
            output = container.logs().decode(errors="replace")
        finally:
            container.remove(force=True)
        om = Path(workdir) / "model.om"
        if status != 0 or not om.is_file():
            raise _failure(output, status, command.soc)
        return om


class BoardShell(Protocol):
    """What the board runner needs from a connection (RemoteBoardShell adapts deploy.remote)."""

    def run(self, argv: list[str], cwd: str | None = None) -> tuple[int, str]: ...
    def put(self, local: Path, remote: str) -> None: ...
    def get(self, remote: str, local: Path) -> None: ...
    def scratch(self) -> str: ...


@dataclass
class BoardRunner:
    """ATC on the board itself over SSH: upload the ONNX, compile with one core, fetch the .om.

    `open_shell()` is a context manager yielding a BoardShell; paths are relative to a
    scratch directory on the board, so the command is known before connecting.
    """

    open_shell: Callable[[], ContextManager[BoardShell]]
    board: str
    name: str = "board"

    def paths(self, bundle: Path, onnx_name: str, workdir: Path) -> tuple[str, str]:
        return onnx_name, "model"

    def argv(self, command: AtcCommand) -> list[str]:
        return ["env", *(f"{k}={v}" for k, v in BOARD_ATC_ENV.items()), *command.argv]

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
                    raise _failure(output, rc, command.soc)
                om = Path(workdir) / "model.om"
                shell.get(f"{remote_dir}/model.om", om)
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
        self.remote.sftp.get(remote, str(local))

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
            f"board {name} is {board.soc} ({BOARD_BY_SOC.get(board.soc, '?')}) in the inventory but --soc is {soc} "
            f"({BOARD_BY_SOC.get(soc, '?')}); an .om for one does not load on the other ({soc_hint()})"
        )

    @contextlib.contextmanager
    def open_shell():
        try:
            with remote.connect(board) as r:
                yield RemoteBoardShell(r)
        except DeployError as e:
            raise ToolMissing(f"board {name}: {e}") from None

    return BoardRunner(open_shell=open_shell, board=name)


def select_runner(config: CompileConfig, env: dict | None = None, docker_factory=None) -> Runner:
    """The runner asked for, or with `auto` the first available: local atc, Docker, board."""
    if config.runner == "local":
        return LocalRunner.find(env)
    if config.runner == "docker":
        return DockerRunner.connect(config.image, docker_factory)
    if config.runner == "board":
        return board_runner(config.board, resolve_soc(config.soc))
    if config.runner != "auto":
        raise InputError(f"unknown --runner {config.runner!r}: use one of {', '.join(RUNNERS)}")
    reasons = []
    for attempt in (lambda: LocalRunner.find(env), lambda: DockerRunner.connect(config.image, docker_factory)):
        try:
            return attempt()
        except ToolMissing as e:
            reasons.append(str(e).split(":")[0])
    if config.board:
        return board_runner(config.board, resolve_soc(config.soc))
    raise ToolMissing(
        f"no way to run ATC here ({'; '.join(reasons)}): install the CANN toolkit (atc on PATH), or start Docker "
        f"and `make docker-build` (image {config.image}), or compile on the board with --runner board --board NAME"
    )


# --- bundle update -----------------------------------------------------------------------
def install_om(bundle: Path, manifest: Manifest, om: Path, soc: str) -> Manifest:
    """Put `om` into the bundle as model.om and record it (graph.om, om_soc, size, sha256) in the manifest.

    On any failure the previous model.om (if any) and manifest are put back, so the bundle
    stays as it was; readers may see a missing model.om only for the instant of the swap.
    """
    bundle = Path(bundle)
    target, tag = bundle / OM_NAME, uuid.uuid4().hex[:8]
    staged, backup = bundle / f".{OM_NAME}.{tag}.new", bundle / f".{OM_NAME}.{tag}.old"
    try:
        shutil.copyfile(om, staged)
        entry = FileEntry(size=staged.stat().st_size, sha256=sha256_file(staged))
        files = {k: v for k, v in manifest.files.items() if k != OM_NAME}
        files[OM_NAME] = entry
        updated = dataclasses.replace(manifest, graph=dataclasses.replace(manifest.graph, om=OM_NAME, om_soc=soc), files=files)
        had_old = target.exists()
        if had_old:
            os.replace(target, backup)
        try:
            os.replace(staged, target)
            write_manifest(bundle, updated)
        except BaseException:
            if had_old:
                os.replace(backup, target)
            else:
                target.unlink(missing_ok=True)
            raise
    finally:
        staged.unlink(missing_ok=True)
        backup.unlink(missing_ok=True)
    return updated


# --- the step ----------------------------------------------------------------------------
def prepare(config: CompileConfig) -> tuple[Manifest, OpReport]:
    """Read and verify the bundle and check its graph's ops (no tool needed)."""
    bundle = Path(config.bundle)
    try:
        manifest = load_manifest(bundle)
    except BundleError as e:
        raise InputError(str(e)) from None
    resolve_soc(config.soc)  # a bad --soc fails before the (slower) op check
    report = check_model(bundle / manifest.graph.onnx)
    check_graph_inputs(bundle / manifest.graph.onnx, manifest)
    return manifest, report


def command_for(config: CompileConfig, manifest: Manifest, runner: Runner | None, workdir: Path) -> AtcCommand:
    """The ATC command with paths as `runner` sees them (host paths when runner is None)."""
    bundle = Path(config.bundle)
    if runner is None:
        model, output = str(bundle.resolve() / manifest.graph.onnx), str(Path(workdir) / "model")
    else:
        model, output = runner.paths(bundle, manifest.graph.onnx, workdir)
    return derive_atc_command(manifest, config.soc, model, output, config.precision_mode)


def check_graph_inputs(onnx_path: Path, manifest: Manifest) -> None:
    """The manifest's input names and ranks must be the ONNX graph's, or ATC rejects the shapes."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    actual = {i.name: len(i.type.tensor_type.shape.dim) for i in graph.input if i.name not in initializers}
    expected = {t.name: len(t.shape) for t in manifest.graph.inputs}
    if actual != expected:
        raise InputError(
            f"{onnx_path}: graph inputs {actual} do not match the manifest's {expected}; rebuild the bundle"
        )


def compile_bundle(config: CompileConfig, runner: Runner | None = None, log=sys.stderr) -> dict:
    """Check, compile and install model.om; returns what was done, for JSON output."""
    bundle = Path(config.bundle)
    manifest, report = prepare(config)  # bad bundles and ops fail before any tool is touched
    if not report.ok:
        raise CompileError(f"ATC would reject this graph:\n{report.summary()}")
    runner = runner or select_runner(config)
    if report.needs_plugin and isinstance(runner, LocalRunner):
        runner.check_plugin()
    with tempfile.TemporaryDirectory(prefix="edge-llm-atc-") as tmp:
        command = command_for(config, manifest, runner, Path(tmp))
        print(f"compile: {runner.name}: {command.shell()}", file=log)
        om = runner.run(command, bundle, Path(tmp))
        try:
            updated = install_om(bundle, manifest, om, command.soc)
        except OSError as e:
            raise CompileError(f"cannot write {OM_NAME} into {bundle} ({e.strerror or e}); the bundle is as it was") from None
    entry = updated.files[OM_NAME]
    return {"bundle": str(bundle), "om": OM_NAME, "size": entry.size, "sha256": entry.sha256,
            "runner": runner.name, **command.to_dict(), "opcheck": report.to_dict()}

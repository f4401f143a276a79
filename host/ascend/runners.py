"""Where ATC runs: `atc` on this machine, inside the CANN Docker image, or on the board over SSH.

Each runner maps the bundle's paths to what ATC sees, runs the command, returns the produced
.om, and reports the CANN version its ATC belongs to (recorded as graph.om_cann).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from board import ascend
from host.ascend.atc import AtcCommand, ToolMissing, failure, normalize_cpu, produced_om
from host.errors import InputError

DEFAULT_IMAGE = "edge-llm/cann:8.0.0-310b"
RUNNERS = ("auto", "local", "docker", "board")
# board/ascend.py run as a script prints the machine's Ascend facts as JSON (stdlib only)
FACTS_SOURCE = Path(ascend.__file__).read_text()


def cann_from_facts(output: str) -> str | None:
    """The CANN version in the JSON line `python3 -c FACTS_SOURCE` printed, or None."""
    for line in reversed(output.strip().splitlines()):
        try:
            return json.loads(line)["cann"]["version"]
        except (ValueError, KeyError, TypeError):
            continue
    return None


def find_om(workdir: Path, command: AtcCommand, output: str) -> Path:
    """The .om ATC wrote into `workdir` (model.om or model_linux_aarch64.om); a CompileError naming ATC's
    output when there is none."""
    name = produced_om(p.name for p in Path(workdir).iterdir())
    if name is None:
        raise failure(output + "\n(ATC exited 0 but wrote no model*.om)", 0, command.soc)
    return Path(workdir) / name


def plugin_missing_message(search: ascend.PluginSearch) -> str:
    if search.problem:
        return f"the graph uses MatMulInteger but {search.problem}"
    looked = search.looked or ["(ASCEND_CUSTOM_OPP_PATH and ASCEND_OPP_PATH unset)"]
    return (
        "the graph uses MatMulInteger but no ATC plugin registering it is installed (ATC would fail with "
        f"E19010 'No parser is registered for op MatMulInteger'); looked in {', '.join(looked)}; build and "
        "install it with docker/plugin/build.sh, or use --runner docker (the CANN image has it)"
    )


class Runner(Protocol):
    name: str
    machine: str  # the CPU ATC runs on (platform.machine() spelling): not aarch64 -> --host_env_* for the board

    def paths(self, bundle: Path, onnx_name: str, workdir: Path) -> tuple[str, str]:
        """(--model, --output) as ATC will see them."""

    def run(self, command: AtcCommand, bundle: Path, workdir: Path) -> Path:
        """Run ATC; return the local path of the produced .om."""

    def cann_version(self) -> str | None:
        """The CANN version of the toolkit ATC runs from, None when it cannot be read."""


@dataclass
class LocalRunner:
    """`atc` from PATH, in this process's environment (CANN's set_env.sh already sourced)."""

    atc: str
    env: dict
    name: str = "local"
    machine: str = field(default_factory=platform.machine)

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
        search = ascend.find_plugin(self.env)
        if search.lib is None:
            raise ToolMissing(plugin_missing_message(search))
        return Path(search.lib)

    def cann_version(self) -> str | None:
        return ascend.toolkit_version(self.env)["version"]

    def paths(self, bundle: Path, onnx_name: str, workdir: Path) -> tuple[str, str]:
        return str(Path(bundle).resolve() / onnx_name), str(Path(workdir).resolve() / "model")

    def run(self, command: AtcCommand, bundle: Path, workdir: Path) -> Path:
        argv = [self.atc] + command.argv[1:]
        proc = subprocess.run(argv, cwd=workdir, env=self.env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise failure(proc.stdout + proc.stderr, proc.returncode, command.soc)
        return find_om(workdir, command, proc.stdout + proc.stderr)


@dataclass
class DockerRunner:
    """ATC inside the CANN image (docker/cann.Dockerfile), bundle mounted read-only at /bundle."""

    client: object  # docker.DockerClient
    image: str
    name: str = "docker"
    machine: str = field(default_factory=platform.machine)  # the image's architecture when Docker names it

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
            found = client.images.get(image)
        except Exception:
            raise ToolMissing(
                f"Docker image {image} is not present: build it with `make docker-build` "
                f"(docker build -f docker/cann.Dockerfile -t {image} docker/), or pass --image TAG"
            ) from None
        arch = (getattr(found, "attrs", None) or {}).get("Architecture")  # "amd64", "arm64"
        return cls(client=client, image=image, machine=normalize_cpu(arch) if arch else platform.machine())

    def paths(self, bundle: Path, onnx_name: str, workdir: Path) -> tuple[str, str]:
        return f"/bundle/{onnx_name}", "/out/model"

    def _container(self, command: list, volumes: dict) -> tuple[int, str]:
        container = self.client.containers.run(self.image, command=command, volumes=volumes, working_dir="/out",
                                               user=f"{os.getuid()}:{os.getgid()}", detach=True)
        try:
            return container.wait().get("StatusCode", 1), container.logs().decode(errors="replace")
        finally:
            container.remove(force=True)

    def cann_version(self) -> str | None:
        status, output = self._container(["python3", "-c", FACTS_SOURCE], {})
        return cann_from_facts(output) if status == 0 else None

    def run(self, command: AtcCommand, bundle: Path, workdir: Path) -> Path:
        status, output = self._container(command.argv, {
            str(Path(bundle).resolve()): {"bind": "/bundle", "mode": "ro"},
            str(Path(workdir).resolve()): {"bind": "/out", "mode": "rw"},
        })
        if status != 0:
            raise failure(output, status, command.soc)
        return find_om(workdir, command, output)


def select_runner(config, env: dict | None = None, docker_factory=None) -> Runner:
    """The runner `config.runner` asks for, or with `auto` the first available: local atc, Docker, board."""
    from host.ascend.board_runner import board_runner
    from host.ascend.atc import resolve_soc

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

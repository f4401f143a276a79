"""The Ascend compile step: check the graph, run ATC (local, Docker or board), put model.om in the bundle.

The bundle changes only after ATC succeeded (host/ascend/install.py).
"""
from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from board.manifest import BundleError, Manifest, load_manifest
from host.ascend.atc import DEFAULT_PRECISION, AtcCommand, CompileError, derive_atc_command, resolve_soc
from host.ascend.install import OM_NAME, install_om
from host.ascend.opcheck import OpReport, check_graph_inputs, check_model
from host.ascend.runners import DEFAULT_IMAGE, LocalRunner, Runner, select_runner
from host.errors import InputError


@dataclass(frozen=True)
class CompileConfig:
    bundle: Path
    soc: str
    runner: str = "auto"
    precision_mode: str = DEFAULT_PRECISION
    image: str = DEFAULT_IMAGE
    board: str | None = None


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
        cann = runner.cann_version()
        try:
            updated = install_om(bundle, manifest, om, command.soc, cann)
        except OSError as e:
            raise CompileError(f"cannot write {OM_NAME} into {bundle} ({e.strerror or e}); the bundle is as it was") from None
    entry = updated.files[OM_NAME]
    return {"bundle": str(bundle), "om": OM_NAME, "size": entry.size, "sha256": entry.sha256, "cann": cann,
            "runner": runner.name, **command.to_dict(), "opcheck": report.to_dict()}

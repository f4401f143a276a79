"""The Ascend compile step: check the graph, run ATC (local, Docker or board), put model.om in the bundle.

The bundle changes only after ATC succeeded (host/ascend/install.py). ATC reads a scratch copy of the graph
in which AscendQuant converts activations to int8 (host/ascend/quantop.py); the bundle's model.onnx stays the
graph onnxruntime verified and runs.

Cross-compiling: ATC builds for the OS/CPU it runs on unless --host_env_os/--host_env_cpu name those of
the machine the .om will run on, when they differ from the compile machine's (CANN 8.0 ATC reference,
https://www.hiascend.com/document/detail/en/canncommercial/800/devaids/atc/atlasatcparam_16_0034.html;
values aarch64/x86_64: https://hiascend.com/document/detail/zh/canncommercial/63RC2/inferapplicationdev/atctool/atctool_000064.html).
So a runner whose machine is not aarch64 (an x86_64 workstation, its Docker image) passes
--host_env_os=linux --host_env_cpu=aarch64. The docs' example name xxx_linux_x86_64.om means the .om is
tied to that OS/CPU; GE's source shows when: an .om that packs op .so files (a graph ATC compiles as
dynamic shape) gets "_<os>_<cpu>" inserted before ".om" (ModelHelper::SaveSpaceRegistrySoBin,
https://github.com/hicann/ge/blob/master/base/common/helper/model_helper.cc) and ACL refuses it on
another OS/CPU at load time; any other .om keeps the plain name and ATC ignores the two options. The
runners therefore accept model.om or model_linux_aarch64.om (host.ascend.atc.produced_om), refuse an .om
tagged for another CPU, and the bundle always gets it as model.om.
"""
from __future__ import annotations

import json
import platform
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from board.manifest import BundleError, Manifest, load_manifest
from host.ascend.atc import DEFAULT_IMPL_MODE, DEFAULT_PRECISION, AtcCommand, CompileError, derive_atc_command, resolve_soc
from host.ascend.install import OM_NAME, install_om
from host.ascend.opcheck import OpReport, check_graph_inputs, check_model
from host.ascend.quantop import DEFAULT_INT8_OP, QuantOpResult, write_for_atc
from host.ascend.runners import DEFAULT_IMAGE, LocalRunner, Runner, select_runner
from host.bundle import REPORT_NAME
from host.buildconfig import TARGET_DIALECTS
from host.errors import InputError


@dataclass(frozen=True)
class CompileConfig:
    bundle: Path
    soc: str
    runner: str = "auto"
    precision_mode: str = DEFAULT_PRECISION
    image: str = DEFAULT_IMAGE
    board: str | None = None
    int8_op: str = DEFAULT_INT8_OP  # what converts activations to int8 in the graph ATC gets (host/ascend/quantop.py)
    impl_mode: str = DEFAULT_IMPL_MODE  # ATC --op_select_implmode (host/ascend/atc.py)


@dataclass(frozen=True)
class Prepared:
    """A checked bundle and the graph ATC is to read: `graph_dir` holds it under the bundle's onnx name."""

    manifest: Manifest
    report: OpReport
    graph_dir: Path
    int8: QuantOpResult


def prepare(config: CompileConfig, scratch: Path) -> Prepared:
    """Read and verify the bundle, write the graph for ATC (the bundle's own, or its AscendQuant copy under
    `scratch`) and check that graph's ops (no tool needed)."""
    bundle = Path(config.bundle)
    try:
        manifest = load_manifest(bundle)
    except BundleError as e:
        raise InputError(str(e)) from None
    resolve_soc(config.soc)  # a bad --soc fails before the (slower) op check
    check_graph_inputs(bundle / manifest.graph.onnx, manifest)
    graph_dir, int8 = write_for_atc(bundle / manifest.graph.onnx, Path(scratch) / "graph", config.int8_op)
    report = check_model(graph_dir / manifest.graph.onnx)
    if graph_dir != bundle:  # name what the user has, not the scratch copy (gone after the compile)
        report.model = f"{bundle / manifest.graph.onnx} (ATC's copy, with AscendQuant)"
    return Prepared(manifest, report, graph_dir, int8)


def rebuild_for_ascend(config: CompileConfig, manifest: Manifest, report: OpReport) -> str | None:
    """The build command that makes this bundle for the NPU, when it was built for onnxruntime; else None.

    Its options come from the bundle's report.json (the build's own record) where it has one."""
    ort = manifest.quantization.dialect in TARGET_DIALECTS["ort"] or any(u.domain == "com.microsoft" for u in report.ops)
    if not ort:
        return None
    try:
        built = json.loads((Path(config.bundle) / REPORT_NAME).read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        built = {"model": "MODEL"}
    options = [("--model", built.get("model")), ("--tokenizer", built.get("tokenizer")), ("--calib", built.get("calib")),
               ("--quant", built.get("quant")), ("--kv-len", built.get("kv_len"))]
    words = [w for name, value in options if value is not None for w in (name, str(value))]
    return shlex.join(["python", "-m", "host", "build", *words, "--target", "ascend", "--out", str(config.bundle)])


def ort_hint(command: str) -> str:
    return f"this bundle is built for onnxruntime (--target ort); rebuild it for the NPU: {command}"


def command_for(config: CompileConfig, prepared: Prepared, runner: Runner | None, workdir: Path) -> AtcCommand:
    """The ATC command with paths as `runner` sees them (host paths, and this machine's CPU, when runner is None)."""
    manifest = prepared.manifest
    if runner is None:
        model, output = str(prepared.graph_dir.resolve() / manifest.graph.onnx), str(Path(workdir) / "model")
    else:
        model, output = runner.paths(prepared.graph_dir, manifest.graph.onnx, workdir)
    machine = getattr(runner, "machine", None) or platform.machine()  # where ATC runs decides --host_env_*
    return derive_atc_command(manifest, config.soc, model, output, config.precision_mode, compile_machine=machine,
                              impl_mode=config.impl_mode)


def compile_bundle(config: CompileConfig, runner: Runner | None = None, log=None) -> dict:
    """Check, compile and install model.om; returns what was done, for JSON output (log: default stderr)."""
    log = log or sys.stderr  # looked up per call: a default bound at import outlives a replaced stderr
    bundle = Path(config.bundle)
    with tempfile.TemporaryDirectory(prefix="edge-llm-atc-") as tmp:
        prepared = prepare(config, Path(tmp))  # bad bundles and ops fail before any tool is touched
        manifest, report = prepared.manifest, prepared.report
        if not report.ok:
            rebuild = rebuild_for_ascend(config, manifest, report)
            raise CompileError(f"ATC would reject this graph:\n{report.summary()}" + (f"\n{ort_hint(rebuild)}" if rebuild else ""))
        runner = runner or select_runner(config)
        if report.needs_plugin and isinstance(runner, LocalRunner):
            runner.check_plugin()
        workdir = Path(tmp) / "out"
        workdir.mkdir()
        command = command_for(config, prepared, runner, workdir)
        print(f"compile: {int8_line(prepared.int8)}", file=log)
        print(f"compile: {runner.name}: {command.shell()}", file=log)
        om = runner.run(command, prepared.graph_dir, workdir)
        cann = runner.cann_version()
        try:
            updated = install_om(bundle, manifest, om, command.soc, cann)
        except OSError as e:
            raise CompileError(f"cannot write {OM_NAME} into {bundle} ({e.strerror or e}); the bundle is as it was") from None
    entry = updated.files[OM_NAME]
    return {"bundle": str(bundle), "om": OM_NAME, "size": entry.size, "sha256": entry.sha256, "cann": cann,
            "runner": runner.name, **command.to_dict(), "opcheck": report.to_dict(), "int8": prepared.int8.to_dict()}


def int8_line(result: QuantOpResult) -> str:
    """One line on what converts activations to int8 in the graph ATC reads."""
    if result.op == "AscendQuant":
        return f"{result.replaced} Cast(to int8) after Round+Clip -> AscendQuant(scale=1, offset=0) in ATC's copy of the graph"
    return f"{result.kept} Cast(to int8) kept" + (f" ({result.note})" if result.note else "")

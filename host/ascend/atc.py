"""ATC command derivation: from a bundle manifest to the exact `atc` argument list, and what
an ATC failure most likely means.

Pure functions only; running the command lives in host/ascend/runners.py. Syntax follows the CANN
8.x ATC reference (--input_shape with -1 for dynamic dims, --dynamic_dims "a,b;c,d" gears,
--precision_mode_v2, --soc_version) for the Atlas 200I/500 A2 (Ascend 310B) boards.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from board import ascend
from board.ascend import BOARD_BY_SOC, SOCS, soc_hint
from board.manifest import BundleError, Manifest, TensorSpec, dim_symbols
from board.manifest import eval_dim as manifest_dim
from host.errors import BuildError, InputError

# --precision_mode_v2 values documented for the Atlas 200I/500 A2 (CANN 8.x). ATC's own
# default is fp16, which forces fp32 ops to fp16 (the ONNX-vs-OM drift users report).
# `origin` keeps the graph's dtypes (documented ranking: origin > mixed_float16 > fp16), so the
# graph decides: an fp16-compute bundle (the --target ascend default) runs its activations,
# norms and attention in fp16 and keeps only the integer matmul's int32 rescale in fp32 (an
# int32 sum overflows fp16); an fp32 bundle runs fp32, where ops without an fp32 AI Core
# kernel fall back to the (slow) AI CPU.
PRECISION_MODES = ("origin", "cube_fp16in_fp32out", "mixed_float16", "fp16")
DEFAULT_PRECISION = "origin"
# --op_select_implmode: ops that have two fp16 kernels use the high-precision one (Taylor expansion / Newton
# iterations, per the ATC reference) instead of ATC's default high_performance. The graph computes in fp16
# (softmax over up to KV+S scores, rsqrt, exp, SiLU) and a decode step is bound by reading int8 weights, not
# by these element-wise kernels, so precision is the better side of the trade. CANN 8.0.RC2's ATC accepts
# high_performance, high_performance_for_all, high_precision, high_precision_for_all (its E10001 lists them);
# releases from 8.3 mark the option as no longer developed: "none" passes no flag, for one that drops it.
# --optypelist_for_implmode (per-op-type choice) is not used: the same releases say "do not use" it.
IMPL_MODES = ("high_precision", "high_performance", "none")
DEFAULT_IMPL_MODE = "high_precision"
# ATC on an 8-16 GB board runs out of memory compiling kernels in parallel; one core, one
# compiler process is slower but finishes (CANN's documented knobs for this).
BOARD_ATC_ENV = {"MAX_COMPILE_CORE_NUMBER": "1", "TE_PARALLEL_COMPILER": "1"}

FRAMEWORK_ONNX = 5
MAX_GEARS = 100  # ATC accepts 2..100 dynamic_dims profiles

# The OS and CPU the .om runs on: the Orange Pi AI Pro's Control CPU (aarch64 Linux). ATC takes its own
# machine's unless told otherwise (--host_env_os/--host_env_cpu); a graph that ATC compiles as dynamic
# shape carries the op .so files of that OS/CPU and ACL refuses it on another (see host/ascend/compile.py).
BOARD_OS, BOARD_CPU = "linux", "aarch64"
_CPU_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv8": "aarch64", "armv8l": "aarch64"}
# What ATC writes for --output=<dir>/model: model.om, or model_<os>_<cpu>.om when the .om is tied to one
# OS/CPU (e.g. model_linux_aarch64.om); GE's valid --host_env_os values are linux and minios.
_TAGGED_OM = re.compile(r"^(?P<stem>.+)_(?P<os>linux|minios)_(?P<cpu>[A-Za-z0-9_]+)\.om$")


@dataclass(frozen=True)
class AtcCommand:
    """The derived ATC invocation: argv plus what it was derived from, for display and tests."""

    argv: list  # ["atc", "--model=...", ...]
    input_shape: str
    dynamic_dims: str | None  # None when the graph has a single gear (static shapes)
    gears: list  # prefill chunk lengths S, in dynamic_dims order
    soc: str
    precision_mode: str
    opset: int | None = None  # the graph's ai.onnx opset (ATC takes it from the file)
    compute_dtype: str | None = None  # what the graph computes activations in
    host_env: str | None = None  # "linux/aarch64" when --host_env_os/--host_env_cpu are passed (cross-compile)
    impl_mode: str = DEFAULT_IMPL_MODE  # --op_select_implmode, or "none" when the flag is not passed

    def shell(self) -> str:
        """The command as one copy-pasteable shell line (semicolons quoted)."""
        return shlex.join(self.argv)

    def to_dict(self) -> dict:
        return {
            "argv": list(self.argv),
            "command": self.shell(),
            "input_shape": self.input_shape,
            "dynamic_dims": self.dynamic_dims,
            "gears": list(self.gears),
            "soc": self.soc,
            "board_model": BOARD_BY_SOC.get(self.soc),
            "precision_mode": self.precision_mode,
            "opset": self.opset,
            "compute_dtype": self.compute_dtype,
            "host_env": self.host_env,
            "impl_mode": self.impl_mode,
        }

    def summary(self) -> str:
        """One line naming what the command was chosen for."""
        return (f"# {self.soc} ({BOARD_BY_SOC.get(self.soc, '?')} board), graph opset {self.opset}, compute "
                f"{self.compute_dtype}, --precision_mode_v2={self.precision_mode}, --op_select_implmode="
                f"{self.impl_mode}, gears {self.gears}"
                + (f", for {self.host_env} (cross-compiled)" if self.host_env else ""))


def normalize_cpu(machine: str) -> str:
    """platform.machine() / Docker architecture names -> ATC's --host_env_cpu spelling (x86_64, aarch64)."""
    return _CPU_ALIASES.get(machine.lower(), machine.lower())


def host_env_args(compile_machine: str | None) -> list[str]:
    """--host_env_os/--host_env_cpu for the board when ATC runs on another CPU (an x86_64 workstation or its
    Docker image); nothing when it runs on aarch64 (the board itself) or the machine is not known."""
    if not compile_machine or normalize_cpu(compile_machine) == BOARD_CPU:
        return []
    return [f"--host_env_os={BOARD_OS}", f"--host_env_cpu={BOARD_CPU}"]


def produced_om(names, stem: str = "model") -> str | None:
    """Which of `names` (a directory listing) is the .om ATC wrote for --output=<dir>/<stem>: <stem>.om, else
    <stem>_linux_aarch64.om (the name ATC gives an .om tied to the board's OS/CPU); None when neither is there.

    An .om tied to another OS/CPU (<stem>_linux_x86_64.om) would not load on the board: a CompileError."""
    names = set(names)
    if f"{stem}.om" in names:
        return f"{stem}.om"
    tagged = sorted(n for n in names if (m := _TAGGED_OM.match(n)) and m["stem"] == stem)
    for name in tagged:
        m = _TAGGED_OM.match(name)
        if m["os"] == BOARD_OS and normalize_cpu(m["cpu"]) == BOARD_CPU:
            return name
    if tagged:
        m = _TAGGED_OM.match(tagged[0])
        raise CompileError(
            f"ATC wrote {tagged[0]}, an .om for {m['os']}/{m['cpu']}: it will not load on the board "
            f"({BOARD_OS}/{BOARD_CPU}); compile with --host_env_os={BOARD_OS} --host_env_cpu={BOARD_CPU} "
            "(python -m host compile passes them when ATC runs on another CPU) or on the board (--runner board)"
        )
    return None


def resolve_soc(value: str) -> str:
    """A --soc value (SoC name or board model such as 20T/8T) -> ATC soc_version."""
    soc = ascend.resolve_soc(value)
    if soc is None:
        raise InputError(f"unknown --soc {value!r}: use one of {', '.join(SOCS)} or a board model ({soc_hint()})")
    return soc


def eval_dim(dim, symbols: dict[str, int], s: int) -> int:
    """board.manifest.eval_dim, its error an InputError (a compile's bad input)."""
    try:
        return manifest_dim(dim, symbols, s)
    except BundleError as e:
        raise InputError(str(e)) from None


def _shapes_per_gear(inputs: list[TensorSpec], symbols: dict, gears: list[int]) -> list[list[list[int]]]:
    return [[[eval_dim(d, symbols, s) for d in spec.shape] for spec in inputs] for s in gears]


def derive_input_shapes(manifest: Manifest) -> tuple[str, str | None, list[int]]:
    """(--input_shape, --dynamic_dims or None, gears) for the manifest's graph inputs.

    A dim that changes between gears becomes -1; each gear lists those dims' values in
    input order, which is how ATC pairs dynamic_dims entries with the -1 placeholders.
    """
    g = manifest.graph
    gears = sorted(set(int(s) for s in g.prefill_chunks) | {1})
    if len(gears) > MAX_GEARS:
        raise InputError(f"{len(gears)} prefill chunk sizes; ATC accepts at most {MAX_GEARS}: rebuild with fewer")
    if not g.inputs:
        raise InputError("manifest lists no graph inputs; rebuild the bundle")
    per_gear = _shapes_per_gear(g.inputs, dim_symbols(manifest), gears)
    first = per_gear[0]
    parts, dynamic = [], []
    for i, spec in enumerate(g.inputs):
        dims = []
        for j, value in enumerate(first[i]):
            varies = any(shape[i][j] != value for shape in per_gear)
            dims.append("-1" if varies else str(value))
            if varies:
                dynamic.append((i, j))
        parts.append(f"{spec.name}:{','.join(dims)}")
    input_shape = ";".join(parts)
    if not dynamic:
        return input_shape, None, gears[:1]
    profiles = [",".join(str(shape[i][j]) for i, j in dynamic) for shape in per_gear]
    return input_shape, ";".join(profiles), gears


def derive_atc_command(
    manifest: Manifest,
    soc: str,
    model: str,
    output: str,
    precision_mode: str = DEFAULT_PRECISION,
    atc: str = "atc",
    compile_machine: str | None = None,
    impl_mode: str = DEFAULT_IMPL_MODE,
) -> AtcCommand:
    """The full ATC argv for a bundle; `model`/`output` are paths as the runner sees them.

    ATC appends ".om" to `output` (or "_linux_aarch64.om", see `produced_om`). `compile_machine` is the
    CPU ATC runs on: when it is not aarch64 the board's OS/CPU are passed (`host_env_args`). --log=error
    keeps the board's small disk and our captured output free of info logs; errors still carry their E-codes.
    """
    soc = resolve_soc(soc)
    if precision_mode not in PRECISION_MODES:
        raise InputError(f"unknown --precision-mode {precision_mode!r}: use one of {', '.join(PRECISION_MODES)}")
    if impl_mode not in IMPL_MODES:
        raise InputError(f"unknown --impl-mode {impl_mode!r}: use one of {', '.join(IMPL_MODES)}")
    input_shape, dynamic_dims, gears = derive_input_shapes(manifest)
    argv = [
        atc,
        f"--model={model}",
        f"--framework={FRAMEWORK_ONNX}",
        f"--output={output}",
        "--input_format=ND",
        f"--input_shape={input_shape}",
    ]
    if dynamic_dims is not None:
        argv.append(f"--dynamic_dims={dynamic_dims}")
    host_env = host_env_args(compile_machine)
    argv += [f"--soc_version={soc}", f"--precision_mode_v2={precision_mode}"]
    argv += [f"--op_select_implmode={impl_mode}"] if impl_mode != "none" else []
    argv += [*host_env, "--log=error"]
    return AtcCommand(argv, input_shape, dynamic_dims, gears, soc, precision_mode, manifest.graph.opset,
                      manifest.graph.compute_dtype, f"{BOARD_OS}/{BOARD_CPU}" if host_env else None, impl_mode)


# --- failures --------------------------------------------------------------------------------
class ToolMissing(InputError):
    """The tool a runner needs (atc, Docker daemon, image, plugin, board) is not available."""


class CompileError(BuildError):
    """ATC ran and failed; the message carries the likely cause and the tail of its output."""


def explain_failure(output: str, returncode: int, soc: str) -> str:
    """One line naming the likely cause of an ATC failure and what to do."""
    board = BOARD_BY_SOC.get(soc, "unknown")
    if "E19010" in output or "No parser is registered" in output:
        return "ATC has no parser for an op (E19010): install docker/plugin (see docker/plugin/build.sh) where ATC looks"
    if "E16005" in output:
        return "ATC rejected the graph's opset imports (E16005): rebuild the bundle (one ai.onnx opset, --opset)"
    if returncode in (-9, 137) or "Killed" in output or "out of memory" in output.lower():
        return (f"ATC was killed, most likely out of memory: set {' '.join(f'{k}={v}' for k, v in BOARD_ATC_ENV.items())} "
                "(the board runner does), add swap, or compile with --runner docker on a workstation")
    if "host_env_cpu" in output or "host_env_os" in output:  # GE checks them against the toolkit's opp packages
        return (f"ATC cannot build for the board's {BOARD_OS}/{BOARD_CPU} here: this toolkit's opp has no op "
                "libraries for it (a graph ATC compiles as dynamic shape needs them); compile on the board "
                "(--runner board) or with a toolkit that has the aarch64 opp")
    if "soc_version" in output or "E10001" in output:
        return f"ATC rejected an option, often --soc_version: {soc} is for {board} boards ({soc_hint()})"
    return f"ATC failed (exit {returncode}) compiling for {soc} ({board} board)"


def failure(output: str, returncode: int, soc: str) -> CompileError:
    tail = "\n".join(output.strip().splitlines()[-20:])
    return CompileError(f"{explain_failure(output, returncode, soc)}\natc output (last lines):\n{tail}")

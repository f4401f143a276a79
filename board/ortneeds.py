"""What a graph needs from onnxruntime: the measured table, and the check made before a graph is loaded.

The host records at build time, from the written ONNX, the lowest onnxruntime release that runs each
operator form in it (manifest `graph.onnxruntime_ops`) and their maximum (`graph.min_onnxruntime`;
host/ortneeds.py). `onnxruntime_shortfall` compares a board's onnxruntime with that and says what to
do; the board calls it before it creates an InferenceSession (board/backends/ort.py) and in `python -m
board verify`, the deployer before it uploads (deploy/release.py) and in `fab doctor` (deploy/doctor.py).
Standard library only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

FLOOR = "1.15.1"  # the oldest release measured: a form at FLOOR ran on every release measured

# Operator form -> the lowest onnxruntime release that loads and runs it correctly.
# How it was measured (one single-node graph per form on 16 PyPI releases against a numpy reference,
# then every bundle kind through board.engine): bench/RESULTS.md, "onnxruntime releases".
# A contrib form missing here fails the build (host/ortneeds.py): measure it, then add it.
OP_MIN_ORT = {
    "com.microsoft.MatMulNBits(bits=8)": "1.22.0",  # 1.17-1.21: "Only 4b quantization is supported"
    "com.microsoft.GroupQueryAttention(position_ids)": "1.22.0",  # 10 inputs; 1.21 and older take 7-9
    # without position_ids (host/ emits none such): 1.18-1.19 load it but get a chunk after a cached prefix wrong
    "com.microsoft.GroupQueryAttention": "1.20.0",
    "com.microsoft.RotaryEmbedding(num_heads)": "1.17.0",  # 1.16: no num_heads attribute (3-D input)
    "com.microsoft.SkipSimplifiedLayerNormalization": "1.16.2",  # 1.16.1 and older: no CPU kernel
    "SimplifiedLayerNormalization": FLOOR,  # what onnxruntime's optimizer makes of the plain RMSNorm nodes
    "MatMulInteger(uint8)": FLOOR,  # u8u8 with zero points 128
    "MatMulInteger(int8)": FLOOR,  # s8s8 without zero points (the Ascend graph)
    "DynamicQuantizeLinear": FLOOR,
    # the plain operators of a whole graph at each opset the build writes (11: the Ascend graph) and
    # the IR versions the exporter writes with them (6 for opset 11, 7 or 8 for 12-18)
    **{f"ai.onnx opset {n}": FLOOR for n in range(11, 19)},
    **{f"ir_version {n}": FLOOR for n in (6, 7, 8)},
}

# The linears of each W8A8 dialect (host/nbits.py, host/quantize.py), and what an onnxruntime-target
# graph holds whatever the dialect and cache (host/rotary.py): a rebuild for an older onnxruntime can
# change the first, never the second.
DIALECT_OPS = {"nbits8": "com.microsoft.MatMulNBits(bits=8)", "u8u8": "MatMulInteger(uint8)",
               "s8s8": "MatMulInteger(int8)"}
ORT_DIALECTS = ("nbits8", "u8u8")  # the dialects --target ort writes (host/buildconfig.py), the default first
INPLACE_CACHE_OPS = ("com.microsoft.GroupQueryAttention(position_ids)", "com.microsoft.SkipSimplifiedLayerNormalization")
ORT_TARGET_OPS = ("com.microsoft.RotaryEmbedding(num_heads)", "ai.onnx opset 17", "ir_version 8")

# The oldest Python each onnxruntime release has wheels for (PyPI, manylinux aarch64 and x86_64):
# 1.15.0-1.19.2 cp38 up (1.19.2 is the last for 3.8 and 3.9), 1.20.0-1.23.2 cp310 up (1.23.2 the
# last for 3.10), 1.24.1 and later cp311 up. (first release, Python), newest first.
ORT_PYTHON = (("1.24.0", (3, 11)), ("1.20.0", (3, 10)), ("0.0.0", (3, 8)))

_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def version_tuple(text) -> tuple | None:
    """(major, minor, patch) of a release string such as "1.19.2" or "1.20.0.dev2024"; None when it is none."""
    match = _VERSION.match(text) if isinstance(text, str) else None
    return tuple(int(g or 0) for g in match.groups()) if match else None


def runs(installed: str, form: str) -> bool:
    """Whether onnxruntime `installed` runs operator form `form` (False for a form this table does not know)."""
    need = OP_MIN_ORT.get(form)
    return need is not None and version_tuple(installed) >= version_tuple(need)


def python_for(release: str) -> tuple:
    """The oldest Python that onnxruntime `release` has wheels for."""
    v = version_tuple(release)
    return next(py for first, py in ORT_PYTHON if v >= version_tuple(first))


def _dotted(version) -> str:
    return ".".join(map(str, version))


@dataclass(frozen=True)
class Shortfall:
    """Why a board's onnxruntime cannot run a graph, and what to do about it."""

    needs: str  # "onnxruntime >= 1.22.0 (for com.microsoft.MatMulNBits(bits=8))"
    have: str  # "onnxruntime 1.19.2 on Python 3.9.18"
    fix: str  # "upgrade onnxruntime to 1.22.0 (needs Python >= 3.10), or rebuild with `python -m host build ...`"

    def __str__(self) -> str:
        return f"the graph needs {self.needs}; this board has {self.have}: {self.fix}"


def rebuild_options(installed: str, quantized: bool) -> str | None:
    """The build options that give a graph onnxruntime `installed` runs ("--dialect u8u8 --onnxruntime 1.19.2"),
    or None when no onnxruntime-target graph runs there. A quantized graph gets its dialect named: the
    default if it runs there, else the next. `--onnxruntime` makes the build use only what that release runs."""
    if not all(runs(installed, form) for form in ORT_TARGET_OPS):
        return None
    version = _dotted(version_tuple(installed))
    if not quantized:
        return f"--onnxruntime {version}"
    dialect = next((d for d in ORT_DIALECTS if runs(installed, DIALECT_OPS[d])), None)
    return f"--dialect {dialect} --onnxruntime {version}" if dialect else None


def recommended_options(installed: str) -> str | None:
    """The build options for the fastest W8A8 graph onnxruntime `installed` runs: the default dialect alone
    when it runs every form the build emits, else what `rebuild_options` gives; None when none runs."""
    newest = (DIALECT_OPS[ORT_DIALECTS[0]], *INPLACE_CACHE_OPS, *ORT_TARGET_OPS)
    if all(runs(installed, form) for form in newest):
        return f"--dialect {ORT_DIALECTS[0]}"
    return rebuild_options(installed, quantized=True)


def onnxruntime_shortfall(min_version: str | None, ops: dict, installed: str | None, python) -> Shortfall | None:
    """None when onnxruntime `installed` (on Python `python`, a version tuple) runs a graph that needs
    `min_version` (the manifest's graph.min_onnxruntime; `ops` its graph.onnxruntime_ops), or when
    either is unknown (a bundle older than format 6, an unreadable version): nothing to compare. Else
    the Shortfall: the forms that need more, the upgrade (and the Python it needs) and the rebuild."""
    need, have = version_tuple(min_version), version_tuple(installed)
    if need is None or have is None or have >= need:
        return None
    late = sorted((form for form, v in ops.items() if (version_tuple(v) or (0,)) > have),
                  key=lambda form: (tuple(-x for x in version_tuple(ops[form])), form))  # the newest need first
    needs = f"onnxruntime >= {_dotted(need)}" + (f" (for {', '.join(late)})" if late else "")
    py = python_for(_dotted(need))
    fix = f"upgrade onnxruntime to {_dotted(need)} (needs Python >= {_dotted(py)})"
    options = rebuild_options(installed, quantized=any(form in ops for form in DIALECT_OPS.values()))
    if options:
        fix += f", or rebuild with `python -m host build ... {options}`"
    return Shortfall(needs=needs, have=f"onnxruntime {_dotted(have)} on Python {_dotted(tuple(python)[:3])}", fix=fix)


def installed_onnxruntime() -> str | None:
    """This python's onnxruntime version, or None when it does not import."""
    try:
        import onnxruntime
    except Exception:  # noqa: BLE001 - any import failure means: not there to check
        return None
    return getattr(onnxruntime, "__version__", None)

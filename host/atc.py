"""ATC command derivation: from a bundle manifest to the exact `atc` argument list.

Pure functions only; running the command lives in host/compile.py. Syntax follows the CANN
8.x ATC reference (--input_shape with -1 for dynamic dims, --dynamic_dims "a,b;c,d" gears,
--precision_mode_v2, --soc_version) for the Atlas 200I/500 A2 (Ascend 310B) boards.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass

from board.manifest import Manifest, TensorSpec
from host.errors import InputError

# Board model -> SoC. Orange Pi AIpro style boards: the 20 TOPS part is Ascend310B1, the
# 8 TOPS part Ascend310B4; an .om built for one is rejected by the other at load time.
SOC_BY_BOARD = {"20T": "Ascend310B1", "8T": "Ascend310B4"}
BOARD_BY_SOC = {soc: board for board, soc in SOC_BY_BOARD.items()}
SOCS = ("Ascend310B1", "Ascend310B2", "Ascend310B3", "Ascend310B4")

# --precision_mode_v2 values documented for the Atlas 200I/500 A2 (CANN 8.x). ATC's own
# default is fp16, which forces fp32 ops to fp16 (the ONNX-vs-OM drift users report).
# `origin` keeps the graph's dtypes (documented ranking: origin > mixed_float16 > fp16);
# an op whose AI Core kernel lacks fp32 then runs as an fp32 AI CPU op: slower, not wrong.
# The W8A8 graph's matmuls are int8 either way, so only vector ops are affected there.
PRECISION_MODES = ("origin", "cube_fp16in_fp32out", "mixed_float16", "fp16")
DEFAULT_PRECISION = "origin"

FRAMEWORK_ONNX = 5
MAX_GEARS = 100  # ATC accepts 2..100 dynamic_dims profiles


@dataclass(frozen=True)
class AtcCommand:
    """The derived ATC invocation: argv plus what it was derived from, for display and tests."""

    argv: list  # ["atc", "--model=...", ...]
    input_shape: str
    dynamic_dims: str | None  # None when the graph has a single gear (static shapes)
    gears: list  # prefill chunk lengths S, in dynamic_dims order
    soc: str
    precision_mode: str

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
        }


def resolve_soc(value: str) -> str:
    """A --soc value (SoC name or board model such as 20T/8T) -> ATC soc_version."""
    if value in SOC_BY_BOARD:
        return SOC_BY_BOARD[value]
    for soc in SOCS:
        if value.lower() == soc.lower():
            return soc
    raise InputError(
        f"unknown --soc {value!r}: use one of {', '.join(SOCS)} "
        f"or a board model ({soc_hint()})"
    )


def soc_hint() -> str:
    """One phrase that untangles the 20T/8T confusion."""
    return ", ".join(f"{board} boards are {soc}" for board, soc in SOC_BY_BOARD.items())


def dim_symbols(manifest: Manifest) -> dict[str, int]:
    """Symbol values a manifest shape may use, besides S (the chunk length)."""
    a, g = manifest.arch, manifest.graph
    return {"L": a.num_layers, "Hkv": a.num_kv_heads, "KV": g.kv_len, "D": a.head_dim, "V": a.vocab_size}


def eval_dim(dim, symbols: dict[str, int], s: int) -> int:
    """Value of one shape entry (an int, or a sum such as "KV+S") at chunk length s."""
    if isinstance(dim, int):
        return dim
    total = 0
    for term in str(dim).replace(" ", "").split("+"):
        if term == "S":
            total += s
        elif term in symbols:
            total += symbols[term]
        elif term.lstrip("-").isdigit():
            total += int(term)
        else:
            raise InputError(f"manifest shape entry {dim!r}: unknown symbol {term!r}; rebuild the bundle")
    return total


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
) -> AtcCommand:
    """The full ATC argv for a bundle; `model`/`output` are paths as the runner sees them.

    ATC appends ".om" to `output`. --log=error keeps the board's small disk and our
    captured output free of info logs; errors still carry their E-codes.
    """
    soc = resolve_soc(soc)
    if precision_mode not in PRECISION_MODES:
        raise InputError(f"unknown --precision-mode {precision_mode!r}: use one of {', '.join(PRECISION_MODES)}")
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
    argv += [f"--soc_version={soc}", f"--precision_mode_v2={precision_mode}", "--log=error"]
    return AtcCommand(argv, input_shape, dynamic_dims, gears, soc, precision_mode)

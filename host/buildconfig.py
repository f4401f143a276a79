"""What one build is asked to do: the typed, frozen `BuildConfig`, checked once when it is made.

No torch here, so the CLI can take its option choices from the same definitions cheaply.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from board.manifest import ACT_SCHEMES, BUILTIN_TEMPLATES, DIALECTS, QUANT_SCHEMES, ActScheme, Dialect, QuantScheme
from board.ortneeds import DIALECT_OPS, OP_MIN_ORT, ORT_DIALECTS, ORT_TARGET_OPS, runs, version_tuple
from host.errors import InputError

Target = Literal["ort", "ascend"]
KVDtype = Literal["fp32", "fp16"]
# the W8A8 graph dialects each target runs (host/quantize.py), its default first: u8u8 (MatMulInteger)
# prefills ~2x faster than nbits8 on x86 without VNNI, at a cost in quality (bench/RESULTS.md); ATC
# parses only plain operators (s8s8)
TARGET_DIALECTS: dict[Target, tuple] = {"ort": ORT_DIALECTS, "ascend": ("s8s8",)}
TARGETS: dict[Target, Dialect] = {target: dialects[0] for target, dialects in TARGET_DIALECTS.items()}
# onnxruntime's MatMulNBits (nbits8) quantizes activations itself, at run time: static scales need u8u8
STATIC_DIALECTS: dict[Target, Dialect] = {"ort": "u8u8", "ascend": "s8s8"}
KV_DTYPES: tuple = get_args(KVDtype)
# What each target computes activations in unless --compute says otherwise: the NPU runs fp16 on
# its AI Cores (fp32 ops fall back to the AI CPU). Its opset is the lowest that expresses the graph.
DEFAULT_COMPUTE: dict[Target, KVDtype] = {"ort": "fp32", "ascend": "fp16"}
SmoothMode = Literal["auto", "off"]  # besides a number: one SmoothQuant alpha for every group
SMOOTH_MODES: tuple = get_args(SmoothMode)
MIN_EVAL_TOKENS = 8  # the greedy check's prompt comes from the held-out text


@dataclass(frozen=True)
class BuildConfig:
    """Everything one build needs; a bad value is an InputError (saying how to fix it) at construction."""

    model: str
    out: Path
    calib: Path | None = None
    tokenizer: str | None = None
    quant: QuantScheme = "w8a8"
    smooth: SmoothMode | float = "auto"  # "auto": alpha searched per layer and group (host/recipe.py); "off"; or one alpha
    act_scheme: ActScheme = "dynamic"
    kv_len: int = 256
    prefill_chunks: tuple = (1, 16, 64)  # normalized: sorted, unique, always with 1
    # dtype of the KV cache tensors (past/present); None: the compute dtype (fp16 for ascend: the NPU
    # would otherwise gather and cast the whole cache every step, and hold twice its bytes)
    dtype: KVDtype | None = None
    target: Target = "ort"
    dialect: Dialect | None = None  # None: TARGETS[target], or STATIC_DIALECTS[target] with act_scheme "static"
    compute: KVDtype | None = None  # activations, norms, attention; None: DEFAULT_COMPUTE[target]
    opset: int | None = None  # ai.onnx opset; None: 17 for ort, the lowest that expresses the graph for ascend
    calib_samples: int = 16
    calib_seq_len: int = 128
    eval_tokens: int = 512  # held-out tokens (tail of --calib) for perplexity
    chat_template: str | None = None  # None: detected from the tokenizer's config
    name: str | None = None
    # the oldest onnxruntime the graph must run on ("1.19.2"): only operators it runs (board/ortneeds.py),
    # so no MatMulNBits(bits=8) and no GroupQueryAttention cache below 1.22; None: the newest graph
    onnxruntime: str | None = None

    def __post_init__(self):
        from host.export import MAX_OPSET, MIN_OPSET, OPSET  # the exporter's range (torch: imported only here)

        checks = [
            (self.quant in QUANT_SCHEMES, f"--quant {self.quant!r}: use one of {', '.join(QUANT_SCHEMES)}"),
            (self.act_scheme in ACT_SCHEMES, f"--act-scheme {self.act_scheme!r}: use one of {', '.join(ACT_SCHEMES)}"),
            (self.target in TARGETS, f"--target {self.target!r}: use one of {', '.join(TARGETS)}"),
            (self.dialect in (None, *DIALECTS), f"--dialect {self.dialect!r}: use one of {', '.join(DIALECTS)}"),
            (self.dtype in (None, *KV_DTYPES), f"--dtype {self.dtype!r}: use one of {', '.join(KV_DTYPES)}"),
            (self.compute in (None, *KV_DTYPES), f"--compute {self.compute!r}: use one of {', '.join(KV_DTYPES)}"),
            (self.opset is None or MIN_OPSET <= self.opset <= MAX_OPSET,
             f"--opset {self.opset}: use {MIN_OPSET} (the lowest that expresses the graph) to {MAX_OPSET} (ATC's documented top)"),
            (self.smooth in SMOOTH_MODES or (type(self.smooth) in (int, float) and 0.0 <= self.smooth <= 1.0),
             f"--smooth {self.smooth}: SmoothQuant alpha is in [0, 1] (e.g. 0.5), or auto, or off"),
            (self.smooth == "auto" or self.quant == "w8a8", "--smooth only applies to --quant w8a8"),
            (self.kv_len >= 2, f"--kv-len {self.kv_len}: give at least 2 KV slots (e.g. 256)"),
            (self.calib_samples >= 1, f"--calib-samples {self.calib_samples}: give at least 1"),
            (self.calib_seq_len >= 8, f"--calib-seq-len {self.calib_seq_len}: give at least 8"),
            (self.eval_tokens >= MIN_EVAL_TOKENS, f"--eval-tokens {self.eval_tokens}: give at least {MIN_EVAL_TOKENS} "
                                                  "held-out tokens (e.g. 512) to measure perplexity on"),
            (self.chat_template is None or self.chat_template in BUILTIN_TEMPLATES,
             f"--chat-template {self.chat_template!r}: use one of {', '.join(BUILTIN_TEMPLATES)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)
        chunks = tuple(sorted({1, *(int(c) for c in self.prefill_chunks)}))
        if chunks[0] < 1 or chunks[-1] > self.kv_len:
            raise InputError(f"--prefill-chunks {list(chunks)}: each chunk must be in 1..--kv-len ({self.kv_len})")
        # frozen: the normalized forms are set once, here
        object.__setattr__(self, "prefill_chunks", chunks)
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "compute", self.compute or DEFAULT_COMPUTE.get(self.target, "fp32"))
        object.__setattr__(self, "dtype", self.dtype or self.compute)
        object.__setattr__(self, "opset", self.opset or (MIN_OPSET if self.target == "ascend" else OPSET))
        self._check_onnxruntime()
        dialect = self.dialect or (STATIC_DIALECTS if self.act_scheme == "static" else TARGETS)[self.target]
        fits = [d for d in TARGET_DIALECTS[self.target] if not self.onnxruntime or runs(self.onnxruntime, DIALECT_OPS[d])]
        if self.dialect is None and fits and dialect not in fits:  # --onnxruntime too old for the default
            dialect = fits[0]
        if dialect not in TARGET_DIALECTS[self.target]:
            raise InputError(f"--dialect {dialect}: --target {self.target} runs {' or '.join(TARGET_DIALECTS[self.target])}")
        if dialect == "nbits8" and self.act_scheme == "static":
            raise InputError("--dialect nbits8 quantizes activations at run time; use --dialect u8u8 with --act-scheme static")
        if self.quant == "w8a8" and dialect not in fits:
            raise InputError(f"--dialect {dialect} needs onnxruntime >= {OP_MIN_ORT[DIALECT_OPS[dialect]]} "
                             f"({DIALECT_OPS[dialect]}); --onnxruntime {self.onnxruntime} runs "
                             + (" or ".join(f"--dialect {d}" for d in fits) or "no W8A8 dialect of this target"))
        object.__setattr__(self, "dialect", dialect)

    def _check_onnxruntime(self) -> None:
        """InputError when --onnxruntime is no release, or one older than any onnxruntime-target graph needs."""
        if self.onnxruntime is None:
            return
        if not version_tuple(self.onnxruntime):
            raise InputError(f"--onnxruntime {self.onnxruntime!r}: give the board's onnxruntime release, e.g. 1.19.2")
        late = [f for f in ORT_TARGET_OPS if not runs(self.onnxruntime, f)] if self.target == "ort" else []
        if late:
            raise InputError(f"--onnxruntime {self.onnxruntime}: every --target ort graph needs onnxruntime >= "
                             f"{max((OP_MIN_ORT[f] for f in late), key=version_tuple)} ({', '.join(late)}); "
                             "upgrade the board's onnxruntime")

    @property
    def smooth_alpha(self) -> float | None:
        """The one alpha given with --smooth, else None (off, or searched per group: see report.json)."""
        return None if self.smooth in SMOOTH_MODES else float(self.smooth)


# --- bounds on a build's sizes from the model and the machine, checked before calibration starts ---
# `--kv-len` and `--calib-seq-len` above the model's trained position range are useless (those positions
# were never trained) and, at absurd values, exhaust memory after minutes of work.
# Copies of the KV cache alive at once during export and verification (example input, past and
# present in onnxruntime, the PyTorch twin's), and of one layer's attention scores in calibration
# (scores, softmax, its grad-free temporaries): generous, so the bound only catches absurd sizes.
KV_COPIES = 6
SCORE_COPIES = 4
_DTYPE_BYTES = {"fp32": 4, "fp16": 2}


def available_memory() -> int | None:
    """Bytes the kernel says can be allocated without swapping (Linux MemAvailable), or None if unknown."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_sizes(config: BuildConfig, model_config, available: int | None = None) -> None:
    """InputError, with the reason, when the KV length or calibration length cannot work for this model here."""
    limit = model_config.max_position_embeddings
    for option, value in (("--kv-len", config.kv_len), ("--calib-seq-len", config.calib_seq_len)):
        if value > limit:
            raise InputError(f"{option} {value}: above the model's max_position_embeddings ({limit}), positions it "
                             f"was never trained on; give at most {limit}")
    available = available_memory() if available is None else available
    if available is None:
        return
    heads = model_config.num_attention_heads
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // heads
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    kv = model_config.num_hidden_layers * 2 * kv_heads * config.kv_len * head_dim * _DTYPE_BYTES[config.dtype]
    scores = heads * max(config.calib_seq_len, max(config.prefill_chunks)) ** 2 * 4
    shape = f"{model_config.num_hidden_layers} layers x 2 x {kv_heads} KV heads x {config.kv_len} x {head_dim} x {_DTYPE_BYTES[config.dtype]} bytes"
    for option, need, what in (("--kv-len", KV_COPIES * kv, f"a KV cache of {gib(kv)} ({shape})"),
                               ("--calib-seq-len", SCORE_COPIES * scores, f"attention scores of {gib(scores)} per layer")):
        if need > available:
            raise InputError(f"{option}: {what} needs about {gib(need)} during the build but this machine has "
                             f"{gib(available)} available; give a smaller {option}")

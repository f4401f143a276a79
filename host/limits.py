"""Bounds on a build's sizes from the model and the machine, checked before calibration starts.

`--kv-len` and `--calib-seq-len` above the model's trained position range are useless (those
positions were never trained) and, at absurd values, exhaust memory: a 1e9-slot KV cache or a
100k-token calibration sample gets the build OOM-killed after minutes of work.
"""
from __future__ import annotations

from pathlib import Path

from host.buildconfig import BuildConfig
from host.errors import InputError

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

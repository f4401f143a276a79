"""Calibration: run real text through the float model and record each linear's input range.

The text is tokenized once and split deterministically: the tail is held out for perplexity,
and calibration samples are consecutive chunks from the start (each prefixed with BOS, as the
model sees text at inference). Forward hooks on every quantizable nn.Linear record the
per-input-channel abs-max of its input over all samples; SmoothQuant and static activation
scales are computed from these.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from tqdm import tqdm

from host.errors import InputError
from host.model import EdgeLlama

MIN_TOKENS = 16  # below this there is nothing to calibrate on or hold out


@dataclass(frozen=True)
class TextSplit:
    """Token chunks for calibration and the held-out chunks for perplexity and parity checks."""

    calib: list  # [1, <=seq_len] int64 tensors, BOS first
    heldout: list  # same


def split_text(ids: list[int], bos_id: int, seq_len: int, calib_samples: int, eval_tokens: int,
               eval_ctx: int | None = None) -> TextSplit:
    """Held-out tail of up to `eval_tokens` (at most a quarter of the text) in windows of `eval_ctx` positions
    (board/perplexity.py's method; default seq_len); calibration chunks of seq_len from the start."""
    if len(ids) < MIN_TOKENS:
        raise InputError(f"calibration text has {len(ids)} tokens; give at least {MIN_TOKENS} (a few paragraphs)")
    body = seq_len - 1  # + BOS
    n_eval = min(eval_tokens, len(ids) // 4)
    head, tail = ids[: len(ids) - n_eval], ids[len(ids) - n_eval :]

    def chunks(tokens: list[int], limit: int, body: int = body) -> list[torch.Tensor]:
        out = []
        for start in range(0, len(tokens), body):
            piece = tokens[start : start + body]
            if len(out) == limit or not piece:
                break
            out.append(torch.tensor([[bos_id] + piece], dtype=torch.long))
        return out

    return TextSplit(calib=chunks(head, calib_samples), heldout=chunks(tail, len(tail), (eval_ctx or seq_len) - 1))


@dataclass
class Calibration:
    """Per linear: per-channel max|input| [K] over all samples, and up to `rows` sampled input rows [T, K]."""

    absmax: dict
    rows: dict


def collect_inputs(model: EdgeLlama, samples: list[torch.Tensor], rows: int = 0, row_names: set | None = None,
                   desc: str = "calibrate") -> Calibration:
    """Run the samples through `model` with hooks (removed before returning) on every linear; rows of `row_names`.

    Rows are kept evenly from each sample (row i of a sample of S tokens kept when i % ceil(S*n/rows) == 0),
    so their memory is bounded by `rows` x K per linear whatever the calibration size.
    """
    absmax: dict[str, torch.Tensor] = {}
    kept: dict[str, list] = {}
    total = sum(int(ids.shape[-1]) for ids in samples)
    stride = max(1, -(-total // rows)) if rows else 0

    def record(name):
        def hook(module, inputs, output):
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            m = x.abs().amax(dim=0)
            absmax[name] = torch.maximum(absmax[name], m) if name in absmax else m
            if stride and name in (row_names or ()):
                kept.setdefault(name, []).append(x[::stride].clone())

        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in model.linears()]
    try:
        with torch.no_grad():
            for ids in tqdm(samples, desc=desc, unit="sample", file=sys.stderr, leave=False):
                run_prefill(model, ids)
    finally:
        for handle in handles:
            handle.remove()
    return Calibration(absmax, {name: torch.cat(parts) for name, parts in kept.items()})


def collect_input_absmax(model: EdgeLlama, samples: list[torch.Tensor], desc: str = "calibrate") -> dict[str, torch.Tensor]:
    """{linear name: per-channel max|input| [K]} over all samples."""
    return collect_inputs(model, samples, desc=desc).absmax


def run_prefill(model: EdgeLlama, ids: torch.Tensor) -> torch.Tensor:
    """Logits [1,S,V] of a fresh prefill (no cache slots), through the bundle's graph signature."""
    s = ids.shape[-1]
    mask = torch.ones(1, s, dtype=torch.long)
    positions = torch.arange(s, dtype=torch.long)[None]
    logits, _ = model(ids, mask, positions, model.empty_cache(0))
    return logits


def summarize(absmax: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Per linear: max, mean and median of the per-channel abs-max (outlier channels stand out as max >> median)."""
    return {
        name: {
            "absmax_max": round(float(m.max()), 6),
            "absmax_mean": round(float(m.mean()), 6),
            "absmax_median": round(float(m.median()), 6),
            "channels": int(m.numel()),
        }
        for name, m in absmax.items()
    }

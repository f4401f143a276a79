"""Verification of an exported graph: onnxruntime against the PyTorch modules, on real text.

Measures, through the board's own fixed-KV protocol (slots filled in order, mask bits set):
- parity: max |logit error| of the ONNX graph against its PyTorch twin (the same float or W8A8
  modules) for one prefill chunk and a few cached decode steps;
- greedy agreement: teacher-forced top-1 agreement of the ONNX graph with the fp32 reference
  on held-out text, and the common prefix of free-running greedy continuations of a prompt;
- perplexity of the fp32 reference and of the ONNX graph on the held-out text.
A parity error beyond tolerance (or a non-finite logit) means a broken export: BuildError.

Tolerances are relative to the largest |logit| of the reference. The fp32 graph differs from
PyTorch only by float summation order (~1e-6 relative; 1e-4 leaves two decades of margin).
The W8A8 graph computes the same integers as W8A8Linear, but a last-bit float difference
before an activation quantizer can move a value across a rounding boundary, changing one int8
code by 1 (a step of max|x|/127 in one element); measured effects stay below 1e-3 relative.
A broken export (wrong layout, zero point or scale) is off by tens of percent.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from host.calibrate import run_prefill
from host.errors import BuildError
from host.model import EdgeLlama

TOLERANCE = {"none": 1e-4, "w8a8": 1e-2}
DECODE_STEPS = 4
GREEDY_PROMPT = 8
GREEDY_TOKENS = 24


def ort_session(onnx_path: Path, threads: int = 0):
    """An onnxruntime CPU session (0 threads: onnxruntime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def ort_step(session):
    """Step function (ids, mask, positions, past) -> (logits, present) over an onnxruntime session."""

    def step(ids, mask, positions, past):
        feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "past_key_values": past}
        logits, present = session.run(["logits", "present_key_values"], feeds)
        return logits, present

    return step


def torch_step(model: EdgeLlama):
    """The same step function over the PyTorch graph twin."""

    def step(ids, mask, positions, past):
        with torch.no_grad():
            logits, present = model(*(torch.from_numpy(a) for a in (ids, mask, positions, past)))
        return logits.numpy(), present.numpy()

    return step


class FixedKVRunner:
    """Feeds tokens through a step function the way the board does: fixed slots, filled in order."""

    def __init__(self, step, cache: np.ndarray):
        self.step, self.cache, self.filled = step, cache.copy(), 0

    def feed(self, tokens: list[int]) -> np.ndarray:
        """Logits [S,V] for the new tokens; their keys/values go into the next free slots."""
        kv_len, s = self.cache.shape[4], len(tokens)
        if self.filled + s > kv_len:
            raise ValueError(f"{self.filled}+{s} tokens do not fit {kv_len} KV slots")
        mask = np.zeros((1, kv_len + s), dtype=np.int64)
        mask[0, : self.filled] = 1
        mask[0, kv_len:] = 1
        ids = np.asarray([tokens], dtype=np.int64)
        positions = np.arange(self.filled, self.filled + s, dtype=np.int64)[None]
        logits, present = self.step(ids, mask, positions, self.cache)
        self.cache[:, :, :, :, self.filled : self.filled + s] = present
        self.filled += s
        return logits[0]


def prefill_logits(step, cache: np.ndarray, tokens: list[int]) -> np.ndarray:
    """Logits [S,V] of tokens after empty slots (any S, even beyond the slots; nothing is stored)."""
    kv_len, s = cache.shape[4], len(tokens)
    mask = np.concatenate((np.zeros((1, kv_len), np.int64), np.ones((1, s), np.int64)), axis=1)
    positions = np.arange(s, dtype=np.int64)[None]
    return step(np.asarray([tokens], dtype=np.int64), mask, positions, cache)[0][0]


def greedy(runner: FixedKVRunner, prompt: list[int], n: int) -> list[int]:
    """n greedy tokens after `prompt`."""
    logits = runner.feed(prompt)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits[-1])))
        logits = runner.feed(out[-1:])
    return out


def nll_sum(logits: np.ndarray, ids: np.ndarray) -> float:
    """Summed negative log-likelihood of ids[1:] given logits[:-1], in float64."""
    x = torch.from_numpy(np.asarray(logits[:-1], dtype=np.float64))
    return float(-torch.log_softmax(x, dim=-1).gather(1, torch.from_numpy(ids[1:, None])).sum())


@dataclass
class VerifyConfig:
    kv_len: int
    prefill_chunk: int
    quant: str  # "none" | "w8a8": picks the tolerance
    decode_steps: int = DECODE_STEPS


def _parity(step_a, step_b, cache, tokens: list[int], prefill: int) -> dict:
    a, b = FixedKVRunner(step_a, cache), FixedKVRunner(step_b, cache)
    la, lb = a.feed(tokens[:prefill]), b.feed(tokens[:prefill])
    result = {"prefill_tokens": prefill, "prefill_max_abs_err": float(np.abs(la - lb).max())}
    scale = float(np.abs(lb).max())
    decode = []
    for t in tokens[prefill:]:
        la, lb = a.feed([t]), b.feed([t])
        decode.append(float(np.abs(la - lb).max()))
        scale = max(scale, float(np.abs(lb).max()))
    result.update(decode_steps=len(decode), decode_max_abs_err=max(decode, default=0.0), logit_absmax=scale)
    worst = max(result["prefill_max_abs_err"], result["decode_max_abs_err"])
    result["max_rel_err"] = worst / max(scale, 1e-12)
    result["finite"] = bool(np.isfinite(la).all() and np.isfinite(lb).all())
    return result


def verify_graph(onnx_path: Path, twin: EdgeLlama, reference: EdgeLlama, heldout: list, config: VerifyConfig) -> dict:
    """All measurements of the module docstring as a report dict; BuildError on a broken export."""
    session = ort_session(onnx_path)
    onnx_step = ort_step(session)
    cache = twin.empty_cache(config.kv_len).numpy()
    tokens = heldout[0][0].tolist()
    steps = min(config.decode_steps, config.kv_len - 1, len(tokens) - 1)
    prefill = max(1, min(config.prefill_chunk, config.kv_len - steps, len(tokens) - steps))
    tokens = tokens[: prefill + steps]
    report = {"parity": _parity(onnx_step, torch_step(twin), cache, tokens, prefill)}
    parity = report["parity"]
    parity["tolerance_rel"] = TOLERANCE[config.quant]
    if not parity["finite"] or parity["max_rel_err"] > parity["tolerance_rel"]:
        raise BuildError(
            f"{onnx_path}: ONNX logits differ from PyTorch by {parity['max_rel_err']:.3g} of the logit range "
            f"(tolerance {parity['tolerance_rel']}); the export is broken"
        )

    nll_ref = nll_onnx = 0.0
    agree = count = 0
    for ids in tqdm(heldout, desc="perplexity", unit="chunk", file=sys.stderr, leave=False):
        with torch.no_grad():
            ref_logits = run_prefill(reference, ids)[0].numpy()
        onnx_logits = prefill_logits(onnx_step, cache, ids[0].tolist())
        ids_np = ids[0].numpy()
        nll_ref += nll_sum(ref_logits, ids_np)
        nll_onnx += nll_sum(onnx_logits, ids_np)
        agree += int((ref_logits[:-1].argmax(-1) == onnx_logits[:-1].argmax(-1)).sum())
        count += len(ids_np) - 1
    report["perplexity"] = {
        "tokens": count,
        "fp32": math.exp(nll_ref / count),
        "onnx": math.exp(nll_onnx / count),
    }
    report["perplexity"]["ratio"] = report["perplexity"]["onnx"] / report["perplexity"]["fp32"]
    report["greedy"] = {"teacher_forced_top1_agreement": agree / count, "tokens": count}

    prompt = heldout[0][0, :GREEDY_PROMPT].tolist()
    n = max(0, min(GREEDY_TOKENS, config.kv_len - len(prompt)))
    got = greedy(FixedKVRunner(onnx_step, cache), prompt, n)
    want = greedy(FixedKVRunner(torch_step(reference), reference.empty_cache(config.kv_len).numpy()), prompt, n)
    common = next((i for i, (x, y) in enumerate(zip(got, want)) if x != y), len(got))
    report["greedy"].update(prompt=prompt, onnx=got, fp32=want, common_prefix=common, generated=n)
    return report

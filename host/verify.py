"""Verification of an exported graph: onnxruntime against the PyTorch modules, on real text.

Measures, through the board's own fixed-KV protocol (slots filled in order, mask bits set):
- parity: max |logit error| of the ONNX graph against its PyTorch twin (the same float or W8A8
  modules) for one prefill chunk and a few cached decode steps;
- greedy agreement: teacher-forced top-1 agreement of the ONNX graph with the fp32 reference
  on held-out text, and the common prefix of free-running greedy continuations of a prompt;
- perplexity of the fp32 reference and of the ONNX graph on the held-out text.
A parity error beyond tolerance (or a non-finite logit) means a broken export: BuildError.

Checks (a broken export, e.g. a wrong layout, zero point or scale, is off by tens of percent):
- fp32 graph: max |ONNX - PyTorch| <= 1e-4 x max |logit|. The two differ only by float
  summation order (measured ~1e-6 relative), so this leaves two decades of margin.
- W8A8 graph: max |ONNX - fp32| <= 2 x max |PyTorch W8A8 - fp32| (+ the fp32 margin). Each
  quantized layer is bit-exact (tests/test_quantize.py), but a last-bit float difference
  elsewhere (e.g. onnxruntime's fused RMSNorm) can move an activation across a rounding
  boundary; the changed code perturbs everything after it (later tokens attend to its keys),
  and the graph ends up as a second, equally good quantization-noise realization rather than
  a bit-exact copy (measured on stories260K: ONNX vs twin ~0.4 where twin vs fp32 is ~0.5).
  So the ONNX must be as close to the fp32 model as the PyTorch W8A8 modules are.
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

FP32_TOLERANCE = 1e-4  # relative to max |logit|
W8A8_FACTOR = 2.0  # the ONNX W8A8 error may be at most this multiple of the PyTorch W8A8 error
DECODE_STEPS = 4
GREEDY_PROMPT = 8
GREEDY_TOKENS = 24


def ort_session(onnx_path: Path, threads: int = 0):
    """An onnxruntime CPU session (0 threads: onnxruntime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    # no busy-waiting between runs: its threads would otherwise spin against torch's in this process
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
    for i in range(n):
        out.append(int(np.argmax(logits[-1])))
        if i + 1 < n:
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
    compute_dtype: str = "float32"  # "float16": checked against fp32 like W8A8 (its rounding is noise too)
    decode_steps: int = DECODE_STEPS


def _parity(steps: dict, cache: np.ndarray, tokens: list[int], prefill: int) -> dict:
    """Max |logit difference| between every pair of step functions over one prefill and decode steps."""
    runners = {name: FixedKVRunner(step, cache) for name, step in steps.items()}
    chunks = [tokens[:prefill]] + [[t] for t in tokens[prefill:]]
    logits = {name: [r.feed(c) for c in chunks] for name, r in runners.items()}
    names = list(steps)
    result = {"prefill_tokens": prefill, "decode_steps": len(chunks) - 1}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            diffs = [float(np.abs(x - y).max()) for x, y in zip(logits[a], logits[b])]
            result[f"{a}_vs_{b}"] = {"prefill_max_abs": diffs[0], "decode_max_abs": max(diffs[1:], default=0.0)}
    last = names[-1]
    result["logit_absmax"] = max(float(np.abs(x).max()) for x in logits[last])
    result["finite"] = all(bool(np.isfinite(x).all()) for ls in logits.values() for x in ls)
    return result


def _worst(pair: dict) -> float:
    return max(pair["prefill_max_abs"], pair["decode_max_abs"])


def check_parity(parity: dict, quant: str, where: Path, compute_dtype: str = "float32") -> None:
    """BuildError unless the ONNX graph computes what its PyTorch twin computes (see module docstring).

    An fp16-compute graph is held to the W8A8 rule: as close to fp32 as its PyTorch twin is.
    """
    scale = max(parity["logit_absmax"], 1e-12)
    if not parity["finite"]:
        raise BuildError(f"{where}: non-finite logits; the export is broken")
    if quant == "none" and compute_dtype == "float32":
        rel = _worst(parity["onnx_vs_twin"]) / scale
        parity["check"] = f"max|onnx - torch| / max|logit| = {rel:.3g} <= {FP32_TOLERANCE}"
        if rel > FP32_TOLERANCE:
            raise BuildError(f"{where}: ONNX logits differ from PyTorch by {rel:.3g} of the logit range "
                             f"(tolerance {FP32_TOLERANCE}); the export is broken")
        return
    onnx_err, twin_err = _worst(parity["onnx_vs_fp32"]), _worst(parity["twin_vs_fp32"])
    bound = W8A8_FACTOR * twin_err + FP32_TOLERANCE * scale
    parity["check"] = f"max|onnx - fp32| = {onnx_err:.4g} <= {W8A8_FACTOR} * max|torch twin - fp32| + {FP32_TOLERANCE} * max|logit| = {bound:.4g}"
    if onnx_err > bound:
        raise BuildError(
            f"{where}: the {quant} {compute_dtype} ONNX graph is off the fp32 model by {onnx_err:.4g} (max logit error) where its "
            f"PyTorch twin is off by {twin_err:.4g} (allowed: {bound:.4g}); the export is broken"
        )


def verify_graph(onnx_path: Path, twin: EdgeLlama, reference: EdgeLlama, heldout: list, config: VerifyConfig) -> dict:
    """All measurements of the module docstring as a report dict; BuildError on a broken export."""
    session = ort_session(onnx_path)
    onnx_step = ort_step(session)
    cache = twin.empty_cache(config.kv_len).numpy()
    tokens = heldout[0][0].tolist()
    steps = min(config.decode_steps, config.kv_len - 1, len(tokens) - 1)
    prefill = max(1, min(config.prefill_chunk, config.kv_len - steps, len(tokens) - steps))
    step_fns = {"onnx": onnx_step, "twin": torch_step(twin)}
    if twin is not reference:
        step_fns["fp32"] = torch_step(reference)
    report = {"parity": _parity(step_fns, cache, tokens[: prefill + steps], prefill)}
    check_parity(report["parity"], config.quant, onnx_path, config.compute_dtype)

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

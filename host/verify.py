"""Verification of an exported graph: onnxruntime against the PyTorch modules, on real text.

Measures through the board's own runtime (board.engine.Engine: the KV cache, chunking and, for the
ONNX graph, the onnxruntime backend the board uses); the PyTorch modules run behind the same Engine:
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
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from board.backends.base import Backend
from board.backends.ort import OrtBackend
from board.engine import Engine
from board.manifest import Graph
from board.perplexity import token_scores
from host.errors import BuildError
from host.model import EdgeLlama

FP32_TOLERANCE = 1e-4  # relative to max |logit|
W8A8_FACTOR = 2.0  # the ONNX W8A8 error may be at most this multiple of the PyTorch W8A8 error
DECODE_STEPS = 4
GREEDY_PROMPT = 8
GREEDY_TOKENS = 24


class TorchBackend(Backend):
    """A PyTorch EdgeLlama behind the board's Backend interface, so it runs through the same Engine."""

    name = "torch"

    def __init__(self, model: EdgeLlama):
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, past_key_values, last_only=False):
        # the model takes [2L,Hkv,KV,D]; an Engine for an inplace graph hands it the board's [L,2,1,Hkv,KV,D]
        shape = past_key_values.shape
        past = torch.from_numpy(past_key_values).reshape(-1, *shape[-3:])
        with torch.no_grad():
            logits, present = self.model(*(torch.from_numpy(a) for a in (input_ids, attention_mask, position_ids)), past)
        return logits.numpy(), present.numpy().reshape(shape[:-2] + present.shape[-2:])


def engines(bundle_dir: Path, graph: Graph, models: dict) -> dict[str, Engine]:
    """{"onnx": the graph on the board's onnxruntime backend, name: each PyTorch model}, all on board Engines."""
    arch = next(iter(models.values())).arch
    # no busy-waiting between runs: onnxruntime's threads would otherwise spin against torch's here
    onnx = OrtBackend(Path(bundle_dir) / graph.onnx, graph, arch.vocab_size, spin=False)
    return {"onnx": Engine(onnx, arch, graph)} | {name: Engine(TorchBackend(m), arch, graph) for name, m in models.items()}


def greedy(engine: Engine, prompt: list[int], n: int) -> list[int]:
    """n greedy tokens after `prompt`, from an empty cache."""
    engine.reset()
    out = []
    for i in range(n):
        logits = engine.feed(prompt if i == 0 else out[-1:])
        out.append(int(np.argmax(logits)))
    return out


def _parity(runs: dict[str, Engine], tokens: list[int], prefill: int) -> dict:
    """Max |logit difference| between every pair of engines over one prefill and single-token decode steps."""
    chunks = [tokens[:prefill]] + [[t] for t in tokens[prefill:]]
    logits = {}
    for name, engine in runs.items():
        engine.reset()
        logits[name] = [engine.feed(c, all_logits=True) for c in chunks]
    names = list(runs)
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


def verify_graph(bundle_dir: Path, graph: Graph, twin: EdgeLlama, reference: EdgeLlama, heldout: list,
                 quant: str, decode_steps: int = DECODE_STEPS) -> dict:
    """All measurements of the module docstring as a report dict; BuildError on a broken export."""
    onnx_path = Path(bundle_dir) / graph.onnx
    runs = engines(bundle_dir, graph, {"twin": twin} if twin is reference else {"twin": twin, "fp32": reference})
    ref = runs.get("fp32", runs["twin"])
    tokens = heldout[0][0].tolist()
    steps = min(decode_steps, graph.kv_len - 1, len(tokens) - 1)
    prefill = max(1, min(max(graph.prefill_chunks), graph.kv_len - steps, len(tokens) - steps))
    report = {"parity": _parity(runs, tokens[: prefill + steps], prefill)}
    check_parity(report["parity"], quant, onnx_path, graph.compute_dtype)

    nll_ref = nll_onnx = 0.0
    agree = count = 0
    for ids in tqdm(heldout, desc="perplexity", unit="chunk", file=sys.stderr, leave=False):
        ref_nll, ref_top = token_scores(ref, ids[0].tolist())
        onnx_nll, onnx_top = token_scores(runs["onnx"], ids[0].tolist())
        nll_ref += float(ref_nll.sum())
        nll_onnx += float(onnx_nll.sum())
        agree += int((ref_top == onnx_top).sum())
        count += len(ref_top)
    report["perplexity"] = {
        "tokens": count,
        "fp32": math.exp(nll_ref / count),
        "onnx": math.exp(nll_onnx / count),
    }
    report["perplexity"]["ratio"] = report["perplexity"]["onnx"] / report["perplexity"]["fp32"]
    report["greedy"] = {"teacher_forced_top1_agreement": agree / count, "tokens": count}

    prompt = heldout[0][0, :GREEDY_PROMPT].tolist()
    n = max(0, min(GREEDY_TOKENS, graph.kv_len - len(prompt)))
    got, want = greedy(runs["onnx"], prompt, n), greedy(ref, prompt, n)
    common = next((i for i, (x, y) in enumerate(zip(got, want)) if x != y), len(got))
    report["greedy"].update(prompt=prompt, onnx=got, fp32=want, common_prefix=common, generated=n)
    runs["onnx"].backend.close()
    return report

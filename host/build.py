"""The build pipeline: load, then 1. calibrate → 2. quantize → 3. export → 4. verify → 5. write.

`build(config)` reads the model, tokenizer and text named by a `BuildConfig`; the work on an
already loaded model is `build_from_model`, which tests call with tiny generated models. Each
step returns what it made and measured; the measurements end up in one `Report` (report.json).
Progress goes to stderr, one short line per stage. Three models: `fp32` (the reference, never
changed), `twin` (the PyTorch twin of the graph) and what is exported (the twin, or the twin
wrapped in onnxruntime's fused-attention graph).
"""
from __future__ import annotations

import json
import math
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from board.manifest import (ACTIVATIONS, NBITS_ACTIVATIONS, ChatTemplate, Graph, Manifest, Quantization, Tokens,
                            builtin_chat_template)
from board.ortneeds import INPLACE_CACHE_OPS, runs, version_tuple
from host.buildconfig import BuildConfig
from host.bundle import REPORT_NAME, TOKENIZER_NAME, check_out, staging, write_bundle_manifest
from host.calibrate import collect_inputs, split_text, summarize
from host.chat_source import STOP_STRINGS
from host.errors import BuildError, InputError
from host.export import export_onnx, graph_record
from host.gqa import InplaceCacheGraph, gqa_fits
from host.buildconfig import check_sizes
from host.model import EdgeLlama
from host.ortneeds import min_release, onnxruntime_needs
from host.quantize import quantize_model, quantized_layer_count
from host.quality import quality_section, summary_line
from host.recipe import ALPHAS, SEARCH_ROWS, row_names, search_alphas
from host.verify import verify_graph

__all__ = ["BuildConfig", "BuildResult", "Report", "build", "build_from_model"]  # BuildConfig re-exported for callers

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
# Far above the perplexity of a uniform guess over the vocabulary (random test weights reach ~8x) means the model and tokenizer
# disagree on what ids mean (or the weights are garbage): such a bundle must not ship.
ABSURD_PERPLEXITY_FACTOR = 100.0


@dataclass
class Report:
    """What the build measured, stage by stage: report.json, and the summaries printed after a build."""

    model: dict
    config: dict
    calibration: dict
    quantization: dict
    verification: dict
    quality: dict
    export: dict
    sizes: dict
    timings_s: dict

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def quality_line(self) -> str:
        """The one line a person reads after a build."""
        return summary_line(self.quality)

    def summary(self, path: Path, manifest: Manifest) -> dict:
        """The JSON line `python -m host build` prints for programs."""
        v = self.verification
        return {"bundle": str(path), "quant": manifest.quantization.scheme, "dialect": manifest.quantization.dialect,
                "files": {name: entry.size for name, entry in manifest.files.items()}, "parity": v["parity"]["check"],
                "perplexity": v["perplexity"], "quality": self.quality.get("sensitivity", {}).get("worst"),
                "greedy_common_prefix": v["greedy"]["common_prefix"], "seconds": self.timings_s}


@dataclass
class BuildResult:
    path: Path
    manifest: Manifest
    report: Report


@contextmanager
def stage(name: str, timings: dict, detail: str = ""):
    """Time a pipeline stage and print one progress line for it on stderr."""
    print(f"build: {name}{f' ({detail})' if detail else ''} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - start, 3)
    print(f"build: {name} done in {timings[name]:.1f} s", file=sys.stderr, flush=True)


def check_perplexity(perplexity: dict, vocab_size: int) -> None:
    """BuildError when a measured perplexity is NaN, infinite or far above a uniform guess (vocab_size)."""
    limit = ABSURD_PERPLEXITY_FACTOR * vocab_size
    for which in ("fp32", "onnx"):
        value = perplexity[which]
        if not math.isfinite(value) or value > limit:
            raise BuildError(
                f"perplexity of the {which} model on the held-out text is {value:.4g}, above {limit:.0f} "
                f"({ABSURD_PERPLEXITY_FACTOR:g} x vocab_size, a uniform guess): the tokenizer does not match the "
                "model or the weights are broken; pass the model's own --tokenizer"
            )


def read_text(path: Path | None) -> str:
    """The calibration text; InputError when missing, unreadable or empty."""
    if path is None:
        raise InputError("--calib TEXT is required: a plain-text file of the model's kind of text")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--calib {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"--calib {path}: not readable UTF-8 text ({e})") from None
    if not text.strip():
        raise InputError(f"--calib {path}: the file is empty; give real text (e.g. a few KB of the model's domain)")
    return text


def with_onnxruntime_needs(graph: Graph, onnx_path: Path, oldest: str | None) -> Graph:
    """`graph` with what the written ONNX needs from onnxruntime; BuildError when that is newer than --onnxruntime."""
    needs = onnxruntime_needs(onnx_path)
    least = min_release(needs)
    if oldest and version_tuple(least) > version_tuple(oldest):
        late = ", ".join(form for form, v in needs.items() if version_tuple(v) > version_tuple(oldest))
        raise BuildError(f"the graph needs onnxruntime >= {least} ({late}), newer than --onnxruntime {oldest}")
    return replace(graph, min_onnxruntime=least, onnxruntime_ops=needs)


def quantization_record(config: BuildConfig, graph_model) -> Quantization:
    """The manifest's description of what quantization the graph carries."""
    if config.quant == "none":
        return Quantization()
    return Quantization(
        scheme="w8a8",
        dialect=config.dialect,
        weights="int8_per_channel_symmetric",
        activations=NBITS_ACTIVATIONS if config.dialect == "nbits8" else ACTIVATIONS[config.act_scheme],
        smooth_alpha=config.smooth_alpha,
        quantized_layers=quantized_layer_count(graph_model),
    )


def chat_template(tok, told: str | None) -> ChatTemplate:
    """The model's own template, or the built-in one of a family (--chat-template, or when the model has none)."""
    chat = tok.chat
    if chat.jinja and told is None:
        return ChatTemplate(name=tok.chat_template, jinja=chat.jinja, source=chat.source, special_tokens=chat.special_tokens)
    return replace(builtin_chat_template(told or tok.chat_template), special_tokens=chat.special_tokens)


def build(config: BuildConfig) -> BuildResult:
    """Load the model and tokenizer named by `config`, then `build_from_model`."""
    from host.load import load_model
    from host.tokenizer import check_vocab, load_tokenizer

    check_out(config.out)  # a bad --out is found now, not after minutes of loading and calibrating
    text = read_text(config.calib)
    timings: dict = {}
    with stage("load", timings):
        loaded = load_model(str(config.model))  # .model (fp32 LlamaForCausalLM), .name, .model_dir
        vocab = loaded.model.config.vocab_size
        tok = loaded.tokenizer if loaded.tokenizer and not config.tokenizer else load_tokenizer(config.tokenizer, loaded.model_dir, vocab)
        check_vocab(tok, vocab, config.model)
    info = {"name": config.name or loaded.name, "source": str(config.model), "tokenizer": tok.source}
    return build_from_model(loaded.model, tok, text, config, info, timings)


@dataclass
class Calibrated:
    """Step 1's result: per-channel input abs-max of every linear, and sampled rows for the alpha search."""

    absmax: dict
    rows: dict
    record: dict  # report.json's "calibration"


def calibrate(fp32: EdgeLlama, split, config: BuildConfig, timings: dict) -> Calibrated:
    """1. Run the calibration text through the fp32 model with forward hooks on every linear."""
    w8a8 = config.quant == "w8a8"
    with stage("calibrate", timings, f"{len(split.calib)} samples of {config.calib_seq_len} tokens"):
        found = collect_inputs(fp32, split.calib, SEARCH_ROWS if w8a8 else 0, row_names(fp32))
    record = {"samples": len(split.calib), "seq_len": config.calib_seq_len,
              "tokens": sum(int(x.shape[-1]) for x in split.calib),
              "heldout_tokens": sum(int(x.shape[-1]) for x in split.heldout),
              "linears": summarize(found.absmax)}  # per linear: max/mean/median of its per-channel input abs-max
    return Calibrated(found.absmax, found.rows, record)


def quantize(hf_model, fp32: EdgeLlama, calibrated: Calibrated, config: BuildConfig, timings: dict):
    """2. The PyTorch twin of the graph: W8A8 (alphas searched, every linear swapped) or float; and the recipe."""
    kv_dtype, compute = DTYPES[config.dtype], DTYPES[config.compute]
    if config.quant != "w8a8":
        return EdgeLlama.from_hf(hf_model, kv_dtype).use_compute_dtype(compute), None  # shares fp32's weights
    candidates = {"auto": ALPHAS, "off": (None,)}.get(config.smooth, (config.smooth,))
    with stage("search", timings, f"SmoothQuant alpha per layer and group from {len(candidates)} candidate(s)"):
        alphas, recipe = search_alphas(fp32, calibrated.absmax, calibrated.rows, candidates, config.dialect)
    calibrated.rows.clear()  # the sampled rows are the search's alone, and large
    with stage("quantize", timings):
        twin = quantize_model(hf_model, calibrated.absmax, config.act_scheme, config.dialect, alphas, kv_dtype, compute)
    return twin, recipe


def graph_for_target(twin: EdgeLlama, config: BuildConfig):
    """3a. What is exported: the twin itself, or (onnxruntime) the twin with contrib rotary in a fused-attention graph."""
    if config.target != "ort":  # contrib operators are onnxruntime's; ATC parses plain ONNX only
        return twin
    twin.use_contrib_rope()
    old_ort = config.onnxruntime and not all(runs(config.onnxruntime, form) for form in INPLACE_CACHE_OPS)
    fits = gqa_fits(twin.arch.head_dim, DTYPES[config.dtype], DTYPES[config.compute])
    return InplaceCacheGraph(twin) if fits and not old_ort else twin


@torch.no_grad()
def build_from_model(hf_model, tok, text: str, config: BuildConfig, info: dict, timings: dict | None = None) -> BuildResult:
    """Build the bundle at `config.out` from a loaded HF LlamaForCausalLM and a TokenizerBundle."""
    check_sizes(config, hf_model.config)
    timings = {} if timings is None else timings
    hf_model = hf_model.float().eval()
    fp32 = EdgeLlama.from_hf(hf_model, DTYPES[config.dtype])  # the reference every step is measured against
    ids = tok.tokenizer.encode(text, add_special_tokens=False).ids
    split = split_text(ids, tok.bos_id, config.calib_seq_len, config.calib_samples, config.eval_tokens, config.kv_len)

    calibrated = calibrate(fp32, split, config, timings)
    twin, recipe = quantize(hf_model, fp32, calibrated, config, timings)
    quant = quantization_record(config, twin)
    template = chat_template(tok, config.chat_template)
    with staging(config.out) as out:
        # 3. export
        with stage("export", timings):
            graph_model = graph_for_target(twin, config)
            exported = export_onnx(graph_model, out, config.kv_len, opset=config.opset)
        graph = with_onnxruntime_needs(
            graph_record(graph_model, config.kv_len, config.prefill_chunks, exported, config_dtype(config.compute)),
            out / exported.files[0], config.onnxruntime)
        tok.tokenizer.save(str(out / TOKENIZER_NAME))
        # 4. verify, through the board's own engine
        with stage("verify", timings, f"onnxruntime vs PyTorch; perplexity on {len(split.heldout)} held-out windows"):
            verification = verify_graph(out, graph, twin, fp32, split.heldout, config.quant)
        check_perplexity(verification["perplexity"], fp32.arch.vocab_size)
        # 5. write
        report = Report(
            model=info, config={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
            calibration=calibrated.record, quantization=asdict(quant), verification=verification,
            quality=quality_section(verification, recipe, config.kv_len),
            export={"files": exported.files, "opset": exported.opset, "initializer_bytes": exported.initializer_bytes,
                    "ops": exported.ops},
            sizes={name: (out / name).stat().st_size for name in exported.files + [TOKENIZER_NAME]}, timings_s=timings)
        (out / REPORT_NAME).write_text(report.to_json())
        print(report.quality_line(), file=sys.stderr, flush=True)
        tokens = Tokens(bos_id=tok.bos_id, eos_id=tok.eos_id, pad_id=tok.pad_id, add_bos=tok.add_bos,
                        stop_strings=list(STOP_STRINGS[template.name]), stop_ids=list(tok.chat.stop_ids))
        manifest = write_bundle_manifest(out, model=info, arch=fp32.arch, graph=graph, quantization=quant, tokens=tokens,
                                         chat_template=template, sampling=tok.chat.sampling)
    return BuildResult(path=Path(config.out), manifest=manifest, report=report)


def config_dtype(name: str) -> str:
    """The manifest's dtype name of a --compute / --dtype option: fp16 -> float16."""
    return str(DTYPES[name]).split(".")[-1]

"""The build pipeline: load → calibrate → quantize → export → verify → bundle.

`build(config)` reads the model, tokenizer and text named by a `BuildConfig`; the work on an
already loaded model is `build_from_model`, which tests call with tiny generated models.
Progress goes to stderr, one short line per stage.
"""
from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from board.manifest import CHAT_TEMPLATES, Manifest, Quantization, Tokens
from host.bundle import REPORT_NAME, TOKENIZER_NAME, staging, write_bundle_manifest
from host.calibrate import collect_input_absmax, split_text, summarize
from host.errors import InputError
from host.export import MAX_OPSET, MIN_OPSET, OPSET, export_onnx, graph_record
from host.model import COMPUTE_DTYPES, EdgeLlama
from host.quantize import ACT_SCHEMES, quantize_model, quantized_layer_count
from host.verify import verify_graph

QUANT_SCHEMES = ("none", "w8a8")
TARGETS = {"ort": "u8u8", "ascend": "s8s8"}  # target -> W8A8 graph dialect (see host/quantize.py)
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
# What each target computes activations in and exports at, unless --compute / --opset say otherwise:
# the NPU runs fp16 on its AI Cores (fp32 ops fall back to the AI CPU), at the lowest opset.
DEFAULT_COMPUTE = {"ort": "fp32", "ascend": "fp16"}
DEFAULT_OPSET = {"ort": OPSET, "ascend": MIN_OPSET}
# Strings that end an assistant turn for each template family beyond the EOS token.
STOP_STRINGS = {"zephyr": ["<|user|>", "<|system|>"], "llama2": ["[INST]"], "chatml": ["<|im_end|>"], "none": []}


@dataclass
class BuildConfig:
    """Everything one build needs; `validate()` raises InputError saying how to fix a bad value."""

    model: str
    out: Path
    calib: Path | None = None
    tokenizer: str | None = None
    quant: str = "w8a8"
    smooth: float | None = None  # SmoothQuant alpha; None: no smoothing
    act_scheme: str = "dynamic"
    kv_len: int = 256
    prefill_chunks: list = field(default_factory=lambda: [1, 16, 64])
    dtype: str = "fp32"  # dtype of the KV cache tensors (past/present)
    target: str = "ort"
    compute: str | None = None  # activations, norms, attention: fp32 | fp16; None: DEFAULT_COMPUTE[target]
    opset: int | None = None  # ai.onnx opset; None: DEFAULT_OPSET[target]
    calib_samples: int = 16
    calib_seq_len: int = 128
    eval_tokens: int = 512  # held-out tokens (tail of --calib) for perplexity
    chat_template: str | None = None  # None: detected from the tokenizer's config
    name: str | None = None

    def validate(self) -> "BuildConfig":
        checks = [
            (self.quant in QUANT_SCHEMES, f"--quant {self.quant!r}: use one of {', '.join(QUANT_SCHEMES)}"),
            (self.act_scheme in ACT_SCHEMES, f"--act-scheme {self.act_scheme!r}: use one of {', '.join(ACT_SCHEMES)}"),
            (self.target in TARGETS, f"--target {self.target!r}: use one of {', '.join(TARGETS)}"),
            (self.dtype in DTYPES, f"--dtype {self.dtype!r}: use one of {', '.join(DTYPES)}"),
            (self.compute in (None, *DTYPES), f"--compute {self.compute!r}: use one of {', '.join(DTYPES)}"),
            (self.opset is None or MIN_OPSET <= self.opset <= MAX_OPSET,
             f"--opset {self.opset}: use {MIN_OPSET} (the lowest that expresses the graph) to {MAX_OPSET} (ATC's documented top)"),
            (self.smooth is None or 0.0 <= self.smooth <= 1.0, f"--smooth {self.smooth}: SmoothQuant alpha is in [0, 1], e.g. 0.5"),
            (self.smooth is None or self.quant == "w8a8", "--smooth only applies to --quant w8a8"),
            (self.kv_len >= 2, f"--kv-len {self.kv_len}: give at least 2 KV slots (e.g. 256)"),
            (self.calib_samples >= 1, f"--calib-samples {self.calib_samples}: give at least 1"),
            (self.calib_seq_len >= 8, f"calibration sequence length {self.calib_seq_len}: give at least 8"),
            (
                self.chat_template is None or self.chat_template in CHAT_TEMPLATES,
                f"--chat-template {self.chat_template!r}: use one of {', '.join(CHAT_TEMPLATES)}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)
        chunks = sorted({1, *(int(c) for c in self.prefill_chunks)})
        if chunks[0] < 1 or chunks[-1] > self.kv_len:
            raise InputError(f"--prefill-chunks {chunks}: each chunk must be in 1..--kv-len ({self.kv_len})")
        self.prefill_chunks = chunks
        self.out = Path(self.out)
        self.compute = self.compute or DEFAULT_COMPUTE.get(self.target, "fp32")
        self.opset = self.opset or DEFAULT_OPSET.get(self.target, OPSET)
        return self


@dataclass
class BuildResult:
    path: Path
    manifest: Manifest
    report: dict


@contextmanager
def stage(name: str, timings: dict, detail: str = ""):
    """Time a pipeline stage and print one progress line for it on stderr."""
    print(f"build: {name}{f' ({detail})' if detail else ''} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - start, 3)
    print(f"build: {name} done in {timings[name]:.1f} s", file=sys.stderr, flush=True)


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


def quantization_record(config: BuildConfig, graph_model) -> Quantization:
    """The manifest's description of what quantization the graph carries."""
    if config.quant == "none":
        return Quantization()
    return Quantization(
        scheme="w8a8",
        dialect=TARGETS[config.target],
        weights="int8_per_channel_symmetric",
        activations="int8_per_token_dynamic" if config.act_scheme == "dynamic" else "int8_per_tensor_static",
        smooth_alpha=config.smooth,
        quantized_layers=quantized_layer_count(graph_model),
    )


def build(config: BuildConfig) -> BuildResult:
    """Load the model and tokenizer named by `config`, then `build_from_model`."""
    from host.load import load_model
    from host.tokenizer import check_vocab, load_tokenizer

    config.validate()
    text = read_text(config.calib)
    timings: dict = {}
    with stage("load", timings):
        loaded = load_model(str(config.model))  # .model (fp32 LlamaForCausalLM), .name, .model_dir
        vocab = loaded.model.config.vocab_size
        tok = load_tokenizer(config.tokenizer, loaded.model_dir, vocab)
        check_vocab(tok, vocab, config.model)
    info = {"name": config.name or loaded.name, "source": str(config.model), "tokenizer": tok.source}
    hf_model = loaded.model
    return build_from_model(hf_model, tok, text, config, info, timings)


@torch.no_grad()
def build_from_model(hf_model, tok, text: str, config: BuildConfig, info: dict, timings: dict | None = None) -> BuildResult:
    """Build the bundle at `config.out` from a loaded HF LlamaForCausalLM and a TokenizerBundle."""
    config.validate()
    timings = {} if timings is None else timings
    hf_model = hf_model.float().eval()
    kv_dtype = DTYPES[config.dtype]
    reference = EdgeLlama.from_hf(hf_model, kv_dtype)
    ids = tok.tokenizer.encode(text, add_special_tokens=False).ids
    split = split_text(ids, tok.bos_id, config.calib_seq_len, config.calib_samples, config.eval_tokens)

    with stage("calibrate", timings, f"{len(split.calib)} samples of {config.calib_seq_len} tokens"):
        absmax = collect_input_absmax(reference, split.calib)
    compute = DTYPES[config.compute]
    graph_model = reference if compute == torch.float32 else EdgeLlama.from_hf(hf_model, kv_dtype).use_compute_dtype(compute)
    if config.quant == "w8a8":
        with stage("quantize", timings):
            graph_model = quantize_model(hf_model, absmax, config.act_scheme, TARGETS[config.target], config.smooth,
                                         kv_dtype, compute)
    quant = quantization_record(config, graph_model)

    template = config.chat_template or getattr(tok, "chat_template", None) or "none"
    with staging(config.out) as stage_dir:
        with stage("export", timings):
            exported = export_onnx(graph_model, stage_dir, config.kv_len, opset=config.opset)
        tok.tokenizer.save(str(stage_dir / TOKENIZER_NAME))
        graph = graph_record(graph_model, config.kv_len, config.prefill_chunks, exported, str(compute).split(".")[-1])
        with stage("verify", timings, f"onnxruntime vs PyTorch; perplexity on {len(split.heldout)} held-out chunks"):
            verification = verify_graph(stage_dir, graph, graph_model, reference, split.heldout, config.quant)
        report = {
            "model": info,
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
            "calibration": {
                "samples": len(split.calib),
                "seq_len": config.calib_seq_len,
                "tokens": sum(int(x.shape[-1]) for x in split.calib),
                "heldout_tokens": sum(int(x.shape[-1]) for x in split.heldout),
                "linears": summarize(absmax),  # per linear: max/mean/median of its per-channel input abs-max
            },
            "quantization": asdict(quant),
            "verification": verification,
            "export": {"files": exported.files, "opset": exported.opset, "initializer_bytes": exported.initializer_bytes, "ops": exported.ops},
            "sizes": {name: (stage_dir / name).stat().st_size for name in exported.files + [TOKENIZER_NAME]},
            "timings_s": timings,
        }
        (stage_dir / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
        manifest = write_bundle_manifest(
            stage_dir,
            model=info,
            arch=reference.arch,
            graph=graph,
            quantization=quant,
            tokens=Tokens(
                bos_id=tok.bos_id,
                eos_id=tok.eos_id,
                pad_id=tok.pad_id,
                add_bos=tok.add_bos,
                stop_strings=STOP_STRINGS.get(template, []),
            ),
            chat_template=CHAT_TEMPLATES[template],
        )
    return BuildResult(path=Path(config.out), manifest=manifest, report=report)

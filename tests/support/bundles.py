"""Bundle-building helpers for everyone's tests: a tiny random Llama and tokenizer, built in seconds.

`build_test_bundle(out_dir, quant="none"|"w8a8", ...)` runs the real host pipeline
(calibrate, quantize, export, verify, bundle) on a generated model: hidden 64, 4 heads,
2 KV heads (GQA), a byte-level BPE tokenizer of `vocab` tokens (<unk> 0, <s> 1, </s> 2)
whose post-processor adds BOS, like the tokenizers the host writes for real models.
Everything is seeded, so two calls with the same arguments give the same weights and tokens.
"""
from __future__ import annotations

import math
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from board.backends import open_backend
from board.bundle import Bundle, open_bundle
from board.engine import Engine
from board.perplexity import token_scores
from host.build import BuildConfig, build_from_model
from host.tokenizer import TokenizerBundle
from host.verify import greedy

SPECIALS = ("<unk>", "<s>", "</s>")
BOS_ID, EOS_ID = 1, 2
_WORDS = (
    "once upon a time there was little girl named lily she loved to play outside in the park "
    "one day saw big red ball and her mom said happy dog cat tree sun friends went home"
).split()


def sample_text(sentences: int = 400, seed: int = 0) -> str:
    """Deterministic story-like English: the calibration and held-out text of test builds."""
    rng = random.Random(seed)
    out = []
    for _ in range(sentences):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 12))]
        out.append(" ".join(words).capitalize() + rng.choice((".", ".", "!", "?")))
    return " ".join(out)


def make_tokenizer(vocab: int = 320, text: str | None = None) -> Tokenizer:
    """A byte-level BPE tokenizer with exactly `vocab` tokens (specials first) that adds BOS."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text or sample_text()], trainer)
    assert tok.get_vocab_size() == vocab, f"tokenizer has {tok.get_vocab_size()} tokens, wanted {vocab}"
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS_ID)])
    return tok


def make_tokenizer_bundle(vocab: int = 320, chat_template: str = "none") -> TokenizerBundle:
    """The host's tokenizer record for `make_tokenizer`."""
    tok = make_tokenizer(vocab)
    return TokenizerBundle(
        tokenizer=tok, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=EOS_ID, add_bos=True,
        vocab_size=tok.get_vocab_size(), chat_template=chat_template, source="tests/support/bundles.py",
    )


def make_model(vocab: int = 320, layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
               intermediate: int = 128, seed: int = 0, init_std: float = 0.1, **config):
    """A random HF LlamaForCausalLM (transformers), deterministic for a seed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = dict(max_position_embeddings=512, bos_token_id=BOS_ID, eos_token_id=EOS_ID) | config
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, initializer_range=init_std, **config,
    )
    return LlamaForCausalLM(cfg).eval()


def build_test_bundle(
    out_dir: Path,
    quant: str = "none",
    kv_len: int = 64,
    layers: int = 2,
    target: str = "ort",
    vocab: int = 320,
    chat_template: str = "none",
    **options,
) -> Path:
    """Build a complete bundle of a tiny random Llama into `out_dir` and return its path.

    `options` go to BuildConfig (e.g. smooth=0.5, act_scheme="static", dtype="fp16",
    prefill_chunks=[1, 8]).
    """
    config = BuildConfig(
        model="tiny-random-llama", out=Path(out_dir), quant=quant, kv_len=kv_len, target=target,
        calib_samples=options.pop("calib_samples", 4), calib_seq_len=options.pop("calib_seq_len", 32),
        eval_tokens=options.pop("eval_tokens", 128), prefill_chunks=options.pop("prefill_chunks", [1, 8, 16]),
        chat_template=chat_template, **options,
    )
    model = make_model(vocab=vocab, layers=layers)
    tok = make_tokenizer_bundle(vocab, chat_template)
    info = {"name": "tiny-random-llama", "source": "tests/support/bundles.py (random weights)"}
    return build_from_model(model, tok, sample_text(), config, info).path


# --- running a bundle with the board's own runtime (board.engine on the onnxruntime backend) ----
def bundle_engine(bundle_dir: Path, **graph_changes) -> tuple[Bundle, Engine]:
    """The opened bundle (checksums verified) and a board Engine on its onnxruntime backend.

    `graph_changes` replace fields of the manifest's Graph, e.g. prefill_chunks=[1, 20].
    """
    bundle = open_bundle(bundle_dir)
    backend = open_backend(bundle, "onnxruntime", threads=1, spin=False)
    m = bundle.manifest
    return bundle, Engine(backend, m.arch, replace(m.graph, **graph_changes))


def bundle_greedy(bundle_dir: Path, prompt: str, n: int) -> tuple[list[int], str]:
    """Greedy continuation of `prompt` (BOS added as the manifest says): prefill once, then n-1 decode steps."""
    bundle, engine = bundle_engine(bundle_dir)
    with engine.backend:
        out = greedy(engine, bundle.tokenizer.encode(prompt, bos=True), n)
    return out, bundle.tokenizer.decode(out)


def bundle_perplexity(bundle_dir: Path, text: str, chunk: int = 128, max_tokens: int = 512) -> float:
    """Perplexity of the bundle's graph on the last `max_tokens` tokens of `text`, in BOS-led chunks."""
    bundle, engine = bundle_engine(bundle_dir)
    ids = bundle.tokenizer.encode(text)[-max_tokens:]
    bos = bundle.manifest.tokens.bos_id
    with engine.backend:
        nll = np.concatenate([token_scores(engine, [bos] + ids[start : start + chunk - 1])[0]
                              for start in range(0, len(ids), chunk - 1)])
    return math.exp(float(nll.mean()))

"""Perplexity of a text under the bundle's model, through the board runtime (board.engine).

Two methods:
- windows (default, comparable with other tools): the text's tokens, without special tokens, in
  consecutive windows of `ctx` positions, each BOS + ctx-1 text tokens run from an empty cache;
  every text token is scored once, given BOS and the text before it in its window.
- stream: one pass through the same KV-cache path as chat, evicting (sink + recent window) when
  the cache is full, which is what the board does in use; it stops at the model's position range.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from board.engine import Engine
from board.errors import BoardError
from board.tokenizer import Tokenizer

BLOCK = 256  # tokens per feed call: bounds the [n, V] logits held at once


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-probabilities in float64."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def token_scores(engine: Engine, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """From an empty cache: the NLL of each of ids[1:] given the ones before, and the top-1 id predicted there."""
    engine.reset()
    nll, top = [], []
    for start in range(0, len(ids) - 1, BLOCK):
        block = ids[start : min(start + BLOCK, len(ids) - 1)]
        logits = engine.feed(block, all_logits=True)
        targets = np.asarray(ids[start + 1 : start + 1 + len(block)])
        nll.append(-log_softmax(logits)[np.arange(len(block)), targets])
        top.append(logits.argmax(axis=-1))
    return np.concatenate(nll), np.concatenate(top)


def windows(ids: list[int], bos_id: int, ctx: int) -> list[list[int]]:
    """Consecutive windows [BOS, ids...] of at most `ctx` positions covering every id once."""
    if ctx < 2:
        raise BoardError(f"--ctx {ctx}: a window needs at least 2 positions (BOS + 1 token)")
    body = ctx - 1
    return [[bos_id] + ids[i : i + body] for i in range(0, len(ids), body)]


def perplexity(engine: Engine, tokenizer: Tokenizer, text: str, max_tokens: int | None = None,
               ctx: int | None = None, progress: Callable[[int, int], None] | None = None) -> dict:
    """Windowed perplexity (module docstring) of the first `max_tokens` text tokens; ctx defaults to the KV length.

    Returns {"perplexity", "nll", "tokens", "windows", "ctx"}.
    """
    kv_len = engine.cache.kv_len
    ctx = ctx or kv_len
    if ctx > kv_len:
        raise BoardError(f"--ctx {ctx} exceeds the bundle's {kv_len} KV slots; give --ctx {kv_len} or less")
    if ctx > engine.max_positions:
        raise BoardError(f"--ctx {ctx} exceeds the model's {engine.max_positions} positions; give a smaller --ctx")
    ids = tokenizer.encode(text, bos=False)[:max_tokens]
    if not ids:
        raise BoardError("the text encoded to zero tokens; give a longer text")
    parts = windows(ids, tokenizer.tokens.bos_id, ctx)
    total = 0.0
    for n, window in enumerate(parts):
        total += float(token_scores(engine, window)[0].sum())
        if progress:
            progress(n + 1, len(parts))
    nll = total / len(ids)
    return {"perplexity": float(np.exp(nll)), "nll": nll, "tokens": len(ids), "windows": len(parts), "ctx": ctx}


def streaming_perplexity(engine: Engine, tokenizer: Tokenizer, text: str, max_tokens: int | None = None) -> dict:
    """{"perplexity", "nll", "tokens"}: one pass through the KV cache with eviction (module docstring)."""
    ids = tokenizer.encode(text, bos=True)
    limit = min(len(ids), engine.max_positions, max_tokens or len(ids))
    ids = ids[:limit]
    if len(ids) < 2:
        raise BoardError("the text has fewer than 2 tokens; give a longer --text file")
    nll = float(token_scores(engine, ids)[0].mean())
    return {"perplexity": float(np.exp(nll)), "nll": nll, "tokens": len(ids) - 1}

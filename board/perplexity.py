"""Perplexity of a text under the bundle's model, computed through the same KV-cache path as chat.

Text longer than the KV window runs through eviction (sink + recent window), which is what the
board does in use; the count stops at the model's position range.
"""
from __future__ import annotations

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


def perplexity(engine: Engine, tokenizer: Tokenizer, text: str, max_tokens: int | None = None) -> dict:
    """{"perplexity", "nll", "tokens"}: mean negative log-likelihood of each token given the ones before."""
    ids = tokenizer.encode(text, bos=True)
    limit = min(len(ids), engine.max_positions, max_tokens or len(ids))
    ids = ids[:limit]
    if len(ids) < 2:
        raise BoardError("the text has fewer than 2 tokens; give a longer --text file")
    nll = float(token_scores(engine, ids)[0].mean())
    return {"perplexity": float(np.exp(nll)), "nll": nll, "tokens": len(ids) - 1}

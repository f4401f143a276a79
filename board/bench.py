"""Throughput of the bundle on this machine: prefill and decode tokens per second, peak memory.

One warm-up pass first (onnxruntime plans memory on the first run), then prefill timed over
`repeats` runs and decode steps timed one by one; medians are reported.
"""
from __future__ import annotations

import resource
import statistics
import time

import numpy as np

from board.engine import Engine
from board.errors import BoardError


def peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench(
    engine: Engine, vocab_size: int, prompt_tokens: int, new_tokens: int, repeats: int = 3, seed: int = 0
) -> dict:
    """Time a prompt of random ids, then decode steps that feed back the argmax (token values do not change speed)."""
    if min(prompt_tokens, new_tokens, repeats) < 1:
        raise BoardError("--prompt-tokens, --new-tokens and --repeats must be >= 1")
    if prompt_tokens + new_tokens > engine.max_positions:
        raise BoardError(
            f"prompt + new tokens = {prompt_tokens + new_tokens} exceed max_position_embeddings={engine.max_positions}"
        )
    rng = np.random.default_rng(seed)
    prompt = rng.integers(3, vocab_size, size=prompt_tokens).tolist()

    engine.reset()
    engine.feed(prompt)  # warm-up: the first run of each chunk shape allocates and plans
    engine.feed([prompt[0]])

    prefill = []
    for _ in range(repeats):
        engine.reset()
        t0 = time.perf_counter()
        logits = engine.feed(prompt)
        prefill.append(time.perf_counter() - t0)

    decode = []
    token = int(np.argmax(logits))
    for _ in range(new_tokens):
        t0 = time.perf_counter()
        logits = engine.feed([token])
        decode.append(time.perf_counter() - t0)
        token = int(np.argmax(logits))

    prefill_s, decode_s = statistics.median(prefill), statistics.median(decode)
    return {
        "backend": engine.backend.name,
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "kv_len": engine.cache.kv_len,
        "prefill_s": prefill_s,
        "prefill_tok_s": prompt_tokens / prefill_s,
        "decode_ms_per_token": decode_s * 1000.0,
        "decode_tok_s": 1.0 / decode_s,
        "decode_tok_s_mean": len(decode) / sum(decode),
        "peak_rss_mb": peak_rss_mb(),
    }

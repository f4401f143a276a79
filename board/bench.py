"""Throughput of the bundle on this machine: time to first token, prefill and decode speed, peak memory.

One warm-up pass first (onnxruntime plans memory on the first run). Prefill is timed over `repeats`
runs of the prompt; time to first token is the prompt's prefill plus choosing the first token, as a
user waits for it. Decode steps are timed one by one: the figure is the median step (a stable
measure on a shared machine), reported with the 90th percentile so that spikes stay visible.
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


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def bench(
    engine: Engine, vocab_size: int, prompt_tokens: int, new_tokens: int, repeats: int = 3, seed: int = 0
) -> dict:
    """Time a prompt of random ids, then decode steps that feed back the argmax (token values do not change speed)."""
    if min(prompt_tokens, new_tokens, repeats) < 1:
        raise BoardError("--prompt-tokens, --new-tokens and --repeats must be >= 1")
    if prompt_tokens + new_tokens > engine.max_positions:
        raise BoardError(
            f"prompt + new tokens = {prompt_tokens + new_tokens} exceed the model's {engine.max_positions} positions"
        )
    rng = np.random.default_rng(seed)
    prompt = rng.integers(3, vocab_size, size=prompt_tokens).tolist()

    engine.reset()
    engine.feed(prompt)  # warm-up: the first run of each chunk shape allocates and plans
    engine.feed([prompt[0]])

    first_token = []
    for _ in range(repeats):
        engine.reset()
        t0 = time.perf_counter()
        token = int(np.argmax(engine.feed(prompt)))
        first_token.append(time.perf_counter() - t0)

    decode = []
    for _ in range(new_tokens):
        t0 = time.perf_counter()
        token = int(np.argmax(engine.feed([token])))
        decode.append(time.perf_counter() - t0)

    ttft_s, step_s = statistics.median(first_token), statistics.median(decode)
    return {
        "backend": engine.backend.name,
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "kv_len": engine.cache.kv_len,
        "ttft_ms": ttft_s * 1000.0,
        "prefill_tok_s": prompt_tokens / ttft_s,
        "decode_tok_s_median": 1.0 / step_s,
        "decode_ms_median": step_s * 1000.0,
        "decode_ms_p90": percentile(decode, 0.9) * 1000.0,
        "peak_rss_mb": peak_rss_mb(),
    }

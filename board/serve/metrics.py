"""Server metrics in Prometheus' text exposition format (version 0.0.4), written by hand: no client library.

Counters and the time-to-first-token histogram are updated by the engine thread and read by the
event loop, so every access holds one lock.
"""
from __future__ import annotations

import os
import resource
import threading
from collections import Counter

PREFIX = "edge_llm_"
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def process_memory() -> tuple[int, int]:
    """Resident and peak resident bytes of this process (Linux /proc; peak from getrusage)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        rss = peak
    return rss, max(peak, rss)


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: Counter = Counter()  # (endpoint, status) -> count
        self.tokens: Counter = Counter()  # prompt / prompt_cached / completion -> count
        self.ttft = [0] * (len(TTFT_BUCKETS) + 1)
        self.ttft_sum = 0.0
        self.queue_wait = [0, 0.0]  # requests that reached the engine, seconds they waited
        self.decode_tok_s = 0.0
        self.queue_depth = 0
        self.running = 0
        self.kv_used = 0
        self.kv_slots = 0

    def request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def set(self, **gauges) -> None:
        with self._lock:
            for name, value in gauges.items():
                setattr(self, name, value)

    def started(self, waited: float) -> None:
        with self._lock:
            self.queue_wait[0] += 1
            self.queue_wait[1] += waited

    def generated(self, prompt: int, cached: int, completion: int, ttft: float | None, decode_tok_s: float | None) -> None:
        with self._lock:
            self.tokens.update(prompt=prompt, prompt_cached=cached, completion=completion)
            if ttft is not None:
                index = next((i for i, b in enumerate(TTFT_BUCKETS) if ttft <= b), len(TTFT_BUCKETS))
                self.ttft[index] += 1
                self.ttft_sum += ttft
            if decode_tok_s:
                self.decode_tok_s = decode_tok_s

    def render(self) -> str:
        rss, peak = process_memory()
        with self._lock:
            lines = _family("requests_total", "counter", "HTTP requests by endpoint and status",
                            [(f'{{endpoint="{e}",status="{s}"}}', n) for (e, s), n in sorted(self.requests.items())])
            for kind, what in (("prompt", "prompt tokens"), ("prompt_cached", "prompt tokens reused from the KV cache"),
                               ("completion", "generated tokens")):
                lines += _family(f"{kind}_tokens_total", "counter", what, [("", self.tokens[kind])])
            cumulative, buckets = 0, []
            for bound, count in zip((*map(str, TTFT_BUCKETS), "+Inf"), self.ttft):
                cumulative += count
                buckets.append((f'_bucket{{le="{bound}"}}', cumulative))
            buckets += [("_sum", round(self.ttft_sum, 6)), ("_count", cumulative)]
            lines += _family("time_to_first_token_seconds", "histogram", "request arrival (queue included) to first streamed text", buckets)
            lines += _family("queue_wait_seconds", "summary", "time requests waited for the engine",
                             [("_sum", round(self.queue_wait[1], 6)), ("_count", self.queue_wait[0])])
            for name, what, value in (
                ("decode_tokens_per_second", "decode speed of the last finished request", round(self.decode_tok_s, 3)),
                ("queue_depth", "requests waiting for the engine", self.queue_depth),
                ("requests_running", "requests being generated (0 or 1)", self.running),
                ("kv_cache_used_slots", "KV cache slots holding a token", self.kv_used),
                ("kv_cache_slots", "KV cache slots in all", self.kv_slots),
                ("kv_cache_occupancy_ratio", "used / all KV cache slots",
                 round(self.kv_used / self.kv_slots, 6) if self.kv_slots else 0),
                ("process_resident_memory_bytes", "resident memory of the server process", rss),
                ("process_peak_resident_memory_bytes", "peak resident memory of the server process", peak),
            ):
                lines += _family(name, "gauge", what, [("", value)])
        return "\n".join(lines) + "\n"


def _family(name: str, kind: str, what: str, samples: list) -> list[str]:
    full = PREFIX + name
    return [f"# HELP {full} {what}", f"# TYPE {full} {kind}"] + [f"{full}{suffix} {value}" for suffix, value in samples]

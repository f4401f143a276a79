"""Requests/s and time to first token of `python -m board serve` with 1 and N concurrent streaming clients.

    python bench/serve_bench.py --bundle bundles/model [--clients 1,4] [--requests 8] [--max-tokens 64]
    python bench/serve_bench.py --url http://127.0.0.1:8080 [--api-key KEY]   # a server already running

Each client sends its requests one after another with the official `openai` client, streaming; every
prompt is different (no prompt-cache hits between requests). Prints one JSON line per concurrency.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support.serve starts the server
NAMES = "Lily Tom Sue Max Ben Mia Sam Zoe Tim Amy Leo Eva Dan Ivy Jack Nora".split()


def one_request(client, prompt: str, max_tokens: int) -> dict:
    start, first, tokens = time.perf_counter(), None, 0
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}],
                                            max_tokens=max_tokens, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter() - start
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return {"ttft": first, "seconds": time.perf_counter() - start, "tokens": tokens}


def run(url: str, key: str | None, clients: int, requests: int, max_tokens: int) -> dict:
    import openai

    results, lock = [], threading.Lock()

    def worker(c: int) -> None:
        client = openai.OpenAI(base_url=url + "/v1", api_key=key or "unused", max_retries=0)
        for i in range(requests):
            r = one_request(client, f"Once upon a time, {NAMES[(c * requests + i) % len(NAMES)]} found a {c}-{i}", max_tokens)
            with lock:
                results.append(r)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ttft = sorted(r["ttft"] for r in results if r["ttft"] is not None) or [float("nan")]  # nan: no text came back
    return {"clients": clients, "requests": len(results), "wall_s": round(wall, 3),
            "requests_per_s": round(len(results) / wall, 2),
            "tokens_per_s": round(sum(r["tokens"] for r in results) / wall, 1),
            "ttft_p50_ms": round(1000 * statistics.median(ttft), 1),
            "ttft_p95_ms": round(1000 * ttft[min(len(ttft) - 1, int(0.95 * len(ttft)))], 1),
            "max_tokens": max_tokens}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--bundle", type=Path, help="start `python -m board serve` on this bundle for the run")
    where.add_argument("--url", help="a server already running")
    p.add_argument("--api-key", default=None)
    p.add_argument("--clients", default="1,4", help="concurrency levels, comma-separated")
    p.add_argument("--requests", type=int, default=8, help="requests per client")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="server's onnxruntime threads")
    args = p.parse_args()
    server = None
    if args.bundle:
        from tests.support.serve import start_server

        log = Path("/tmp/serve_bench.log")
        server = start_server(args.bundle, log, *(["--threads", str(args.threads)] if args.threads else []),
                              "--queue-size", "64")
        args.url = server.url
    try:
        urllib.request.urlopen(args.url + "/health", timeout=10).read()
        for n in (int(x) for x in args.clients.split(",")):
            print(json.dumps(run(args.url, args.api_key, n, args.requests, args.max_tokens)), flush=True)
    finally:
        if server:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

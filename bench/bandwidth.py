"""Measure this machine's memory read bandwidth: the ceiling for LLM decode speed.

Decoding one token streams every weight once, so tokens/s can not beat
bandwidth / weight bytes. Prints JSON: {"read_gb_s": ..., "threads": ...}.
Run: python bench/bandwidth.py [--gib 2] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def read_bandwidth(gib: float, threads: int, repeats: int = 5) -> float:
    """Best-of-`repeats` GB/s for summing a `gib`-GiB float32 array split across threads."""
    data = np.ones(int(gib * (1 << 30)) // 4, dtype=np.float32)
    parts = np.array_split(data, threads)
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            # numpy releases the GIL inside reductions, so the parts are read in parallel.
            list(pool.map(np.sum, parts))
            best = max(best, data.nbytes / (time.perf_counter() - start) / 1e9)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0, help="array size (well above the caches)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    gbs = read_bandwidth(args.gib, args.threads)
    print(json.dumps({"read_gb_s": round(gbs, 2), "threads": args.threads, "gib": args.gib}))


if __name__ == "__main__":
    main()

"""Time and profile one decode step of a bundle's ONNX graph on onnxruntime CPU.

Runs the board's own runtime (board.engine on the onnxruntime backend, IOBinding and KV cache as on
the board) with the session knobs under test applied on top, feeds one token at a time after
`--filled` tokens, and reports the median step time. With
`--profile`, onnxruntime's profiler attributes the step to operator types and to the slowest
nodes. Prints JSON.
Run: python bench/profile_decode.py BUNDLE [--threads 2] [--opt all|extended|basic|none]
     [--spin 1] [--filled 64] [--steps 50] [--profile]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from board.backends.ort import OrtBackend
from board.bundle import open_bundle
from board.engine import Engine

OPT_LEVELS = {
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def tuner(opt: str, profile_dir: str | None, save_optimized: Path | None):
    """The knobs under test, applied on top of the board's own session options."""
    def tune(opts):
        opts.graph_optimization_level = OPT_LEVELS[opt]
        if profile_dir:
            opts.enable_profiling = True
            opts.profile_file_prefix = os.path.join(profile_dir, "decode")
        if save_optimized:
            opts.optimized_model_filepath = str(save_optimized)
    return tune


def decode_runner(engine: Engine, filled: int):
    """A no-argument function feeding one token after `filled` tokens are in the board's KV cache."""
    rng = np.random.default_rng(0)
    engine.feed(rng.integers(3, engine.backend.vocab_size, filled).tolist())
    return lambda: engine.feed([42])


def time_steps(run, steps: int, warmup: int = 3) -> list[float]:
    """Seconds per step over `steps` runs after `warmup` untimed ones."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return times


def summarize_profile(trace_path: str, steps: int, top: int = 25) -> dict:
    """Mean microseconds per step by operator type and for the `top` slowest nodes."""
    events = json.loads(Path(trace_path).read_text())
    by_type: dict[str, float] = defaultdict(float)
    by_node: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        op = e["args"]["op_name"]
        by_type[op] += e["dur"]
        by_node[e["name"][: -len("_kernel_time")]] += e["dur"]
        count[op] += 1
    def per_step(totals: dict[str, float]) -> dict[str, float]:
        return {k: round(v / steps, 1) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}

    nodes = per_step(by_node)
    return {
        "total_us": round(sum(by_type.values()) / steps, 1),
        "by_op_type_us": per_step(by_type),
        "nodes_per_step": {k: v // steps for k, v in count.items()},
        "slowest_nodes_us": dict(list(nodes.items())[:top]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--opt", choices=list(OPT_LEVELS), default="all")
    parser.add_argument("--spin", type=int, default=1)
    parser.add_argument("--filled", type=int, default=64, help="occupied KV slots before the step")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--disable", nargs="*", default=[], help="onnxruntime optimizer names to disable")
    parser.add_argument("--save-optimized", type=Path, help="write the optimized graph here")
    args = parser.parse_args()
    bundle = open_bundle(args.bundle)
    m = bundle.manifest
    if args.filled + args.steps + 3 > m.graph.kv_len:
        parser.error(f"--filled + --steps must stay below kv_len {m.graph.kv_len} (no eviction while timing)")
    with tempfile.TemporaryDirectory() as tmp:
        backend = OrtBackend(bundle.file(m.graph.onnx), m.graph, m.arch.vocab_size, threads=args.threads,
                             spin=bool(args.spin), tune=tuner(args.opt, tmp if args.profile else None, args.save_optimized),
                             disabled_optimizers=args.disable)
        times = time_steps(decode_runner(Engine(backend, m.arch, m.graph), args.filled), args.steps)
        result = {
            "bundle": str(args.bundle), "threads": args.threads, "opt": args.opt, "spin": args.spin,
            "filled": args.filled, "kv_len": m.graph.kv_len,
            "decode_ms_median": round(statistics.median(times) * 1000, 3),
            "decode_ms_min": round(min(times) * 1000, 3),
        }
        if args.profile:
            result["profile"] = summarize_profile(backend.session.end_profiling(), args.steps + 3)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

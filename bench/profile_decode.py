"""Time and profile one decode step of a bundle's ONNX graph on onnxruntime CPU.

Builds its own session (so session options can be compared without touching board/), feeds a
single token after `--filled` occupied KV slots, and reports the median step time. With
`--profile`, onnxruntime's profiler attributes the step to operator types and to the slowest
nodes. Prints JSON.
Run: python bench/profile_decode.py BUNDLE [--threads 2] [--opt all|extended|basic|none]
     [--spin 1] [--iobinding 1] [--filled 64] [--steps 50] [--profile]
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

OPT_LEVELS = {
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_NP_DTYPES = {"float32": np.float32, "float16": np.float16}


def session_options(threads: int, opt: str, spin: bool, profile_dir: str | None, disabled: list[str]):
    """SessionOptions as a board would set them, with the knobs under test exposed."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = OPT_LEVELS[opt]
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    opts.log_severity_level = 3
    if profile_dir:
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(profile_dir, "decode")
    return opts, disabled or None


def decode_feeds(manifest: dict, filled: int) -> dict[str, np.ndarray]:
    """Inputs of a one-token step after `filled` occupied slots of the fixed KV cache."""
    a, g = manifest["arch"], manifest["graph"]
    kv_len = g["kv_len"]
    shape = (a["num_layers"], 2, 1, a["num_kv_heads"], kv_len, a["head_dim"])
    mask = np.zeros((1, kv_len + 1), np.int64)
    mask[0, :filled] = 1
    mask[0, kv_len] = 1
    rng = np.random.default_rng(0)
    return {
        "input_ids": np.array([[42]], np.int64),
        "attention_mask": mask,
        "position_ids": np.array([[filled]], np.int64),
        "past_key_values": rng.standard_normal(shape).astype(_NP_DTYPES[g["kv_dtype"]]),
    }


def step_runner(session, feeds: dict[str, np.ndarray], iobinding: bool):
    """A no-argument function running one step; with IOBinding, inputs and outputs are bound once."""
    if not iobinding:
        return lambda: session.run(None, feeds)
    binding = session.io_binding()
    for name, arr in feeds.items():
        binding.bind_input(name, "cpu", 0, arr.dtype, list(arr.shape), arr.ctypes.data)
    outputs = {}
    for out in session.get_outputs():
        shape = [1 if isinstance(d, str) else d for d in out.shape]
        dtype = np.float32 if "float)" in out.type else np.float16
        outputs[out.name] = np.empty(shape, dtype)
        arr = outputs[out.name]
        binding.bind_output(out.name, "cpu", 0, arr.dtype, list(arr.shape), arr.ctypes.data)
    def run():  # keeps feeds and outputs alive: the binding holds raw pointers into them
        session.run_with_iobinding(binding)
        return feeds, outputs

    return run


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
    parser.add_argument("--iobinding", type=int, default=1)
    parser.add_argument("--filled", type=int, default=64, help="occupied KV slots before the step")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--disable", nargs="*", default=[], help="onnxruntime optimizer names to disable")
    parser.add_argument("--save-optimized", type=Path, help="write the optimized graph here")
    args = parser.parse_args()
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        opts, disabled = session_options(args.threads, args.opt, bool(args.spin), tmp if args.profile else None, args.disable)
        if args.save_optimized:
            opts.optimized_model_filepath = str(args.save_optimized)
        session = ort.InferenceSession(str(args.bundle / manifest["graph"]["onnx"]), opts,
                                       providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
        run = step_runner(session, decode_feeds(manifest, args.filled), bool(args.iobinding))
        times = time_steps(run, args.steps)
        result = {
            "bundle": str(args.bundle), "threads": args.threads, "opt": args.opt, "spin": args.spin,
            "iobinding": args.iobinding, "filled": args.filled, "kv_len": manifest["graph"]["kv_len"],
            "decode_ms_median": round(statistics.median(times) * 1000, 3),
            "decode_ms_min": round(min(times) * 1000, 3),
        }
        if args.profile:
            result["profile"] = summarize_profile(session.end_profiling(), args.steps + 3)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

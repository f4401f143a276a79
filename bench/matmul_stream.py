"""How close onnxruntime's M=1 integer matmul gets to memory bandwidth when weights are cold.

A graph of `--count` independent MatMulInteger nodes (u8 x u8, zero points 128, as the `u8u8`
dialect writes them), each with its own [K,N] weight, all reading one [1,K] activation. The
weights total far more than the last-level cache, so every step streams them from memory, as a
decode step does. Reports ms per step and effective GB/s over the weight bytes. Prints JSON.
Run: python bench/matmul_stream.py [--k 2048] [--n 5632] [--count 24] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def stream_graph(k: int, n: int, count: int, float_weights: bool):
    """`count` matmuls of one [1,K] input against distinct [K,N] weights (uint8, or float32)."""
    rng = np.random.default_rng(0)
    nodes, inits, outputs = [], [], []
    if float_weights:
        elem, zp = TensorProto.FLOAT, []
    else:
        elem = TensorProto.UINT8
        inits.append(numpy_helper.from_array(np.array(128, np.uint8), "zp"))
        zp = ["zp", "zp"]
    for i in range(count):
        if float_weights:
            w = rng.standard_normal((k, n), dtype=np.float32)
        else:
            w = rng.integers(1, 256, (k, n), dtype=np.uint8)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        op = "MatMul" if float_weights else "MatMulInteger"
        nodes.append(helper.make_node(op, ["a", f"w{i}", *zp], [f"y{i}"]))
        out_type = TensorProto.FLOAT if float_weights else TensorProto.INT32
        outputs.append(helper.make_tensor_value_info(f"y{i}", out_type, [1, n]))
    graph = helper.make_graph(nodes, "stream", [helper.make_tensor_value_info("a", elem, [1, k])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=2048)
    parser.add_argument("--n", type=int, default=5632)
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--float", action="store_true", help="fp32 MatMul instead (4 bytes per weight)")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    model = stream_graph(args.k, args.n, args.count, args.float)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    dtype = np.float32 if args.float else np.uint8
    feeds = {"a": np.random.default_rng(1).integers(1, 256, (1, args.k)).astype(dtype)}
    for _ in range(3):
        session.run(None, feeds)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    weight_bytes = args.k * args.n * args.count * (4 if args.float else 1)
    print(json.dumps({
        "op": "MatMul fp32" if args.float else "MatMulInteger u8u8", "k": args.k, "n": args.n,
        "count": args.count, "threads": args.threads, "ms_per_step": round(step * 1000, 3),
        "ms_per_matmul": round(step * 1000 / args.count, 4), "weight_gb_s": round(weight_bytes / step / 1e9, 2),
    }))


if __name__ == "__main__":
    main()

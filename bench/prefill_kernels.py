"""Time one linear layer of a prefill chunk on onnxruntime's CPU kernels, one graph per kernel.

For M rows of a [K] activation against one [K,N] weight: `MatMulNBits` as the `nbits8` dialect
writes it (8-bit, accuracy_level 4, the block host/nbits.py picks), `MatMulInteger` u8 x u8 with
zero points 128 as `u8u8` writes it (without its per-token quantize and rescale nodes), and fp32
`MatMul`. Min over `--steps` runs after warm-up; prints one JSON line per M with ms and ms per row.
Why: a prefill is compute-bound, so the kernel's speed at M > 1 decides it (README, Measured).
Run: python bench/prefill_kernels.py [--k 2048] [--n 5632] [--m 1,16,64] [--threads 2]
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from host.nbits import block_for
from profile_decode import time_steps  # the sibling script's timing loop (run as python bench/prefill_kernels.py)


def kernel_graph(kernel: str, m: int, k: int, n: int, rng: np.random.Generator):
    """(model, input dtype): one node of `kernel` with random weights of its layout."""
    if kernel == "MatMulNBits":
        block = block_for(k)
        weights = [numpy_helper.from_array(rng.integers(0, 256, (n, k // block, block), dtype=np.uint8), "w"),
                   numpy_helper.from_array((rng.random(n * (k // block)) * 0.01).astype(np.float32), "s")]
        node = helper.make_node("MatMulNBits", ["a", "w", "s"], ["y"], domain="com.microsoft", K=k, N=n, bits=8,
                                block_size=block, accuracy_level=4)
        elem, out = TensorProto.FLOAT, TensorProto.FLOAT
    elif kernel == "MatMulInteger":
        weights = [numpy_helper.from_array(rng.integers(0, 256, (k, n), dtype=np.uint8), "w"),
                   numpy_helper.from_array(np.array(128, np.uint8), "zp")]
        node = helper.make_node("MatMulInteger", ["a", "w", "zp", "zp"], ["y"])
        elem, out = TensorProto.UINT8, TensorProto.INT32
    else:
        weights = [numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "w")]
        node = helper.make_node("MatMul", ["a", "w"], ["y"])
        elem, out = TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph([node], kernel, [helper.make_tensor_value_info("a", elem, [m, k])],
                              [helper.make_tensor_value_info("y", out, [m, n])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    return model, (np.uint8 if elem == TensorProto.UINT8 else np.float32)


def time_kernel(kernel: str, m: int, k: int, n: int, threads: int, steps: int) -> float:
    """Fastest of `steps` runs, in ms."""
    rng = np.random.default_rng(0)
    model, dtype = kernel_graph(kernel, m, k, n, rng)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {"a": rng.integers(1, 256, (m, k)).astype(dtype) if dtype == np.uint8 else rng.standard_normal((m, k), dtype=dtype)}
    return min(time_steps(lambda: session.run(None, feeds), steps)) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=2048)
    parser.add_argument("--n", type=int, default=5632)
    parser.add_argument("--m", default="1,16,64", help="comma-separated row counts (chunk lengths)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    for m in (int(v) for v in args.m.split(",")):
        ms = {kernel: time_kernel(kernel, m, args.k, args.n, args.threads, args.steps)
              for kernel in ("MatMulNBits", "MatMulInteger", "MatMul")}
        print(json.dumps({"k": args.k, "n": args.n, "m": m, "threads": args.threads,
                          "ms": {kk: round(v, 3) for kk, v in ms.items()},
                          "ms_per_row": {kk: round(v / m, 4) for kk, v in ms.items()}}))


if __name__ == "__main__":
    main()

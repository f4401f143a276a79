"""Bytes the acl backend moves between the board's memory and the NPU's buffers per step, from the graph.

    python bench/npu_traffic.py                       # TinyLlama-1.1B shapes, KV 1024, fp16 and fp32 caches
    python bench/npu_traffic.py --bundle DIR          # a bundle's own graph

Counts what board/backends/acl.py copies per `forward`: every input, then the logits it reads (the last
row when the engine wants only that) and present_key_values. On the 310B the application runs on the
NPU's own Arm cores (ACL run mode "device", shared memory): the cache is the model's input buffer and
is not copied; with a separate host ("host" run mode) the whole cache goes to the device every step.
Prints one JSON line per (cache dtype, chunk size).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from board.manifest import Arch, Graph, load_manifest  # noqa: E402

# TinyLlama-1.1B-Chat-v1.0's config.json
TINYLLAMA = Arch(num_layers=22, num_heads=32, num_kv_heads=4, head_dim=64, hidden_size=2048, intermediate_size=5632,
                 vocab_size=32000, rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=2048)


def spec_bytes(spec, kv_len: int, s: int) -> int:
    """Bytes of one TensorSpec at chunk size s ("S", "N" -> s; "KV+S" -> kv_len + s)."""
    dims = [s if d in ("S", "N") else kv_len + s if d == f"{kv_len}+S" else int(d) for d in spec.shape]
    return int(np.prod(dims)) * np.dtype(spec.dtype).itemsize


def step_traffic(graph: Graph, s: int, shared: bool, last_only: bool = True) -> dict:
    """{"to_device", "from_device", "total"} bytes of one forward of s tokens through the acl backend."""
    inputs = {t.name: spec_bytes(t, graph.kv_len, s) for t in graph.inputs}
    outputs = {t.name: spec_bytes(t, graph.kv_len, s) for t in graph.outputs}
    if shared:
        inputs.pop("past_key_values")  # the cache lives in the model's input buffer
    if last_only:
        outputs["logits"] //= s
    to_device, from_device = sum(inputs.values()), sum(outputs.values())
    return {"to_device": to_device, "from_device": from_device, "total": to_device + from_device}


def ascend_graph(arch: Arch, kv_len: int, kv_dtype: str) -> Graph:
    """The --target ascend graph's specs for these shapes, as the host writes them (host/export.py)."""
    import torch

    from host.export import graph_specs

    model = SimpleNamespace(arch=arch, kv_dtype={"float16": torch.float16, "float32": torch.float32}[kv_dtype])
    inputs, outputs = graph_specs(model, kv_len)
    return Graph(kv_len=kv_len, kv_dtype=kv_dtype, prefill_chunks=[1, 16, 64], inputs=inputs, outputs=outputs,
                 onnx="model.onnx")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, help="a bundle directory (default: TinyLlama shapes)")
    p.add_argument("--kv-len", type=int, default=1024)
    args = p.parse_args(argv)
    if args.bundle:
        m = load_manifest(args.bundle)
        graphs = {m.graph.kv_dtype: (m.arch, m.graph)}
    else:
        graphs = {dt: (TINYLLAMA, ascend_graph(TINYLLAMA, args.kv_len, dt)) for dt in ("float16", "float32")}
    for kv_dtype, (arch, graph) in graphs.items():
        for s in sorted(set(graph.prefill_chunks) | {1}):
            print(json.dumps({"kv_dtype": kv_dtype, "kv_len": graph.kv_len, "chunk": s,
                              "device_mode": step_traffic(graph, s, shared=True),
                              "host_mode": step_traffic(graph, s, shared=False)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

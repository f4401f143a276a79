"""ONNX export of an EdgeLlama (float or W8A8) with the fixed-KV signature of docs/design.md §3.

Uses the TorchScript exporter (`dynamo=False`), which emits the opset asked for (the dynamo exporter
emits 18 even when 17 is asked for, and ATC's parser documents ONNX 1.12-era opsets). The lowest
opset that expresses the graph is 11 (CumSum; measured: 10 fails to export): the Ascend default,
as ATC's support narrows with age. The onnxruntime target stays at 17, where its figures were measured. W8A8 matmuls reach
the graph as `MatMulInteger` through `IntegerMatMul.symbolic`. The sequence axis S is dynamic
(prefill chunks and decode share one graph); the KV length is static. Weights over
`EXTERNAL_DATA_BYTES` go to `model.onnx.data` (protobuf cannot hold 2 GB).
"""
from __future__ import annotations

import gc
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from board.backends.base import INPUT_NAMES, LOGITS_INDEX, OUTPUT_NAMES, layer_names
from board.manifest import Graph, TensorSpec
from host.errors import BuildError
from host.gqa import InplaceCacheGraph
from host.model import EdgeLlama

OPSET = 17  # onnxruntime target
MIN_OPSET, MAX_OPSET = 11, 18  # 11: the lowest that expresses the graph; 18: ATC's documented top
EXTERNAL_DATA_BYTES = 1_500_000_000
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16"}


@dataclass(frozen=True)
class ExportInfo:
    files: list  # bundle-relative names written: ["model.onnx"] (+ "model.onnx.data")
    opset: int
    initializer_bytes: int
    ops: dict  # op type -> count, e.g. {"MatMulInteger": 15, ...}


def graph_specs(model: EdgeLlama | InplaceCacheGraph, kv_len: int) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Manifest input and output TensorSpecs; "S" is the dynamic chunk length, "N" the rows given logits."""
    a = model.arch
    kv = _DTYPE_NAMES[model.kv_dtype]
    inputs = [TensorSpec(n, "int64", shape) for n, shape in zip(INPUT_NAMES, ([1, "S"], [1, f"{kv_len}+S"], [1, "S"]))]
    if isinstance(model, InplaceCacheGraph):
        layer = [1, a.num_kv_heads, kv_len, a.head_dim]
        inputs.append(TensorSpec(LOGITS_INDEX, "int64", ["N"]))
        inputs += [TensorSpec(n, kv, layer) for n in layer_names(INPUT_NAMES[3], a.num_layers)]
        outputs = [TensorSpec(OUTPUT_NAMES[0], "float32", [1, "N", a.vocab_size])]
        outputs += [TensorSpec(n, kv, layer) for n in layer_names(OUTPUT_NAMES[1], a.num_layers)]
    else:
        inputs.append(TensorSpec(INPUT_NAMES[3], kv, [2 * a.num_layers, a.num_kv_heads, kv_len, a.head_dim]))
        outputs = [TensorSpec(OUTPUT_NAMES[0], "float32", [1, "S", a.vocab_size]),
                   TensorSpec(OUTPUT_NAMES[1], kv, [2 * a.num_layers, a.num_kv_heads, "S", a.head_dim])]
    return inputs, outputs


def graph_record(model: EdgeLlama | InplaceCacheGraph, kv_len: int, prefill_chunks, exported: ExportInfo,
                 compute_dtype: str = "float32") -> Graph:
    """The manifest's description of an exported graph: what the board's Engine runs it by."""
    inputs, outputs = graph_specs(model, kv_len)
    return Graph(kv_len=kv_len, kv_dtype=inputs[-1].dtype, prefill_chunks=list(prefill_chunks), inputs=inputs,
                 outputs=outputs, onnx=exported.files[0], opset=exported.opset, compute_dtype=compute_dtype,
                 cache="inplace" if isinstance(model, InplaceCacheGraph) else "slots",
                 logits="index" if isinstance(model, InplaceCacheGraph) else "all",
                 max_positions=model.max_positions if model.max_positions < model.arch.max_position_embeddings else None)


def _set_io_shapes(proto, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
    """Write the manifest's shapes onto the graph's inputs/outputs (the tracer leaves some output dims unnamed)."""
    specs = {t.name: t for t in inputs + outputs}
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        for dim, size in zip(dims, specs[value.name].shape):
            if isinstance(size, int):
                dim.dim_value = size
            else:
                dim.dim_param = size


def example_inputs(model: EdgeLlama | InplaceCacheGraph, kv_len: int, seq: int = 2) -> tuple[torch.Tensor, ...]:
    """Tracing inputs: `seq` new tokens after `kv_len` empty slots (S > 1 so nothing specializes on 1)."""
    ids = torch.zeros(1, seq, dtype=torch.long)
    mask = torch.cat((torch.zeros(1, kv_len, dtype=torch.long), torch.ones(1, seq, dtype=torch.long)), dim=1)
    positions = torch.arange(seq, dtype=torch.long)[None]
    if isinstance(model, InplaceCacheGraph):
        return ids, mask, positions, torch.arange(seq, dtype=torch.long), *model.empty_cache(kv_len)
    return ids, mask, positions, model.empty_cache(kv_len)


def export_onnx(model: EdgeLlama | InplaceCacheGraph, out_dir: Path, kv_len: int, name: str = "model.onnx",
                opset: int = OPSET) -> ExportInfo:
    """Write `out_dir/name` (and `name.data` when large) at `opset`; return what was written."""
    out_dir = Path(out_dir)
    inputs, outputs = graph_specs(model, kv_len)
    # the chunk axis S of every input and output that has one
    dynamic_axes = {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)} for t in inputs + outputs}
    dynamic_axes = {n: axes for n, axes in dynamic_axes.items() if axes}
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export.") as tmp:
        raw = Path(tmp) / name
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about shape asserts; the graph is checked below
            torch.onnx.export(
                model,
                example_inputs(model, kv_len),
                str(raw),
                dynamo=False,
                opset_version=opset,
                input_names=[t.name for t in inputs],
                output_names=[t.name for t in outputs],
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
        gc.collect()
        proto = onnx.load(str(raw))  # pulls in any external tensors the exporter split out
    _set_io_shapes(proto, inputs, outputs)
    emitted = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    if emitted != [opset]:  # ATC rejects two imports of the default domain (E16005)
        raise BuildError(f"exported graph imports ai.onnx opset(s) {emitted}, expected exactly [{opset}]")
    size = sum(len(t.raw_data) for t in proto.graph.initializer)
    ops: dict[str, int] = {}
    for node in proto.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    files = [name]
    path = out_dir / name
    if size > EXTERNAL_DATA_BYTES:
        files.append(name + ".data")
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=name + ".data", size_threshold=1024)
        onnx.checker.check_model(str(path))
    else:
        onnx.checker.check_model(proto)
        onnx.save_model(proto, str(path))
    del proto
    gc.collect()
    return ExportInfo(files=files, opset=opset, initializer_bytes=size, ops=dict(sorted(ops.items())))

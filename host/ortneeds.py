"""What the written ONNX needs from onnxruntime, for the manifest's graph.min_onnxruntime / onnxruntime_ops.

Read back from the file the build wrote, so the record is what ships: each node's operator form
(the attributes and inputs that decide whether a release runs it), the graph's opset and IR version,
each looked up in board/ortneeds.py's measured table. A form the table lacks fails the build: an
unmeasured requirement would be a guess on every board.
"""
from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto

from board.ortneeds import OP_MIN_ORT, version_tuple
from host.errors import BuildError

_PLAIN_FORMS = ("DynamicQuantizeLinear", "SimplifiedLayerNormalization")  # plain ops with their own entry
_INT8_NAMES = {TensorProto.UINT8: "uint8", TensorProto.INT8: "int8"}


def _element_types(graph: onnx.GraphProto) -> dict:
    """Tensor name -> element type, for the names the file declares (initializers, value_info, Constant nodes)."""
    types = {t.name: t.data_type for t in graph.initializer}
    types.update({v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info]})
    types.update({n.output[0]: n.attribute[0].t.data_type for n in graph.node
                  if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    return types


def node_form(node: onnx.NodeProto, types: dict) -> str | None:
    """The table's name for what `node` asks of onnxruntime; None for a plain op (covered by the opset)."""
    if node.domain == "com.microsoft":
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        detail = {
            "MatMulNBits": f"(bits={attrs.get('bits', 4)})",
            "GroupQueryAttention": "(position_ids)" if len(node.input) > 9 and node.input[9] else "",
            "RotaryEmbedding": "(num_heads)" if "num_heads" in attrs else "",
        }.get(node.op_type, "")
        return f"com.microsoft.{node.op_type}{detail}"
    if node.domain not in ("", "ai.onnx"):
        return f"{node.domain}.{node.op_type}"
    if node.op_type == "MatMulInteger":  # the weight's type names the dialect: uint8 (u8u8) or int8 (s8s8)
        return f"MatMulInteger({_INT8_NAMES.get(types.get(node.input[1]), 'unknown type')})"
    return node.op_type if node.op_type in _PLAIN_FORMS else None


def onnxruntime_needs(onnx_path: Path) -> dict:
    """{operator form: lowest onnxruntime release that runs it} for the graph in `onnx_path`; BuildError on an unmeasured form."""
    proto = onnx.load(str(onnx_path), load_external_data=False)  # the graph's structure, not its weights
    types = _element_types(proto.graph)
    opsets = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    forms = {f"ai.onnx opset {v}" for v in opsets} | {f"ir_version {proto.ir_version}"}
    forms |= {form for form in (node_form(n, types) for n in proto.graph.node) if form}
    unknown = sorted(forms - OP_MIN_ORT.keys())
    if unknown:
        raise BuildError(f"{onnx_path}: no measured onnxruntime release runs {', '.join(unknown)}; measure the lowest "
                         "that does and add it to OP_MIN_ORT in board/ortneeds.py")
    return {form: OP_MIN_ORT[form] for form in sorted(forms)}


def min_release(needs: dict) -> str:
    """The highest release of `needs`: the lowest onnxruntime that runs every form in it."""
    return max(needs.values(), key=version_tuple)

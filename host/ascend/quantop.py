"""Ascend post-export pass: the Cast(to INT8) in front of each integer matmul becomes AscendQuant(scale=1, offset=0).

Both projects that ran W8A8 LLMs on a 310B (yinghuo302/ascend-llm and Tlntin/qwen-ascend-llm, export
change_node.py) make this swap before ATC because Ascend's float -> int8 Cast lost precision. Their graphs
cast unrounded fp16 values; ours casts values that Round and Clip(-127, 127) already made integers
(host/quantize.py), which AscendQuant's y = round(x * 1 + 0), saturated to int8, leaves exactly as they are:
the swap changes no number, only which Ascend kernel converts (a quantization op, not the Cast the
references had trouble with). Only that pattern is swapped; any other Cast to INT8 stays a Cast.

The node is in the ai.onnx domain, as ATC's parser registers it ("ai.onnx::<opset>::AscendQuant"), with
float scale and offset set explicitly: the parser takes a missing scale as 0.0. CANN 8.0 documents it
for opsets 8-16 (aolapi atlasoxol_09_0015). onnxruntime has no AscendQuant, so the pass is applied to the
copy handed to ATC (host/ascend/compile.py); the bundle's model.onnx stays the graph onnxruntime verified
and runs on the board's CPU fallback.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from host.ascend.opcheck import OpTable, constant_value
from host.errors import InputError

INT8_OPS = ("auto", "AscendQuant", "Cast")  # --int8-op: auto = AscendQuant where its opsets allow, else Cast
DEFAULT_INT8_OP = "auto"
INT8_MIN, INT8_MAX = -128, 127


@dataclass(frozen=True)
class QuantOpResult:
    op: str  # what converts to int8 in the graph ATC gets: "AscendQuant" or "Cast"
    replaced: int  # Cast nodes swapped for AscendQuant
    kept: int  # Cast(to INT8) nodes left as they are
    note: str = ""  # why Casts were kept, when they were

    def to_dict(self) -> dict:
        return {"int8_op": self.op, "replaced": self.replaced, "kept": self.kept, "note": self.note}


def _producers(graph: onnx.GraphProto) -> dict:
    return {out: node for node in graph.node for out in node.output}


def _consumers(graph: onnx.GraphProto, name: str) -> list:
    return [node for node in graph.node if name in node.input]


def is_int8_cast(node: onnx.NodeProto) -> bool:
    return node.op_type == "Cast" and node.domain in ("", "ai.onnx") and any(
        a.name == "to" and a.i == TensorProto.INT8 for a in node.attribute)


def already_integer(model: onnx.ModelProto, node: onnx.NodeProto, producers: dict, base_dir: Path) -> bool:
    """Whether `node`'s input is Clip(Round(x), lo, hi) with constant int8-range bounds: values AscendQuant keeps."""
    clip = producers.get(node.input[0])
    if clip is None or clip.op_type != "Clip" or len(clip.input) < 3 or not all(clip.input[1:3]):
        return False
    round_node = producers.get(clip.input[0])
    if round_node is None or round_node.op_type != "Round":
        return False
    bounds = [constant_value(model, name, base_dir) for name in clip.input[1:3]]
    return all(b is not None and b.size == 1 for b in bounds) and \
        INT8_MIN <= float(np.ravel(bounds[0])[0]) <= float(np.ravel(bounds[1])[0]) <= INT8_MAX


def ascend_quant_node(cast: onnx.NodeProto) -> onnx.NodeProto:
    """AscendQuant with the Cast's input, output and name; scale and offset explicit (the parser's default scale is 0)."""
    return helper.make_node("AscendQuant", list(cast.input), list(cast.output), name=cast.name or None,
                            scale=1.0, offset=0.0)


def swappable(model: onnx.ModelProto, base_dir: Path) -> list:
    """The Cast(to INT8) nodes whose output only feeds MatMulInteger and whose input is Round+Clip integers."""
    graph, producers = model.graph, _producers(model.graph)
    found = []
    for node in graph.node:
        consumers = _consumers(graph, node.output[0]) if is_int8_cast(node) else []
        if consumers and all(c.op_type == "MatMulInteger" for c in consumers) and \
                already_integer(model, node, producers, base_dir):
            found.append(node)
    return found


def apply(model: onnx.ModelProto, choice: str, base_dir: Path, table: OpTable | None = None) -> QuantOpResult:
    """Swap the model's swappable Casts for AscendQuant in place, as `choice` (INT8_OPS) asks."""
    if choice not in INT8_OPS:
        raise InputError(f"unknown --int8-op {choice!r}: use one of {', '.join(INT8_OPS)}")
    casts = [n for n in model.graph.node if is_int8_cast(n)]
    targets = swappable(model, base_dir)
    opset = next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), None)
    opsets = (table or OpTable.load()).ascend_ops["AscendQuant"]["opsets"]
    if choice == "Cast" or not targets:
        return QuantOpResult("Cast", 0, len(casts))
    if choice == "auto" and opset not in opsets:
        return QuantOpResult("Cast", 0, len(casts), f"AscendQuant is documented for opsets {opsets[0]}-{opsets[-1]}, "
                                                    f"the graph has {opset}: its Casts stay (rebuild with --opset 11)")
    swap = {id(n) for n in targets}
    nodes = [ascend_quant_node(n) if id(n) in swap else n for n in model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return QuantOpResult("AscendQuant", len(targets), len(casts) - len(targets))


def write_for_atc(onnx_path: Path, out_dir: Path, choice: str) -> tuple[Path, QuantOpResult]:
    """The directory holding the graph ATC should read: `onnx_path`'s own when nothing changes, else `out_dir`
    with the rewritten graph and its external data file beside it (a hard link where possible)."""
    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path), load_external_data=False)  # tensors stay in model.onnx.data, untouched
    result = apply(model, choice, onnx_path.parent)
    if not result.replaced:
        return onnx_path.parent, result
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(out_dir / onnx_path.name))
    data = onnx_path.with_name(onnx_path.name + ".data")
    if data.exists():
        _link_or_copy(data, out_dir / data.name)
    return out_dir, result


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # the weights are not rewritten: no second copy of them on disk when it can be avoided
    except OSError:
        shutil.copyfile(src, dst)

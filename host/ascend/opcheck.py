"""Operator check: every op type of an ONNX graph against what ATC's ONNX parser accepts,
and the graph's inputs against the manifest.

Runs in seconds on the host, before any ATC run, so a user learns what ATC would reject
after an hour. The supported list is data (host/data/atc_onnx_ops.json, with its source).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

from board.manifest import Manifest
from host.errors import InputError

OPS_FILE = Path(__file__).parents[1] / "data" / "atc_onnx_ops.json"
DEFAULT_DOMAINS = ("", "ai.onnx")

SUPPORTED, PLUGIN, UNSUPPORTED = "supported", "plugin", "unsupported"
GE_DT_INT8 = 2  # ge::DataType's int8 (AscendQuant's dst_type), not ONNX's TensorProto.INT8 (3)
MAX_ND_RANK = 4  # ATC 23.0.RC2 / 8.0.RC1-RC2: ND inputs with dynamic dims support N <= 4


@dataclass(frozen=True)
class OpTable:
    """ATC's accepted ONNX ops: built-ins with one opset range, ops our plugin adds, and Ascend's own ops."""

    ops: frozenset
    opset_range: tuple
    plugin_ops: dict  # op type -> {"opsets": [...], "maps_to": ..., ...}
    source: dict
    ascend_ops: dict = field(default_factory=dict)  # op type -> {"opsets": [...], ...}: ATC parses them, onnxruntime not

    @classmethod
    def load(cls, path: Path = OPS_FILE) -> "OpTable":
        data = json.loads(Path(path).read_text())
        return cls(frozenset(data["ops"]), tuple(data["opset_range"]), data["plugin_ops"], data["source"],
                   data.get("ascend_ops", {}))


@dataclass(frozen=True)
class OpUse:
    domain: str
    op_type: str
    opset: int | None  # the graph's opset import for this domain
    count: int
    status: str  # supported | plugin | unsupported
    note: str = ""


@dataclass
class OpReport:
    model: str
    opset: int | None  # ai.onnx opset of the graph
    ops: list = field(default_factory=list)  # [OpUse]
    problems: list = field(default_factory=list)  # one line each, graph-level

    @property
    def unsupported(self) -> list:
        return [u for u in self.ops if u.status == UNSUPPORTED]

    @property
    def needs_plugin(self) -> list:
        return [u for u in self.ops if u.status == PLUGIN]

    @property
    def ok(self) -> bool:
        return not self.unsupported and not self.problems

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "opset": self.opset,
            "ok": self.ok,
            "needs_plugin": sorted(u.op_type for u in self.needs_plugin),
            "unsupported": sorted(u.op_type for u in self.unsupported),
            "problems": list(self.problems),
            "ops": [u.__dict__ for u in self.ops],
        }

    def verdict(self) -> str:
        """One line: pass or fail, with the counts behind it."""
        def nodes(ops) -> str:
            n = sum(u.count for u in ops)
            return f"{n} node{'s' * (n != 1)}"

        if self.ok:
            plugin = f"; {', '.join(sorted(u.op_type for u in self.needs_plugin))} through the edge_llm plugin" \
                if self.needs_plugin else ""
            return f"check: pass: ATC parses all {len(self.ops)} op types ({nodes(self.ops)}){plugin}"
        bad = self.unsupported
        problems = f", {len(self.problems)} graph problem{'s' * (len(self.problems) != 1)}" if self.problems else ""
        return f"check: fail: ATC would reject {len(bad)} of {len(self.ops)} op types ({nodes(bad)}){problems}"

    def summary(self) -> str:
        """A few lines for people: counts, then every op that needs attention."""
        lines = [f"{self.model}: opset {self.opset}, {len(self.ops)} op types, "
                 f"{sum(u.count for u in self.ops)} nodes"]
        for u in self.ops:
            if u.status != SUPPORTED:
                lines.append(f"  {u.status:11s} {u.domain or 'ai.onnx'}::{u.op_type} x{u.count}: {u.note}")
        lines += [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)


def iter_nodes(graph: onnx.GraphProto):
    """Every node, including those inside If/Loop/Scan bodies."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from iter_nodes(g)


def constant_value(model: onnx.ModelProto, name: str, base_dir: Path) -> np.ndarray | None:
    """The value of `name` when it is an initializer or a Constant node's output, else None."""
    for t in model.graph.initializer:
        if t.name == name:
            if external_data_helper.uses_external_data(t):
                external_data_helper.load_external_data_for_tensor(t, str(base_dir))
            return numpy_helper.to_array(t)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
    return None


def _matmulinteger_problem(model: onnx.ModelProto, node: onnx.NodeProto, base_dir: Path) -> str | None:
    """Why our plugin cannot map this MatMulInteger node, or None when it can.

    The plugin maps inputs A,B onto BatchMatMulV2 x1,x2; a zero-point input would land on
    BatchMatMulV2's bias slot, so only absent or constant all-zero zero points are accepted.
    """
    for slot, name in enumerate(node.input[2:4], start=2):
        if not name:
            continue
        zp = constant_value(model, name, base_dir)
        if zp is None or np.any(zp != 0):
            value = "not a constant" if zp is None else f"{zp.ravel()[0]} ({zp.dtype})"
            return (f"node {node.name or node.output[0]}: zero point input {slot} ({name}) is {value}, not 0; "
                    "the Ascend plugin needs the s8s8 dialect (build with --target ascend)")
    for name in node.input[:2]:
        t = constant_value(model, name, base_dir) if name else None
        if t is not None and t.dtype == np.uint8:
            return (f"node {node.name or node.output[0]}: uint8 operand {name} (u8u8 onnxruntime dialect); "
                    "the Ascend plugin needs the s8s8 dialect (build with --target ascend)")
    return None


def _clip_problem(node) -> str | None:
    """A Clip without both bounds: some ATC releases' Clip parsers need both, or cast a missing one to fp32."""
    bounds = list(node.input[1:3]) + [""] * (3 - len(node.input))
    missing = [side for side, name in zip(("min", "max"), bounds) if not name]
    if missing and not any(a.name in ("min", "max") for a in node.attribute):  # opset < 11 keeps them as attributes
        return (f"node {node.name or node.output[0]}: Clip without a {' or '.join(missing)} bound; "
                "export Max/Min with a constant (torch.maximum/minimum) or both bounds, then rebuild")
    return None


def _ascend_quant_problem(node) -> str | None:
    """An AscendQuant ATC would build wrongly: scale or offset not a float (the parser then uses 0.0, and a zero
    scale zeroes every activation), or an output type other than int8 (dst_type 2, all the 310B takes)."""
    attrs = {a.name: a for a in node.attribute}
    name = node.name or node.output[0]
    missing = [k for k in ("scale", "offset") if k not in attrs or attrs[k].type != onnx.AttributeProto.FLOAT]
    if missing:
        return (f"node {name}: AscendQuant without a float {' and '.join(missing)} attribute; ATC's parser would "
                "take 0.0; compile again (host/ascend/quantop.py writes scale=1.0, offset=0.0)")
    if "dst_type" in attrs and attrs["dst_type"].i != GE_DT_INT8:
        return f"node {name}: AscendQuant dst_type {attrs['dst_type'].i}; the 310B quantizes to int8 only (dst_type 2)"
    return None


def check_model(path: Path, table: OpTable | None = None) -> OpReport:
    """List every (domain, op type) of the ONNX file with its ATC status."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no ONNX file; build the bundle first (`python -m host build`)")
    table = table or OpTable.load()
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises its own DecodeError; name the file either way
        raise InputError(f"{path}: not a readable ONNX model ({e}); rebuild the bundle") from None
    opsets = {imp.domain: imp.version for imp in model.opset_import}
    opset = opsets.get("", opsets.get("ai.onnx"))
    report = OpReport(model=str(path), opset=opset)
    default_imports = sorted(imp.version for imp in model.opset_import if imp.domain in DEFAULT_DOMAINS)
    if len(default_imports) > 1:
        report.problems.append(
            f"{len(default_imports)} opset imports for the default ONNX domain (versions {default_imports}); ATC "
            "accepts one (error E16005): rebuild the bundle, or merge them with onnx.version_converter"
        )
    lo, hi = table.opset_range
    if opset is None or not lo <= opset <= hi:
        report.problems.append(
            f"ai.onnx opset {opset} is outside ATC's documented range v{lo}-v{hi}; re-export at opset {hi} or lower"
        )
    if model.functions:
        names = sorted({f"{f.domain}::{f.name}" for f in model.functions})
        report.problems.append(f"model-local ONNX functions {names}: ATC does not expand them; inline with onnx.inliner")

    counts = Counter((n.domain, n.op_type) for n in iter_nodes(model.graph))
    notes: dict[tuple, str] = {}
    for node in iter_nodes(model.graph):
        key = (node.domain, node.op_type)
        if node.domain not in DEFAULT_DOMAINS or key in notes:
            continue
        if node.op_type == "MatMulInteger":
            problem = _matmulinteger_problem(model, node, path.parent)
        elif node.op_type == "Clip":
            problem = _clip_problem(node)
        elif node.op_type == "AscendQuant":
            problem = _ascend_quant_problem(node)
        else:
            continue
        if problem:
            notes[key] = problem
    for (domain, op_type), count in sorted(counts.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        op_opset = opsets.get(domain, opset if domain in DEFAULT_DOMAINS else None)
        status, note = _status(table, domain, op_type, op_opset)
        if (domain, op_type) in notes:
            status, note = UNSUPPORTED, notes[(domain, op_type)]
        report.ops.append(OpUse(domain, op_type, op_opset, count, status, note))
    return report


def _status(table: OpTable, domain: str, op_type: str, opset: int | None) -> tuple[str, str]:
    if domain not in DEFAULT_DOMAINS:
        return UNSUPPORTED, f"domain {domain!r} is not parsed by ATC (only ai.onnx)"
    if op_type in table.plugin_ops:
        info = table.plugin_ops[op_type]
        if opset not in info["opsets"]:
            return UNSUPPORTED, f"plugin registers opsets {info['opsets']}, graph has {opset}"
        return PLUGIN, f"needs the custom plugin ({info['plugin']}) -> {info['maps_to']}"
    if op_type in table.ascend_ops:
        opsets = table.ascend_ops[op_type]["opsets"]
        if opset not in opsets:
            return UNSUPPORTED, (f"ATC parses {op_type} at opsets {opsets[0]}-{opsets[-1]}, the graph has {opset}: rebuild "
                                 "with --opset 11, or compile with --int8-op Cast")
        return SUPPORTED, ""
    if op_type in table.ops:
        return SUPPORTED, ""
    return UNSUPPORTED, "not in ATC's ONNX operator list"


def check_graph_inputs(onnx_path: Path, manifest: Manifest) -> None:
    """The manifest's input names and ranks must be the ONNX graph's, or ATC rejects the shapes."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    actual = {i.name: len(i.type.tensor_type.shape.dim) for i in graph.input if i.name not in initializers}
    expected = {t.name: len(t.shape) for t in manifest.graph.inputs}
    if actual != expected:
        raise InputError(
            f"{onnx_path}: graph inputs {actual} do not match the manifest's {expected}; rebuild the bundle"
        )
    # the .om takes its chunk sizes as --dynamic_dims gears, and ATC's docs limit ND inputs to rank 4 then
    too_deep = {name: rank for name, rank in actual.items() if rank > MAX_ND_RANK}
    if too_deep:
        raise InputError(f"{onnx_path}: inputs {too_deep} have rank > {MAX_ND_RANK}, which ATC refuses with "
                         "--dynamic_dims (bundle format < 7); rebuild the bundle with this host")

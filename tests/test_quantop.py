"""host/ascend/quantop.py: Cast(to int8) after Round+Clip -> AscendQuant(scale=1, offset=0) in the graph ATC reads,
the op check on the result, and the stand-in ATC parsing AscendQuant only where ATC registers it."""
from __future__ import annotations

import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from host.ascend.opcheck import SUPPORTED, UNSUPPORTED, check_model
from host.ascend.quantop import write_for_atc
from host.errors import InputError
from tests.support.compile_bundles import FAKE_BIN
from tests.support.onnx_graphs import tiny_llm_onnx

pytestmark = pytest.mark.cann_double  # AscendQuant's semantics and the stand-in ATC are ours, from CANN's docs


class AscendQuant(OpRun):
    """CANN's documented AscendQuant: y = round(x * scale + offset), saturated to int8 (ties away from zero,
    the other common rounding: the graphs' Round+Clip must make the choice irrelevant)."""

    op_domain = ""

    def _run(self, x, scale=None, offset=None, sqrt_mode=None, round_mode=None, dst_type=None):
        y = x.astype(np.float64) * scale + offset
        return (np.clip(np.sign(y) * np.floor(np.abs(y) + 0.5), -128, 127).astype(np.int8),)


def feeds(s=3, kv_len=64, seed=1):
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, 32, (1, s)), "attention_mask": np.ones((1, kv_len + s), np.int64),
            "position_ids": np.arange(s)[None], "past_key_values": np.zeros((10, 4, kv_len, 8), np.float32)}


def graph(path, opset):
    """tiny_llm_onnx at `path` (its directory made), one W8A8 matmul behind Div, Round, Clip(-127, 127), Cast."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return tiny_llm_onnx(path, opset=opset)


def attrs(node) -> dict:
    return {a.name: (a.type, helper.get_attribute_value(a)) for a in node.attribute}


def test_the_cast_after_round_and_clip_becomes_ascend_quant_in_a_copy(tmp_path):
    src = graph(tmp_path / "bundle" / "model.onnx", 11)
    before = src.read_bytes()
    graph_dir, result = write_for_atc(src, tmp_path / "graph", "auto")
    assert graph_dir == tmp_path / "graph" and src.read_bytes() == before  # onnxruntime's graph is untouched
    assert result.to_dict() == {"int8_op": "AscendQuant", "replaced": 1, "kept": 0, "note": ""}
    nodes = onnx.load(str(graph_dir / "model.onnx")).graph.node
    (quant,) = [n for n in nodes if n.op_type == "AscendQuant"]
    assert (quant.domain, list(quant.input), list(quant.output)) == ("", ["h_clip"], ["h_q"])
    assert attrs(quant) == {"scale": (onnx.AttributeProto.FLOAT, 1.0), "offset": (onnx.AttributeProto.FLOAT, 0.0)}
    assert [helper.get_attribute_value(n.attribute[0]) for n in nodes if n.op_type == "Cast"] == [TensorProto.FLOAT]
    report = check_model(graph_dir / "model.onnx")
    assert report.ok and {u.op_type: u.status for u in report.ops}["AscendQuant"] == SUPPORTED


def test_the_swap_changes_no_number(tmp_path):
    """The rewritten graph, run with the documented AscendQuant, gives onnxruntime's logits on the original."""
    src = graph(tmp_path / "bundle" / "model.onnx", 11)
    graph_dir, _ = write_for_atc(src, tmp_path / "graph", "auto")
    x = feeds()
    (want,) = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(["logits"], x)
    got = ReferenceEvaluator(str(graph_dir / "model.onnx"), new_ops=[AscendQuant]).run(["logits"], x)[0]
    np.testing.assert_array_equal(got, want)


def test_a_cast_of_unrounded_values_stays_a_cast(tmp_path):
    """AscendQuant would round where the Cast truncates: only Round+Clip outputs are swapped."""
    src = graph(tmp_path / "bundle" / "model.onnx", 11)
    model = onnx.load(str(src))
    cast = next(n for n in model.graph.node if n.op_type == "Cast" and n.output[0] == "h_q")
    cast.input[0] = "h_div"  # straight from the Div: fractional values
    onnx.save(model, str(src))
    graph_dir, result = write_for_atc(src, tmp_path / "graph", "auto")
    assert graph_dir == src.parent and (result.op, result.replaced, result.kept) == ("Cast", 0, 1)


def test_above_ascend_quants_opsets_auto_keeps_the_cast_and_forcing_it_fails_the_op_check(tmp_path):
    src = graph(tmp_path / "bundle" / "model.onnx", 17)
    graph_dir, result = write_for_atc(src, tmp_path / "auto", "auto")
    assert graph_dir == src.parent and result.op == "Cast" and "opsets 8-16, the graph has 17" in result.note
    graph_dir, result = write_for_atc(src, tmp_path / "forced", "AscendQuant")
    assert result.replaced == 1
    quant = {u.op_type: u for u in check_model(graph_dir / "model.onnx").ops}["AscendQuant"]
    assert quant.status == UNSUPPORTED and "opsets 8-16, the graph has 17" in quant.note
    assert write_for_atc(src, tmp_path / "cast", "Cast")[1].op == "Cast"
    with pytest.raises(InputError, match="--int8-op"):
        write_for_atc(src, tmp_path / "bad", "QuantizeLinear")


@pytest.mark.parametrize("node, problem", [
    (helper.make_node("AscendQuant", ["h_clip"], ["h_q"], offset=0.0), "without a float scale"),
    (helper.make_node("AscendQuant", ["h_clip"], ["h_q"], scale=1, offset=0), "without a float scale and offset"),
    (helper.make_node("AscendQuant", ["h_clip"], ["h_q"], scale=1.0, offset=0.0, dst_type=3), "int8 only"),
    (helper.make_node("AscendQuant", ["h_clip"], ["h_q"], scale=1.0, offset=0.0, domain="ascend"), "domain"),
])
def test_the_op_check_refuses_an_ascend_quant_atc_would_build_wrongly(tmp_path, node, problem):
    src = tiny_llm_onnx(tmp_path / "model.onnx", opset=11)
    model = onnx.load(str(src))
    i = next(i for i, n in enumerate(model.graph.node) if n.op_type == "Cast" and n.output[0] == "h_q")
    model.graph.node[i].CopyFrom(node)
    if node.domain:
        model.opset_import.append(helper.make_opsetid(node.domain, 1))
    onnx.save(model, str(src))
    report = check_model(src)
    assert not report.ok and problem in {u.op_type: u for u in report.ops}["AscendQuant"].note


def test_the_stand_in_atc_parses_ascend_quant_only_at_its_registered_opsets(tmp_path, fake_atc_env):
    src = graph(tmp_path / "bundle" / "model.onnx", 17)
    graph_dir, _ = write_for_atc(src, tmp_path / "graph", "AscendQuant")
    argv = [str(FAKE_BIN / "atc"), f"--model={graph_dir / 'model.onnx'}", "--framework=5",
            f"--output={tmp_path / 'model'}", "--soc_version=Ascend310B1"]
    p = subprocess.run(argv, capture_output=True, text=True)
    assert p.returncode == 1 and "optype [ai.onnx::17::AscendQuant]" in p.stderr
    graph_dir, _ = write_for_atc(graph(tmp_path / "b11" / "model.onnx", 11), tmp_path / "g11", "auto")
    argv[1] = f"--model={graph_dir / 'model.onnx'}"
    p = subprocess.run(argv, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    ops = (tmp_path / "model.om").read_text().splitlines()[-1]
    assert ops.startswith("ops=") and "AscendQuant" in ops.split("=")[1].split(",")

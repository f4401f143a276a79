"""host/ascend/opcheck.py: every op of a graph against ATC's ONNX list, plugin ops, dialect problems."""
from __future__ import annotations

import json

import onnx
import pytest
from onnx import helper

from host.ascend.opcheck import OPS_FILE, PLUGIN, SUPPORTED, UNSUPPORTED, OpTable, check_model
from host.errors import InputError
from tests.support.bundles import build_test_bundle
from tests.support.onnx_graphs import tiny_llm_onnx


def _status(report, op_type):
    return {u.op_type: u for u in report.ops}[op_type]


# --- the data file -------------------------------------------------------------------------
def test_data_file_records_its_source_and_covers_the_llm_ops():
    data = json.loads(OPS_FILE.read_text())
    assert data["source"]["op_names_from"].startswith("https://www.hiascend.com/")
    assert data["opset_range"] == [8, 18]
    table = OpTable.load()
    for op in ("Gather", "MatMul", "Softmax", "Mul", "Cast", "Reshape", "Transpose", "Concat", "Where"):
        assert op in table.ops
    assert "MatMulInteger" not in table.ops and "MatMulInteger" in table.plugin_ops


# --- check_model -----------------------------------------------------------------------------
def test_s8s8_graph_is_ok_and_flags_matmulinteger_for_the_plugin(tmp_path):
    report = check_model(tiny_llm_onnx(tmp_path / "m.onnx"))
    assert report.ok and report.opset == 17
    assert [u.op_type for u in report.needs_plugin] == ["MatMulInteger"]
    assert _status(report, "MatMulInteger").status == PLUGIN
    assert _status(report, "Gather").status == SUPPORTED
    assert {u.op_type: u.count for u in report.ops}["Cast"] == 2
    d = report.to_dict()
    assert d["needs_plugin"] == ["MatMulInteger"] and d["unsupported"] == [] and d["ok"] is True


def test_explicit_zero_zero_points_are_accepted(tmp_path):
    report = check_model(tiny_llm_onnx(tmp_path / "m.onnx", dialect="s8s8_zp0"))
    assert report.ok and _status(report, "MatMulInteger").status == PLUGIN


def test_u8u8_onnxruntime_dialect_is_rejected_with_the_fix(tmp_path):
    report = check_model(tiny_llm_onnx(tmp_path / "m.onnx", dialect="u8u8"))
    mm = _status(report, "MatMulInteger")
    assert not report.ok and mm.status == UNSUPPORTED
    assert "zero point" in mm.note and "--target ascend" in mm.note


def test_unknown_op_and_foreign_domain_are_unsupported(tmp_path):
    extra = [
        helper.make_node("Det", ["logits"], ["det"]),  # listed: stays supported
        helper.make_node("Hardmax", ["logits"], ["hm"]),
        helper.make_node("Mish", ["logits"], ["mish"]),  # opset 18 op ATC's list lacks
        helper.make_node("SimplifiedLayerNormalization", ["logits", "embed"], ["ln"], domain="com.microsoft"),
    ]
    report = check_model(tiny_llm_onnx(tmp_path / "m.onnx", extra_nodes=extra, opset=18))
    assert sorted(u.op_type for u in report.unsupported) == ["Mish", "SimplifiedLayerNormalization"]
    assert "com.microsoft" in _status(report, "SimplifiedLayerNormalization").note
    assert "Mish" in report.summary() and not report.ok


def test_a_clip_without_both_bounds_is_unsupported_with_the_fix(tmp_path):
    floor = helper.make_node("Constant", [], ["floor"], value=helper.make_tensor("f", onnx.TensorProto.FLOAT, [], [1e-4]))
    one_sided = [floor, helper.make_node("Clip", ["logits", "floor"], ["clipped"], name="norm_floor")]
    report = check_model(tiny_llm_onnx(tmp_path / "m.onnx", extra_nodes=one_sided))
    clip = _status(report, "Clip")
    assert not report.ok and clip.status == UNSUPPORTED
    assert clip.note == ("node norm_floor: Clip without a max bound; export Max/Min with a constant "
                         "(torch.maximum/minimum) or both bounds, then rebuild")
    both = [floor, helper.make_node("Clip", ["logits", "floor", "floor"], ["clipped"])]
    assert check_model(tiny_llm_onnx(tmp_path / "ok.onnx", extra_nodes=both)).ok


def test_opset_outside_the_documented_range_is_a_problem(tmp_path):
    report = check_model(tiny_llm_onnx(tmp_path / "m.onnx", dialect="fp", opset=19))
    assert not report.ok
    assert report.problems == ["ai.onnx opset 19 is outside ATC's documented range v8-v18; re-export at opset 18 or lower"]


def test_two_opset_imports_for_the_default_domain_are_a_problem(tmp_path):
    path = tiny_llm_onnx(tmp_path / "m.onnx", opset=17)
    model = onnx.load(str(path))
    model.opset_import.append(helper.make_opsetid("ai.onnx", 18))  # what a merge of two exports can leave
    onnx.save(model, str(path))
    report = check_model(path)
    assert not report.ok and report.problems == [
        "2 opset imports for the default ONNX domain (versions [17, 18]); ATC accepts one (error E16005): "
        "rebuild the bundle, or merge them with onnx.version_converter"]
    assert check_model(tiny_llm_onnx(tmp_path / "ok.onnx", opset=17)).ok


def test_missing_or_corrupt_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no ONNX file"):
        check_model(tmp_path / "absent.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not a protobuf\xff" * 3)
    with pytest.raises(InputError, match="not a readable ONNX model"):
        check_model(bad)


# --- real exported graphs (tests/bundles.py runs the host pipeline on a tiny random Llama) ----
@pytest.fixture(scope="module")
def real_bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    bundles = {t: build_test_bundle(root / t, quant="w8a8", target=t) for t in ("ascend", "ort")}
    # static activation scales keep the onnxruntime target on u8u8 MatMulInteger (nbits8 quantizes at run time)
    return bundles | {"ort-static": build_test_bundle(root / "ort-static", quant="w8a8", act_scheme="static")}


def test_real_s8s8_export_passes_with_only_matmulinteger_needing_the_plugin(real_bundles):
    report = check_model(real_bundles["ascend"] / "model.onnx")
    assert report.ok, report.summary()
    assert [u.op_type for u in report.needs_plugin] == ["MatMulInteger"]
    assert _status(report, "MatMulInteger").count == 9  # 2 layers x 4 matmuls (fused q/k/v, o, fused gate/up, down) + lm_head
    assert {"Gather", "Softmax", "MatMul", "ReduceMean"} <= {u.op_type for u in report.ops if u.status == SUPPORTED}
    # fp16 RMSNorm and activation scales floor with Max (report.ok: every Clip has both bounds) and square
    # with Mul: no Pow for onnxruntime 1.23-1.25's SimplifiedLayerNormFusion to break on
    assert {"Max", "Clip"} <= {u.op_type for u in report.ops} and "Pow" not in {u.op_type for u in report.ops}


def test_real_nbits8_export_is_rejected_naming_the_contrib_domain(real_bundles):
    report = check_model(real_bundles["ort"] / "model.onnx")
    assert sorted(u.op_type for u in report.unsupported) == ["GroupQueryAttention", "MatMulNBits", "SkipSimplifiedLayerNormalization"]
    assert "domain 'com.microsoft' is not parsed by ATC" in _status(report, "MatMulNBits").note


def test_real_u8u8_export_is_rejected_naming_its_zero_point(real_bundles):
    report = check_model(real_bundles["ort-static"] / "model.onnx")
    assert sorted(u.op_type for u in report.unsupported) == ["GroupQueryAttention", "MatMulInteger", "SkipSimplifiedLayerNormalization"]
    assert "is 128 (uint8), not 0" in _status(report, "MatMulInteger").note

"""host.export: the ONNX graph has the docs/design.md §3 signature, a dynamic S, opset 17, and computes what torch computes."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from host import export
from host.calibrate import collect_input_absmax
from host.export import export_onnx, graph_record, graph_specs
from host.model import EdgeLlama
from host.quantize import quantize_model
from host.verify import engines
from tests.support.bundles import make_model


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield
KV = 24
LAYERS = 2


@pytest.fixture(scope="module")
def hf():
    return make_model(vocab=150, layers=LAYERS, seed=7, init_std=0.15)


@pytest.fixture(scope="module")
def fp_onnx(hf, tmp_path_factory):
    model = EdgeLlama.from_hf(hf)
    out = tmp_path_factory.mktemp("fp")
    return model, out / "model.onnx", export_onnx(model, out, KV)


def run_all(model, out_dir, info, tokens, prefill, **others):
    """Logits {"onnx", "torch", *others} per chunk, each on a board Engine: one prefill chunk, then single tokens."""
    runs = engines(out_dir, graph_record(model, KV, [1, prefill], info), {"torch": model} | others)
    chunks = [tokens[:prefill]] + [[t] for t in tokens[prefill:]]
    return [{name: e.feed(c, all_logits=True) for name, e in runs.items()} for c in chunks], runs["onnx"]


def test_fp32_graph_signature_opset_and_dynamic_axes(fp_onnx):
    model, path, info = fp_onnx
    proto = onnx.load(str(path))
    assert info.opset == 17 and [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert info.files == ["model.onnx"] and not path.with_name("model.onnx.data").exists()

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    got = {v.name: dims(v) for v in list(proto.graph.input) + list(proto.graph.output)}
    assert got == {
        "input_ids": [1, "S"],
        "attention_mask": [1, f"{KV}+S"],
        "position_ids": [1, "S"],
        "past_key_values": [2 * LAYERS, 2, KV, 16],  # rank 4: ATC's limit for ND inputs with dynamic dims
        "logits": [1, "S", 150],
        "present_key_values": [2 * LAYERS, 2, "S", 16],
    }
    inputs, outputs = graph_specs(model, KV)
    assert [(t.name, t.shape) for t in inputs + outputs] == [(k, v) for k, v in got.items()]


def test_fp32_graph_matches_torch_for_prefill_chunks_and_decode(fp_onnx):
    model, path, info = fp_onnx
    tokens = [1, 40, 7, 99, 12, 3, 140, 66, 5, 21, 8]
    for prefill in (1, 3, 7):
        steps, onnx_engine = run_all(model, path.parent, info, tokens, prefill)
        for logits in steps:
            np.testing.assert_allclose(logits["onnx"], logits["torch"], atol=2e-5, rtol=0)
        assert onnx_engine.cache.next_pos == len(tokens)


@pytest.mark.parametrize("dialect,code_type", [("u8u8", onnx.TensorProto.UINT8), ("s8s8", onnx.TensorProto.INT8)])
def test_w8a8_graph_uses_matmulinteger_with_the_dialects_weight_type(hf, tmp_path, dialect, code_type):
    fp = EdgeLlama.from_hf(hf)
    absmax = collect_input_absmax(fp, [torch.randint(0, 150, (1, 16))])
    model = quantize_model(hf, absmax, "dynamic", dialect)
    info = export_onnx(model, tmp_path, KV)
    proto = onnx.load(str(tmp_path / "model.onnx"))
    integer = [n for n in proto.graph.node if n.op_type == "MatMulInteger"]
    # per layer: fused q/k/v, o, fused gate/up, down; then lm_head
    assert info.ops["MatMulInteger"] == len(integer) == 4 * LAYERS + 1
    # only attention stays float: scores and weighted values, each against the cache and the new tokens
    assert info.ops["MatMul"] == 4 * LAYERS
    weights = {t.name: t for t in proto.graph.initializer}
    assert {weights[n.input[1]].data_type for n in integer} == {code_type}
    assert all(len(n.input) == (4 if dialect == "u8u8" else 2) for n in integer)
    # int8 weights: the graph is about a quarter of the fp32 one
    assert info.initializer_bytes < 0.4 * sum(p.numel() * 4 for p in hf.parameters())


def test_w8a8_graph_is_as_close_to_fp32_as_its_torch_twin(hf, tmp_path):
    fp = EdgeLlama.from_hf(hf)
    absmax = collect_input_absmax(fp, [torch.randint(0, 150, (1, 16))])
    model = quantize_model(hf, absmax, "static", "u8u8", smooth_alpha=0.5)
    info = export_onnx(model, tmp_path, KV)
    steps, _ = run_all(model, tmp_path, info, [1, 40, 7, 99, 12, 3, 140, 66], 5, fp32=fp)
    for x in steps:
        assert np.abs(x["onnx"] - x["fp32"]).max() <= 2 * np.abs(x["torch"] - x["fp32"]).max() + 1e-4
        assert (x["onnx"].argmax(-1) == x["torch"].argmax(-1)).all()


def test_large_graphs_put_weights_in_one_external_data_file(hf, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "EXTERNAL_DATA_BYTES", 0)
    model = EdgeLlama.from_hf(hf)
    info = export_onnx(model, tmp_path, KV)
    assert info.files == ["model.onnx", "model.onnx.data"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert (tmp_path / "model.onnx.data").stat().st_size > (tmp_path / "model.onnx").stat().st_size
    steps, _ = run_all(model, tmp_path, info, [1, 2, 3, 4], 3)
    for logits in steps:
        np.testing.assert_allclose(logits["onnx"], logits["torch"], atol=2e-5, rtol=0)

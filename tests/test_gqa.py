"""The onnxruntime graph with GroupQueryAttention (graph.cache "inplace"): it writes the board's KV cache in
place and computes what the plain PyTorch model computes, also across eviction."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from board.errors import BoardError
from board.kvcache import EMPTY
from host.calibrate import collect_input_absmax
from host.export import export_onnx, graph_record
from host.gqa import InplaceCacheGraph, gqa_fits
from host.model import EdgeLlama
from host.quantize import quantize_model
from host.verify import engines
from tests.support.bundles import make_model

KV = 16
LAYERS = 2
TOKENS = [1, 40, 7, 99, 12, 3, 140, 66, 5, 21, 8, 17, 2, 90, 31, 44, 120, 9, 10, 77, 63, 6, 14, 100, 51, 33]


@pytest.fixture(scope="module")
def fp():
    with torch.no_grad():
        yield EdgeLlama.from_hf(make_model(vocab=150, layers=LAYERS, seed=7, init_std=0.15))


def inplace_engines(model, tmp_path):
    """(onnxruntime engine on the exported inplace graph, PyTorch engine on the plain model), same Graph record."""
    graph_model = InplaceCacheGraph(model)
    with torch.no_grad():
        info = export_onnx(graph_model, tmp_path, KV)
    runs = engines(tmp_path, graph_record(graph_model, KV, [1, 4], info), {"torch": model})
    return runs["onnx"], runs["torch"], info


def test_inplace_graph_is_one_attention_node_per_layer_with_per_layer_caches(fp, tmp_path):
    _, _, info = inplace_engines(fp, tmp_path)
    assert info.ops["GroupQueryAttention"] == LAYERS
    # every residual add is fused into the norm after it; only the first layer's input norm has none
    assert info.ops["SkipSimplifiedLayerNormalization"] == 2 * LAYERS and info.ops["ReduceMean"] == 1
    for absent in ("Softmax", "Transpose", "Concat"):  # the plain attention's nodes are gone
        assert absent not in info.ops
    proto = onnx.load(str(tmp_path / "model.onnx"))
    names = [v.name for v in proto.graph.input] + [v.name for v in proto.graph.output]
    assert names == ["input_ids", "attention_mask", "position_ids", "logits_index", "past_key_values.0.key",
                     "past_key_values.0.value", "past_key_values.1.key", "past_key_values.1.value", "logits",
                     "present_key_values.0.key", "present_key_values.0.value", "present_key_values.1.key",
                     "present_key_values.1.value"]


def test_graph_writes_the_boards_cache_in_place_and_matches_torch_across_eviction(fp, tmp_path):
    onnx_engine, torch_engine, _ = inplace_engines(fp, tmp_path)
    # a 4-token chunk, single tokens, then more tokens than KV slots: evictions that move the cache
    chunks = [TOKENS[:4]] + [[t] for t in TOKENS[4:]]
    for i, chunk in enumerate(chunks):
        got, want = onnx_engine.feed(chunk, all_logits=True), torch_engine.feed(chunk, all_logits=True)
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=0, err_msg=f"chunk {i}")
        # the graph wrote its keys/values straight into the engine's array: the same bytes torch's commit copied
        used = onnx_engine.cache.used
        np.testing.assert_allclose(onnx_engine.cache.kv[..., :used, :], torch_engine.cache.kv[..., :used, :], atol=1e-5)
    assert onnx_engine.cache.next_pos == len(TOKENS) > KV
    slot_pos = onnx_engine.cache.slot_pos
    assert slot_pos[:4].tolist() == [0, 1, 2, 3]  # the sink (DEFAULT_SINK) stays; the rest is the recent window, in order
    held = slot_pos[slot_pos != EMPTY]
    assert held[-1] == len(TOKENS) - 1 and (np.diff(held) > 0).all()


def test_a_prefill_computes_logits_for_its_last_row_only_as_the_full_prefill_does(fp, tmp_path):
    onnx_engine, _, _ = inplace_engines(fp, tmp_path)
    assert onnx_engine.graph.logits == "index"
    every = onnx_engine.feed(TOKENS[:4], all_logits=True)
    onnx_engine.reset()
    backend, cache = onnx_engine.backend, onnx_engine.cache
    cache.reserve(4)
    mask, positions = cache.step_inputs(4)
    logits, _ = backend.forward(np.asarray([TOKENS[:4]]), mask, positions, cache.kv, last_only=True)
    assert logits.shape == (1, 1, 150)  # lm_head ran on one row, not four
    np.testing.assert_allclose(logits[0, 0], every[-1], atol=1e-5, rtol=0)


def test_w8a8_inplace_graph_greedy_tokens_equal_its_torch_twin(fp, tmp_path):
    absmax = collect_input_absmax(fp, [torch.randint(0, 150, (1, 16), generator=torch.Generator().manual_seed(0))])
    hf = make_model(vocab=150, layers=LAYERS, seed=7, init_std=0.15)
    with torch.no_grad():
        twin = quantize_model(hf, absmax, "dynamic", "nbits8").use_contrib_rope()
    onnx_engine, torch_engine, info = inplace_engines(twin, tmp_path)
    assert info.ops["MatMulNBits"] == 4 * LAYERS + 1  # fused q/k/v, o, fused gate/up, down; lm_head
    ids = {}
    for name, engine in (("onnx", onnx_engine), ("torch", torch_engine)):
        out, logits = [], engine.feed(TOKENS[:5])
        for _ in range(12):
            out.append(int(np.argmax(logits)))
            logits = engine.feed(out[-1:])
        ids[name] = out
    assert ids["onnx"] == ids["torch"]


def test_gqa_is_used_only_where_onnxruntimes_cpu_kernel_runs():
    assert gqa_fits(64, torch.float32, torch.float32)
    assert not gqa_fits(8, torch.float32, torch.float32)  # stories260K: head_dim 8
    assert not gqa_fits(64, torch.float16, torch.float32)


def test_a_graph_with_capped_rotary_tables_records_its_positions_and_the_board_stops_there(tmp_path, monkeypatch):
    monkeypatch.setattr("host.rotary.MAX_TABLE_BYTES", 2 * 40 * 8 * 4)  # tables of 40 positions at head_dim 16
    model = EdgeLlama.from_hf(make_model(vocab=150, layers=1, seed=3, max_position_embeddings=512))
    onnx_engine, _, _ = inplace_engines(model, tmp_path)
    assert onnx_engine.graph.max_positions == onnx_engine.max_positions == 40
    onnx_engine.feed(TOKENS[:4] + TOKENS + TOKENS[:10])  # 40 positions, through eviction (KV 16)
    with pytest.raises(BoardError, match="exceed the 0 positions left of the model's 40"):
        onnx_engine.feed([5])

"""host.quantize / host.smooth / host.calibrate: W8A8 numerics, checked against hand computations and onnxruntime."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from tests.support.bundles import make_model
from host.calibrate import collect_input_absmax, split_text
from host.errors import InputError
from host.model import FUSED_PROJECTIONS, PROJECTIONS, EdgeLlama
from host.quantize import (
    EPS,
    IntegerMatMul,
    W8A8Linear,
    quantize_activation_per_token_absmax,
    quantize_model,
    quantize_weight_per_channel_absmax,
    quantized_layer_count,
)
from host.quantize import LayerFloats, smooth_layer
from host.recipe import group_error, row_names, search_alphas
from host.smooth import SMOOTH_GROUPS, scales_from_absmax, weight_absmax


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


# --- the scheme, by hand --------------------------------------------------------------------
def test_weight_codes_and_scales_per_output_channel_by_hand():
    w = torch.tensor([[1.0, -0.5, 0.25], [0.0, 0.0, 0.0], [127.0, -63.5, 1.0]])
    q, scale = quantize_weight_per_channel_absmax(w)
    # scale = max|row| / 127; an all-zero row gets the floor instead of dividing by zero
    torch.testing.assert_close(scale, torch.tensor([1 / 127, EPS, 1.0]))
    # 1.0*127 = 127; -0.5*127 = -63.5 -> -64 (half to even); 0.25*127 = 31.75 -> 32
    assert q.dtype == torch.int8
    assert q.tolist() == [[127, -64, 32], [0, 0, 0], [127, -64, 1]]


def test_weight_dequantization_error_is_at_most_half_a_step():
    w = torch.randn(64, 48) * torch.rand(64, 1) * 3
    q, scale = quantize_weight_per_channel_absmax(w)
    err = (q.float() * scale[:, None] - w).abs()
    assert (err <= scale[:, None] / 2 + 1e-7).all()
    assert q.abs().amax(dim=1).eq(127).all()  # each row's largest weight uses the full range


def test_activation_scales_are_per_token():
    x = torch.tensor([[[0.5, -1.0, 0.25], [100.0, 3.0, -50.0]]])
    q, scale = quantize_activation_per_token_absmax(x)
    torch.testing.assert_close(scale, torch.tensor([[[1.0 / 127], [100.0 / 127]]]))
    # 0.5*127 = 63.5 -> 64; 0.25*127 = 31.75 -> 32; 3*1.27 = 3.81 -> 4; -50*1.27 = -63.5 -> -64
    assert q.tolist() == [[[64, -127, 32], [127, 4, -64]]]
    # a token's codes do not depend on the other tokens (unlike a per-tensor scale)
    q_alone, _ = quantize_activation_per_token_absmax(x[:, :1])
    assert q_alone.tolist() == q[:, :1].tolist()


def test_linear_output_equals_integer_matmul_rescaled_by_hand():
    torch.manual_seed(0)
    linear = nn.Linear(40, 24, bias=True)
    x = torch.randn(1, 5, 40) * 4
    layer = W8A8Linear.from_float(linear, "dynamic", "s8s8")
    qw, sw = quantize_weight_per_channel_absmax(linear.weight)
    qx, sx = quantize_activation_per_token_absmax(x)
    acc = qx[0].numpy().astype(np.int64) @ qw.numpy().astype(np.int64).T  # exact integers
    expected = (torch.from_numpy(acc.astype(np.float32)) * sx[0] * sw + linear.bias)[None]
    assert torch.equal(layer(x), expected)
    # and it approximates the float layer to within the quantization error
    assert (layer(x) - linear(x)).abs().max() < 0.02 * linear(x).abs().max()


def test_integer_matmul_is_exact_at_extreme_codes():
    a = torch.full((1, 2, 5632), 127, dtype=torch.int8)
    a[0, 1] = -127
    b = torch.full((5632, 3), -127, dtype=torch.int8)
    out = IntegerMatMul.apply(a, b, 0)
    assert out.dtype == torch.int32
    assert out[0, :, 0].tolist() == [-127 * 127 * 5632, 127 * 127 * 5632]
    as_u8 = IntegerMatMul.apply((a.to(torch.int16) + 128).to(torch.uint8), (b.to(torch.int16) + 128).to(torch.uint8), 128)
    assert torch.equal(as_u8, out)


def test_u8u8_dialect_stores_the_same_codes_offset_by_128():
    linear = nn.Linear(16, 8)
    s8 = W8A8Linear.from_float(linear, dialect="s8s8")
    u8 = W8A8Linear.from_float(linear, dialect="u8u8")
    assert s8.weight_q.dtype == torch.int8 and u8.weight_q.dtype == torch.uint8
    assert torch.equal(u8.weight_q.to(torch.int16) - 128, s8.weight_q.to(torch.int16))
    x = torch.randn(1, 3, 16)
    assert torch.equal(s8(x), u8(x))


def test_static_scale_comes_from_calibration_and_clamps_outliers():
    linear = nn.Linear(4, 2, bias=False)
    layer = W8A8Linear.from_float(linear, "static", "s8s8", act_absmax=2.54)
    assert float(layer.act_scale) == pytest.approx(0.02)
    x = torch.tensor([[[1.0, -2.54, 10.0, 0.0]]])  # 10.0 is beyond the calibrated range: clamps to 127
    expected_codes = torch.tensor([[50.0, -127.0, 127.0, 0.0]])
    qw, sw = quantize_weight_per_channel_absmax(linear.weight)
    assert torch.equal(layer(x)[0], (expected_codes @ qw.float().T) * 0.02 * sw)
    with pytest.raises(ValueError, match="act_absmax"):
        W8A8Linear.from_float(linear, "static")


@pytest.mark.parametrize("scheme", ["dynamic", "static"])
def test_fused_group_computes_exactly_what_its_linears_compute_alone(scheme):
    torch.manual_seed(3)
    linears = [nn.Linear(32, n, bias=bias) for n, bias in ((24, False), (8, True), (8, False))]
    x = torch.randn(1, 5, 32) * 3
    fused = W8A8Linear.from_float_group(linears, scheme, "u8u8", act_absmax=2.5)
    assert fused.split_sizes == (24, 8, 8) and "split_sizes=(24, 8, 8)" in repr(fused)
    for part, linear in zip(fused(x).split(list(fused.split_sizes), dim=-1), linears):
        assert torch.equal(part, W8A8Linear.from_float(linear, scheme, "u8u8", act_absmax=2.5)(x))


def test_repr_shows_the_quantization_settings():
    text = repr(W8A8Linear.from_float(nn.Linear(8, 4), "static", "u8u8", act_absmax=1.0))
    assert text.startswith("W8A8Linear(in_features=8, out_features=4, bias=True")
    assert "weight=int8_per_channel_symmetric" in text and "act=static" in text and "dialect=u8u8" in text


# --- the same numbers in onnxruntime --------------------------------------------------------
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter, used on purpose
@pytest.mark.parametrize("dialect", ["u8u8", "s8s8"])
@pytest.mark.parametrize("scheme", ["dynamic", "static"])
def test_one_layer_onnx_is_bit_exact_with_torch(tmp_path, dialect, scheme):
    torch.manual_seed(1)
    linear = nn.Linear(96, 80, bias=False)
    x = torch.randn(1, 9, 96) * torch.rand(1, 9, 1) * 10
    x[0, :, 5] *= 30  # an outlier channel
    layer = W8A8Linear.from_float(linear, scheme, dialect, act_absmax=float(x.abs().max()) * 0.8)
    path = tmp_path / "layer.onnx"
    torch.onnx.export(layer, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {1: "S"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    import onnx

    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "MatMulInteger" in ops and "MatMul" not in ops
    for s in (1, 9):
        got = session.run(None, {"x": x[:, :s].numpy()})[0]
        np.testing.assert_array_equal(got, layer(x[:, :s]).numpy())


# --- SmoothQuant ------------------------------------------------------------------------------
def test_smoothing_scales_by_hand():
    act = torch.tensor([4.0, 1.0])
    weights = [torch.tensor([[1.0, 2.0]]), torch.tensor([[-0.5, -4.0]])]  # column max |w|: 1, 4
    # s = act^0.5 / w^0.5 = [2/1, 1/2]
    torch.testing.assert_close(scales_from_absmax(act, weight_absmax(weights), 0.5), torch.tensor([2.0, 0.5]))
    torch.testing.assert_close(scales_from_absmax(act, weight_absmax(weights), 1.0), act)


def test_smoothing_keeps_the_float_model_and_flattens_outlier_channels():
    hf = make_model(vocab=120, layers=2, seed=5, init_std=0.2)
    with torch.no_grad():  # give layer 0's attention input a strong outlier channel
        hf.model.layers[0].input_layernorm.weight[7] = 40.0
    fp = EdgeLlama.from_hf(hf)
    samples = [torch.randint(0, 120, (1, 24), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    absmax = collect_input_absmax(fp, samples)
    q_plain = quantize_model(hf, absmax, "dynamic", "u8u8")
    q_smooth = quantize_model(hf, absmax, "dynamic", "u8u8", smooth_alpha=0.5)
    # float function kept: smoothed norm weight times smoothed (dequantized) weights ~= original
    block = q_smooth.blocks[0]
    s = hf.model.layers[0].input_layernorm.weight / block.input_layernorm.weight
    q_weight = hf.model.layers[0].self_attn.q_proj.weight
    q_rows = slice(0, q_weight.shape[0])  # q_proj's rows come first in the fused qkv_proj
    torch.testing.assert_close(block.qkv_proj.dequantized_weight()[q_rows] / s, q_weight,
                               atol=float(block.qkv_proj.weight_scale[q_rows].max() / s.min()), rtol=0)
    # and the quantized model is closer to fp32 with smoothing than without
    mask = torch.ones(1, 24, dtype=torch.long)
    args = (samples[0], mask, torch.arange(24)[None], fp.empty_cache(0))
    ref = fp(*args)[0]
    err_plain = (q_plain(*args)[0] - ref).abs().mean()
    err_smooth = (q_smooth(*args)[0] - ref).abs().mean()
    assert err_smooth < err_plain


def test_smoothing_every_group_with_gqa_keeps_the_float_function():
    """norm -> q/k/v, norm -> gate/up, up -> down and v -> o (4 query heads on 2 KV heads) in float."""
    import copy

    hf = make_model(vocab=120, layers=2, seed=3, init_std=0.2)
    smoothed = copy.deepcopy(hf)
    fp, twin = EdgeLlama.from_hf(hf), EdgeLlama.from_hf(smoothed)
    samples = [torch.randint(0, 120, (1, 20), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    absmax = collect_input_absmax(fp, samples)
    for i, block in enumerate(twin.blocks):
        layer = LayerFloats.of(block, absmax, i)
        smooth_layer(block, layer, {g.name: 0.5 for g in SMOOTH_GROUPS}, twin.arch)
        for p in PROJECTIONS:
            getattr(block, p).weight.copy_(layer.weights[p])
        assert not torch.allclose(block.v_proj.weight, fp.blocks[i].v_proj.weight)  # the rows did move
    args = (samples[0], torch.ones(1, 20, dtype=torch.long), torch.arange(20)[None], fp.empty_cache(0))
    torch.testing.assert_close(twin(*args)[0], fp(*args)[0], rtol=1e-4, atol=1e-4)


def test_alpha_search_picks_the_candidate_with_least_output_error():
    hf = make_model(vocab=120, layers=1, seed=5, init_std=0.2)
    with torch.no_grad():  # an outlier channel into q/k/v: smoothing must win there
        hf.model.layers[0].input_layernorm.weight[7] = 40.0
    fp = EdgeLlama.from_hf(hf)
    from host.calibrate import collect_inputs

    calibration = collect_inputs(fp, [torch.randint(0, 120, (1, 32), generator=torch.Generator().manual_seed(0))], 16,
                                 row_names(fp))
    assert calibration.rows["layers.0.q_proj"].shape == (16, 64) and "layers.0.k_proj" not in calibration.rows
    chosen, report = search_alphas(fp, calibration.absmax, calibration.rows, (None, 0.5, 0.9))
    attn = report["layers.0.attn_in"]
    assert chosen["layers.0.attn_in"] == attn["alpha"] in (0.5, 0.9) and attn["error"] < attn["unsmoothed_error"]
    block = fp.blocks[0]
    weights = [block.q_proj.weight, block.k_proj.weight, block.v_proj.weight]
    assert attn["unsmoothed_error"] == pytest.approx(group_error(calibration.rows["layers.0.q_proj"], weights, None))
    assert set(report) == {f"layers.0.{g.name}" for g in SMOOTH_GROUPS}


def test_quantize_model_swaps_every_projection_and_leaves_the_reference_alone():
    hf = make_model(vocab=120, layers=2, seed=2)
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    fp = EdgeLlama.from_hf(hf)
    absmax = collect_input_absmax(fp, [torch.randint(0, 120, (1, 16))])
    assert set(absmax) == {f"layers.{i}.{p}" for i in range(2) for p in PROJECTIONS} | {"lm_head"}
    q = quantize_model(hf, absmax, "static", "s8s8", smooth_alpha=0.5)
    projections = [name for name, _ in q.linears()]
    assert projections == [f"layers.{i}.{p}" for i in range(2) for p in ("o_proj", "down_proj", *FUSED_PROJECTIONS)] + [
        "lm_head"]  # q/k/v and gate/up are fused: one matmul each
    assert all(isinstance(m, W8A8Linear) for _, m in q.linears())
    assert quantized_layer_count(q) == 2 * len(PROJECTIONS) + 1
    assert all(isinstance(m, nn.Linear) for layer in hf.model.layers for m in (layer.self_attn.q_proj, layer.mlp.up_proj))
    for k, v in hf.state_dict().items():
        assert torch.equal(v, before[k]), k


# --- calibration ------------------------------------------------------------------------------
def test_calibration_records_per_channel_input_absmax_and_removes_its_hooks():
    hf = make_model(vocab=120, layers=1, seed=4)
    fp = EdgeLlama.from_hf(hf)
    ids = torch.randint(0, 120, (1, 10))
    absmax = collect_input_absmax(fp, [ids])
    h = fp.blocks[0].input_layernorm(fp.embed_tokens(ids))
    torch.testing.assert_close(absmax["layers.0.q_proj"], h[0].abs().amax(0))
    assert absmax["layers.0.down_proj"].shape == (128,)
    assert all(not m._forward_hooks for _, m in fp.linears())


def test_text_split_is_deterministic_with_a_held_out_tail():
    ids = list(range(100, 1100))
    split = split_text(ids, bos_id=1, seq_len=65, calib_samples=3, eval_tokens=200)
    assert [c[0, 0].item() for c in split.calib] == [1, 1, 1]
    assert split.calib[0][0, 1:].tolist() == list(range(100, 164))
    assert split.calib[2][0, -1].item() == 100 + 3 * 64 - 1
    held = [t for c in split.heldout for t in c[0, 1:].tolist()]
    assert held == list(range(900, 1100))  # the last 200 tokens, never calibrated on
    with pytest.raises(InputError, match="calibration text has 3 tokens"):
        split_text([5, 6, 7], 1, 65, 3, 200)

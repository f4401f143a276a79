"""The nbits8 dialect: one onnxruntime MatMulNBits per linear, on the W8A8 weight integers, activations per block."""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from host.quantize import Int8Embedding
from host.nbits import NBitsLinear, block_for, quantize_activation_per_block
from host.quantize import W8A8Linear


def export(module: nn.Module, x: torch.Tensor) -> bytes:
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), f, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {1: "S"}})
    return f.getvalue()


@pytest.mark.parametrize("k,n", [(64, 96), (172, 40), (576, 192)])  # 172: K padded to whole blocks
def test_onnxruntime_matmulnbits_computes_what_the_torch_module_computes(k, n):
    torch.manual_seed(0)
    linear = nn.Linear(k, n, bias=True)
    module = NBitsLinear.from_w8a8(W8A8Linear.from_float(linear)).eval()
    proto = export(module, torch.randn(1, 3, k))
    assert [node.op_type for node in onnx.load_from_string(proto).graph.node if node.op_type.startswith("MatMul")] == [
        "MatMulNBits"]
    session = ort.InferenceSession(proto, providers=["CPUExecutionProvider"])
    x = torch.randn(1, 7, k) * 4
    got = session.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want, fp32, per_token = module(x).numpy(), linear(x).numpy(), W8A8Linear.from_float(linear)(x).numpy()
    # the same sums in another order: float rounding only
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max(), rtol=0)
    # one scale per block of features is never coarser than one per token: as close to fp32 (1%: float rounding)
    assert np.abs(want - fp32).max() <= 1.01 * np.abs(per_token - fp32).max()


def test_blocks_are_the_largest_power_of_two_dividing_k_else_32_with_padding():
    assert [block_for(k) for k in (2048, 5632, 576, 1536, 64, 172)] == [128, 128, 64, 128, 64, 32]


def test_weights_are_the_w8a8_integers_and_padding_is_zero():
    torch.manual_seed(1)
    w8 = W8A8Linear.from_float(nn.Linear(40, 8, bias=False))
    module = NBitsLinear.from_w8a8(w8)
    assert module.weight_q.shape == (8, 2, 32) and module.scales.shape == (16,)
    assert torch.equal(module.dequantized_weight(), w8.dequantized_weight())
    assert (module.weight_q.view(8, 64)[:, 40:] == 128).all()  # code 128 = weight 0


def test_activation_blocks_round_half_to_even_and_an_all_zero_block_stays_zero():
    x = torch.tensor([[0.5, 1.5, -2.5, 127.0] + [0.0] * 28 + [0.0] * 32])
    codes, scale = quantize_activation_per_block(x, 32)
    assert codes[0, 0, :4].tolist() == [0.0, 2.0, -2.0, 127.0] and float(scale[0, 0]) == 1.0
    assert float(scale[0, 1]) == 0.0 and (codes[0, 1] == 0).all()


def test_a_tied_heads_codes_serve_as_the_embedding():
    torch.manual_seed(2)
    head = NBitsLinear.from_w8a8(W8A8Linear.from_float(nn.Linear(48, 10, bias=False)))
    embedding = Int8Embedding.from_head(head)
    ids = torch.tensor([[3, 0, 9]])
    assert embedding.codes is head.weight_q  # one initializer for both uses
    torch.testing.assert_close(embedding(ids)[0], head.dequantized_weight()[ids[0]], rtol=0, atol=0)


def test_the_smoothquant_search_scores_nbits8_with_the_graphs_per_block_arithmetic():
    from host.recipe import fake_w8a8

    torch.manual_seed(3)
    linear = nn.Linear(576, 24, bias=False)
    x = torch.randn(9, 576) * torch.linspace(0.1, 8, 576)  # uneven channels: per block != per token
    module = NBitsLinear.from_w8a8(W8A8Linear.from_float(linear))
    with torch.no_grad():
        torch.testing.assert_close(fake_w8a8(x, linear.weight, per_block=True), module(x), rtol=0, atol=1e-4)
        assert not torch.allclose(fake_w8a8(x, linear.weight), module(x), rtol=0, atol=1e-4)

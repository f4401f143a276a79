"""The onnxruntime target's rotary embedding: the contrib RotaryEmbedding node computes the plain graph's rotation."""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch

from host.model import apply_rope
from host.rotary import MAX_TABLE_BYTES, RotaryEmbedding, rope_tables, table_positions


class Rotate(torch.nn.Module):
    def __init__(self, tables, heads: int):
        super().__init__()
        self.register_buffer("cos", tables[0])  # buffers become initializers, as in EdgeLlama
        self.register_buffer("sin", tables[1])
        self.heads = heads

    def forward(self, x, position_ids):
        return RotaryEmbedding.apply(x, position_ids, self.cos, self.sin, self.heads)


def test_contrib_node_and_its_torch_twin_rotate_as_the_plain_graph_does():
    heads, d, positions = 3, 16, 64
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    tables = rope_tables(inv_freq, positions, 1.0)
    x, pos = torch.randn(1, 5, heads * d), torch.tensor([[0, 7, 8, 40, 63]])
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Rotate(tables, heads), (x, pos), f, dynamo=False, opset_version=17,
                          input_names=["x", "position_ids"], output_names=["y"])
    assert [n.op_type for n in onnx.load_from_string(f.getvalue()).graph.node] == ["RotaryEmbedding"]
    got = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy(), "position_ids": pos.numpy()})[0]
    # the plain graph's rotation (EdgeLlama._rope's tables: sin's first half negated)
    freqs = pos[0, :, None].float() * inv_freq
    cos, sin = torch.cat((freqs.cos(),) * 2, -1)[:, None], torch.cat((-freqs.sin(), freqs.sin()), -1)[:, None]
    plain = apply_rope(x.view(5, heads, d), cos, sin).reshape(1, 5, heads * d)
    np.testing.assert_allclose(got, plain.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(Rotate(tables, heads)(x, pos).numpy(), plain.numpy(), atol=1e-5, rtol=0)


def test_tables_of_a_very_long_context_are_capped():
    assert table_positions(8192, 64) == 8192
    assert table_positions(131072, 128) == 65536  # Llama-3.2-3B: half its trained range, 32 MiB of tables
    assert 2 * table_positions(131072, 128) * 64 * 4 == MAX_TABLE_BYTES

"""Rotary position embedding as onnxruntime's contrib `RotaryEmbedding` (the onnxruntime target only).

The plain graph rotates q and k with ~10 nodes per layer (split, swap, two products, a sum, for
each); the contrib operator does it in one node each from cos/sin tables of every position, which
the exporter stores as initializers. The same arithmetic as `host.model.apply_rope` (HF's
rotate-half pairing, `interleaved` 0): out = x * cos + rotate_half(x) * sin. ATC parses no contrib
domain, so the Ascend target keeps the plain nodes.
"""
from __future__ import annotations

import torch

# The tables (cos and sin, float32) hold at most this many bytes: a model trained for more positions
# (Llama-3.2-3B: 131072 x head_dim 128, 64 MiB) gets tables of fewer, and the bundle says so
# (manifest graph.max_positions), which is still far beyond any conversation a board holds.
MAX_TABLE_BYTES = 32 << 20


def rope_tables(inv_freq: torch.Tensor, positions: int, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [positions, D/2] of every position, as `EdgeLlama._rope` computes them for one."""
    freqs = torch.arange(positions, dtype=torch.float32)[:, None] * inv_freq
    return freqs.cos() * scaling, freqs.sin() * scaling


def table_positions(positions: int, head_dim: int) -> int:
    """How many of a model's `positions` the tables hold within MAX_TABLE_BYTES."""
    return min(positions, MAX_TABLE_BYTES // (2 * (head_dim // 2) * 4))


def rotate(x: torch.Tensor, position_ids: torch.Tensor, cos_table: torch.Tensor, sin_table: torch.Tensor) -> torch.Tensor:
    """x [S,heads,D] rotated by position_ids [1,S] with the tables: what the contrib operators compute."""
    cos, sin = cos_table[position_ids[0]][:, None], sin_table[position_ids[0]][:, None]  # [S,1,D/2]
    first, second = x.chunk(2, dim=-1)
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)


class RotaryEmbedding(torch.autograd.Function):
    """x [1,S,heads*D] rotated by position_ids [1,S] with the tables; com.microsoft RotaryEmbedding."""

    @staticmethod
    def forward(ctx, x, position_ids, cos_table, sin_table, heads: int):
        return rotate(x.view(x.shape[1], heads, -1), position_ids, cos_table, sin_table).view(x.shape)

    @staticmethod
    def symbolic(g, x, position_ids, cos_table, sin_table, heads: int):
        y = g.op("com.microsoft::RotaryEmbedding", x, position_ids, cos_table, sin_table, num_heads_i=heads,
                 interleaved_i=0)
        y.setType(x.type())
        return y

"""The token embedding of a W8A8 graph: int8 codes per row with one float scale per row.

A float32 table is the largest float tensor of a W8A8 bundle (TinyLlama: 262 MB of 1.30 GB; a 151k
vocabulary Qwen 0.5B: 544 MB). Stored as int8 per row (absmax/127, the scheme of the W8A8
weights) it is a quarter of that, and the graph dequantizes only the gathered rows:
x = (codes[ids] - zero_point) * scale[ids]. A tied model's lm_head already holds exactly these
codes (per output channel = per vocabulary row), so its embedding gathers from the head's own
[H,V] codes and the table is stored once.
"""
from __future__ import annotations

import torch
from torch import nn

from host.quantize import W8A8Linear, quantize_weight_per_channel_absmax


class Int8Embedding(nn.Module):
    """Rows of an int8 table gathered and dequantized; `axis` 0 for a [V,H] table, 1 for a head's [H,V] codes."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, zero_point: int = 0, axis: int = 0,
                 width: int | None = None):
        super().__init__()
        # buffers become initializers (plain tensors would be Constant nodes, outside external data);
        # the very tensors of a tied head stay one initializer shared by both uses
        self.register_buffer("codes", codes)
        self.register_buffer("scale", scale)
        self.zero_point, self.axis = zero_point, axis
        self.width = width  # a head's padded [V, blocks, block] codes (nbits8): the first `width` of each row

    @classmethod
    def from_float(cls, embedding: nn.Embedding) -> "Int8Embedding":
        """Quantize a float table per row: table ~= codes * scale[:, None]."""
        codes, scale = quantize_weight_per_channel_absmax(embedding.weight)
        return cls(codes, scale)

    @classmethod
    def from_head(cls, head: W8A8Linear) -> "Int8Embedding":
        """Share the codes and scales of a tied lm_head (stored [H,V], or [V,blocks,block] for nbits8, with its zero point)."""
        if head.weight_q.dim() == 3:
            return cls(head.weight_q, head.weight_scale, head.zero_point, axis=0, width=head.in_features)
        return cls(head.weight_q, head.weight_scale, head.zero_point, axis=1)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids[0]
        rows = torch.index_select(self.codes, self.axis, ids)  # [S,H], or [H,S] from a head's codes
        rows = rows.t() if self.axis == 1 else rows
        rows = rows.flatten(1)[:, : self.width] if self.width else rows
        values = rows.to(torch.float32) - self.zero_point if self.zero_point else rows.to(torch.float32)
        return (values * torch.index_select(self.scale, 0, ids)[:, None])[None]

    def extra_repr(self) -> str:
        shared = ", shared with lm_head" if self.axis == 1 else ""
        return f"{tuple(self.codes.shape)}, int8_per_row{shared}"


def quantize_embedding(model, tied: bool) -> None:
    """Give a W8A8 EdgeLlama its int8 embedding: the head's codes when tied, else the table's own."""
    model.embed_tokens = Int8Embedding.from_head(model.lm_head) if tied else Int8Embedding.from_float(model.embed_tokens)

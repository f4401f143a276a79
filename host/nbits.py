"""The `nbits8` W8A8 dialect (onnxruntime CPU): each linear is one contrib `MatMulNBits` node.

The weights are the W8A8 integers of docs/design.md §4 unchanged: int8 codes per output channel, stored
as codes + 128 (uint8, onnxruntime's default 8-bit zero point) in MatMulNBits' [N, blocks, block]
layout, the channel's scale repeated for each block of input features (`block_for`: 128, 64 or 32;
K zero-padded to whole blocks). With `accuracy_level` 4 onnxruntime quantizes the activation itself, to int8 per
block of features (scale = max|x_block| / 127), and runs an int8 dot product per block, as
llama.cpp's Q8_0 does. So activations get one scale per block instead of one per token (never
coarser), and the ~12 nodes of a quantize + MatMulInteger + rescale become one.
Only the onnxruntime target uses it: ATC knows no contrib operator (the Ascend dialect is s8s8).
"""
from __future__ import annotations

import torch
from torch import nn

# Features per activation (and weight-scale) block: MatMulNBits needs a power of two >= 16. Larger
# blocks read fewer repeated scales (fp32: 4 bytes per block per channel), so the largest that
# divides K wins (no padding to read either). Measured on the 22-layer TinyLlama shape, decode step
# in the same run: blocks of 128 < 64 < 32 < u8u8 MatMulInteger (bench/profile_decode.py).
BLOCKS = (128, 64, 32)
ZERO_POINT = 128  # MatMulNBits' default for 8 bits: code = q + 128
ACCURACY_LEVEL = 4  # int8 activations, integer dot products (onnxruntime's CompInt8 kernels)
QMAX = 127


def block_for(k: int) -> int:
    """The largest of BLOCKS that divides k; else the smallest, with K zero-padded to whole blocks."""
    return next((b for b in BLOCKS if k % b == 0), BLOCKS[-1])


def quantize_activation_per_block(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes as float [..., blocks, block], scales [..., blocks, 1]) as onnxruntime's CompInt8 kernel does:
    x * (1 / scale) rounded half to even, scale = max|x_block| / 127, and 0 for an all-zero block."""
    k = x.shape[-1]
    blocks = -(-k // block)
    x = nn.functional.pad(x, (0, blocks * block - k)).view(*x.shape[:-1], blocks, block)
    scale = x.abs().amax(dim=-1, keepdim=True) / QMAX
    inverse = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    return torch.round(x * inverse), scale


class NBitsMatMul(torch.autograd.Function):
    """y = x @ W^T for MatMulNBits' packed codes [N, blocks, block] (zero point 128) and scales [N * blocks]."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, k: int) -> torch.Tensor:
        n, blocks, block = codes.shape
        q, s = quantize_activation_per_block(x, block)
        # every block's int8 dot product times both scales, summed: the same sum as dequantize-then-matmul
        w = (codes.to(torch.float32) - ZERO_POINT) * scales.view(n, blocks, 1)
        return torch.matmul((q * s).flatten(-2), w.view(n, blocks * block).t())

    @staticmethod
    def symbolic(g, x, codes, scales, k: int):
        n, blocks, block = codes.type().sizes()
        y = g.op("com.microsoft::MatMulNBits", x, codes, scales, K_i=k, N_i=n, bits_i=8, block_size_i=block,
                 accuracy_level_i=ACCURACY_LEVEL)
        y.setType(x.type().with_sizes(x.type().varyingSizes()[:-1] + [n]))  # the exporter cannot infer a contrib op
        return y


class NBitsLinear(nn.Module):
    """A W8A8Linear's integers as one MatMulNBits: same weight codes and per-channel scales, activations per block."""

    def __init__(self, in_features: int, out_features: int, split_sizes: tuple, block: int):
        super().__init__()
        self.in_features, self.out_features, self.block = in_features, out_features, block
        self.split_sizes = tuple(split_sizes)
        self.act_scheme, self.dialect, self.zero_point = "dynamic", "nbits8", ZERO_POINT
        blocks = -(-in_features // block)
        self.register_buffer("weight_q", torch.full((out_features, blocks, block), ZERO_POINT, dtype=torch.uint8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("scales", torch.ones(out_features * blocks))
        self.register_buffer("bias", None)

    @classmethod
    def from_w8a8(cls, linear, block: int | None = None) -> "NBitsLinear":
        """The codes, scales and bias of a W8A8Linear (any dialect) in MatMulNBits' layout (block: `block_for(K)`)."""
        module = cls(linear.in_features, linear.out_features, linear.split_sizes, block or block_for(linear.in_features))
        codes = (linear.weight_q.to(torch.int16) - linear.zero_point + ZERO_POINT).to(torch.uint8).t()  # [N,K]
        module.weight_q.view(linear.out_features, -1)[:, : linear.in_features] = codes
        module.weight_scale = linear.weight_scale.clone()
        module.scales = module.weight_scale.repeat_interleave(module.weight_q.shape[1])
        module.bias = None if linear.bias is None else linear.bias.clone()
        return module

    def dequantized_weight(self) -> torch.Tensor:
        """float32 [N,K] weight the codes stand for."""
        codes = self.weight_q.view(self.out_features, -1)[:, : self.in_features].to(torch.float32)
        return (codes - ZERO_POINT) * self.weight_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        y = NBitsMatMul.apply(x.float(), self.weight_q, self.scales, self.in_features)
        y = y + self.bias if self.bias is not None else y
        return y if y.dtype == dtype else y.to(dtype)

    def extra_repr(self) -> str:
        split = f", split_sizes={self.split_sizes}" if len(self.split_sizes) > 1 else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"weight=int8_per_channel_symmetric, act=int8_per_block{self.block}_dynamic, dialect=nbits8{split}")

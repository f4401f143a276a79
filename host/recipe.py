"""The default W8A8 recipe: SmoothQuant with alpha searched per layer and per smoothed group.

For every layer and group of host/smooth.py (norm -> q/k/v, norm -> gate/up, up -> down,
v -> o), each candidate alpha (or no smoothing) is scored by the error it leaves in the
consumers' outputs on sampled calibration inputs X, quantized exactly as the graph does:
    err = sum over consumers W of |Q_tok(X / s) Q_ch(W * s)^T - X W^T|^2 / |X W^T|^2
and the alpha with the least error wins. Smoothing is exact in float, so this compares only
quantization noise; each group is scored alone (their scales touch different tensors).
"""
from __future__ import annotations

import sys

import torch
from tqdm import tqdm

from host.model import EdgeLlama
from host.nbits import block_for, quantize_activation_per_block
from host.quantize import activation_scale_per_token_absmax, quantize_activation, quantize_weight_per_channel_absmax
from host.smooth import SMOOTH_GROUPS, group_scales, weight_absmax

# None: the group is left unsmoothed. Below 0.5 never won on SmolLM2-135M (0 of 120 groups), so not tried.
ALPHAS = (None, 0.5, 0.6, 0.7, 0.8, 0.9)
SEARCH_ROWS = 512  # sampled calibration tokens per linear the search scores on


def fake_w8a8(x: torch.Tensor, w: torch.Tensor, per_block: bool = False) -> torch.Tensor:
    """x [T,K] @ w [N,K]^T with x per token (or, nbits8, per block of `block_for(K)`) and w per output channel
    through int8 codes, in float."""
    q, scale = quantize_weight_per_channel_absmax(w)
    if per_block:
        codes, xs = quantize_activation_per_block(x, block_for(x.shape[-1]))
        x_hat = (codes * xs).flatten(-2)[..., : x.shape[-1]]
    else:
        xs = activation_scale_per_token_absmax(x)
        x_hat = quantize_activation(x, xs) * xs
    return x_hat @ (q.float() * scale[:, None]).t()


def group_error(x: torch.Tensor, weights: list[torch.Tensor], s: torch.Tensor | None, wants: list | None = None,
                per_block: bool = False) -> float:
    """Relative output error of the consumers `weights` on inputs x after smoothing by s (None: not smoothed).

    `wants`: the float outputs x @ w^T, when the caller scores several s on the same inputs.
    """
    total = 0.0
    for n, w in enumerate(weights):
        w = w.detach().float()
        want = x @ w.t() if wants is None else wants[n]
        got = fake_w8a8(x, w, per_block) if s is None else fake_w8a8(x / s, w * s, per_block)
        total += float((got - want).pow(2).sum() / want.pow(2).sum().clamp(min=1e-30))
    return total


def row_names(model: EdgeLlama) -> set[str]:
    """The linears whose sampled inputs the search reads (one per group: its consumers share the input)."""
    return {f"layers.{i}.{g.consumers[0]}" for i in range(len(model.blocks)) for g in SMOOTH_GROUPS}


def search_alphas(model: EdgeLlama, absmax: dict, rows: dict, alphas=ALPHAS, dialect: str = "u8u8") -> tuple[dict, dict]:
    """({"layers.{i}.{group}": alpha} for smoothed groups, {same key: {"alpha", "error", "unsmoothed_error"}}).

    Scored with the dialect's activation quantization: nbits8 quantizes per block, not per token."""
    arch = model.arch
    rep = arch.num_heads // arch.num_kv_heads
    chosen, report = {}, {}
    with torch.no_grad():
        for i, block in enumerate(tqdm(model.blocks, desc="search", unit="layer", file=sys.stderr, leave=False)):
            for group in SMOOTH_GROUPS:
                name = f"layers.{i}.{group.consumers[0]}"
                weights = [getattr(block, p).weight for p in group.consumers]
                w_absmax = weight_absmax(weights)
                wants = [rows[name] @ w.detach().float().t() for w in weights]
                scored = []
                for alpha in alphas:
                    s = None if alpha is None else group_scales(group, absmax[name], w_absmax, alpha, rep, arch.head_dim)
                    scored.append((group_error(rows[name], weights, s, wants, dialect == "nbits8"), alpha))
                best_err, best = min(scored, key=lambda t: t[0])
                key = f"layers.{i}.{group.name}"
                if best is not None:
                    chosen[key] = best
                report[key] = {"alpha": best, "error": best_err, "unsmoothed_error": scored[0][0]}
    return chosen, report

"""SmoothQuant: move activation outliers into the weights before W8A8 quantization.

For a norm feeding linears W_1..W_n, per input channel j:
    s_j = max|X_j|^alpha / max_i max|W_i[:, j]|^(1 - alpha)
then norm.weight /= s and every W_i[:, j] *= s_j, which leaves the float function unchanged
(X / s) @ (W * s)^T = X @ W^T while flattening X's channel range. alpha = 0.5 splits the
difficulty evenly; larger alpha pushes more of it into the weights.
"""
from __future__ import annotations

import torch

# (norm of a Block, the projections it feeds) — the pairs SmoothQuant smooths in Llama.
SMOOTH_GROUPS = (
    ("input_layernorm", ("q_proj", "k_proj", "v_proj")),
    ("post_attention_layernorm", ("gate_proj", "up_proj")),
)
_FLOOR = 1e-5  # keeps s finite for channels that never fire or have all-zero weights


def smoothing_scales(act_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """Per-input-channel s [K] from activation abs-max [K] and the weights [N_i, K] that share the input."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"SmoothQuant alpha {alpha} must be in [0, 1]")
    w_absmax = torch.stack([w.detach().float().abs().amax(dim=0) for w in weights]).amax(dim=0)
    assert w_absmax.shape == act_absmax.shape, f"weights K={tuple(w_absmax.shape)} vs activations {tuple(act_absmax.shape)}"
    s = act_absmax.float().clamp(min=_FLOOR).pow(alpha) / w_absmax.clamp(min=_FLOOR).pow(1 - alpha)
    return s.clamp(min=_FLOOR)

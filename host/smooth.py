"""SmoothQuant: move activation outliers into the weights before W8A8 quantization.

For a producer feeding linears W_1..W_n, per input channel j:
    s_j = max|X_j|^alpha / max_i max|W_i[:, j]|^(1 - alpha)
then the producer's output channel j is divided by s_j and every W_i[:, j] multiplied by it,
which leaves the float function unchanged ((X / s) @ (W * s)^T = X @ W^T) while flattening X's
channel range. alpha = 0.5 splits the difficulty evenly; larger alpha pushes more into the weights.

Producers in a Llama block (SMOOTH_GROUPS), each exact in float:
- the two RMSNorms (their weight is per channel) feeding q/k/v and gate/up;
- up_proj's output rows feeding down_proj: down_proj reads silu(gate) * up, linear in up;
- v_proj's output rows feeding o_proj: attention mixes value rows per channel. With GQA one
  value channel is read by the `rep` query heads of its KV head, so o_proj's input channels
  (h*rep + r)*D + d share one scale, that of value channel h*D + d (`fold`/`unfold`).
Row scaling of up_proj / v_proj does not change their own per-output-channel int8 weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SmoothGroup:
    """A producer (Block attribute) whose output channels feed `consumers` as their input."""

    name: str
    producer: str
    consumers: tuple[str, ...]
    gqa: bool = False  # consumer channels are query heads reading the producer's KV-head channels


SMOOTH_GROUPS = (
    SmoothGroup("attn_in", "input_layernorm", ("q_proj", "k_proj", "v_proj")),
    SmoothGroup("mlp_in", "post_attention_layernorm", ("gate_proj", "up_proj")),
    SmoothGroup("down_in", "up_proj", ("down_proj",)),
    SmoothGroup("o_in", "v_proj", ("o_proj",), gqa=True),
)
_FLOOR = 1e-5  # keeps s finite for channels that never fire or have all-zero weights


def fold(t: torch.Tensor, rep: int, head_dim: int) -> torch.Tensor:
    """Per query-head channel [Hkv*rep*D] -> per KV-head channel [Hkv*D], max over the heads sharing it."""
    return t.reshape(-1, rep, head_dim).amax(dim=1).reshape(-1)


def unfold(s: torch.Tensor, rep: int, head_dim: int) -> torch.Tensor:
    """Per KV-head channel [Hkv*D] -> the same value for each of its `rep` query-head channels."""
    return s.reshape(-1, 1, head_dim).expand(-1, rep, head_dim).reshape(-1)


def weight_absmax(weights: list[torch.Tensor]) -> torch.Tensor:
    """max |W_i[:, j]| over the weights [N_i, K] that share an input: [K]."""
    return torch.stack([w.detach().float().abs().amax(dim=0) for w in weights]).amax(dim=0)


def scales_from_absmax(act_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), floored."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"SmoothQuant alpha {alpha} must be in [0, 1]")
    assert w_absmax.shape == act_absmax.shape, f"weights K={tuple(w_absmax.shape)} vs activations {tuple(act_absmax.shape)}"
    s = act_absmax.float().clamp(min=_FLOOR).pow(alpha) / w_absmax.clamp(min=_FLOOR).pow(1 - alpha)
    return s.clamp(min=_FLOOR)


def group_scales(group: SmoothGroup, act_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float,
                 rep: int, head_dim: int) -> torch.Tensor:
    """s over the consumers' input channels [K]; for a GQA group, one value per KV-head channel, unfolded."""
    if not group.gqa or rep == 1:
        return scales_from_absmax(act_absmax, w_absmax, alpha)
    s = scales_from_absmax(fold(act_absmax, rep, head_dim), fold(w_absmax, rep, head_dim), alpha)
    return unfold(s, rep, head_dim)

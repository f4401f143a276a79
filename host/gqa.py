"""The onnxruntime graph: contrib `GroupQueryAttention` over a KV cache the graph updates in place,
and each residual add fused into the RMSNorm after it (`SkipSimplifiedLayerNormalization`).

The plain attention of host/model.py costs ~25 nodes per layer (reshapes, transposes, two score
matmuls, softmax, two value matmuls) and attends over every KV slot, empty or not. One
GroupQueryAttention node does the rotary embedding, writes the new keys/values into the cache
buffer it is given (when past and present are the same memory: onnxruntime's shared-buffer mode)
and attends over the filled prefix only. That changes the cache contract (manifest graph.cache
"inplace", board/kvcache.py): one [1,Hkv,KV,D] buffer per layer and kind, bound as both past and
present; slots [0, n) hold the n cached tokens in order, and the new tokens land at [n, n+S).
onnxruntime's CPU kernel needs head_dim % 16 == 0 and a float32 cache; ATC parses no contrib
domain, so the Ascend target keeps the plain graph. The rotation reads the model's contrib tables
(host/rotary.py), so the graph holds the positions they hold. The fused norms take one node instead
of two per norm, which onnxruntime's CPU optimizer does not do itself (bench/RESULTS.md).
"""
from __future__ import annotations

import torch
from torch import nn

from host.model import rms_norm
from host.rotary import rotate


def gqa_fits(head_dim: int, kv_dtype: torch.dtype, compute_dtype: torch.dtype) -> bool:
    """Whether onnxruntime's CPU GroupQueryAttention can run this model's attention."""
    return head_dim % 16 == 0 and kv_dtype == compute_dtype == torch.float32


class GroupQueryAttention(torch.autograd.Function):
    """com.microsoft GroupQueryAttention (do_rotary, shared past/present buffer), with its arithmetic in torch.

    q [1,S,H*D], k and v [1,S,Hkv*D], or k and v None and q packed [1,S,(H+2Hkv)*D] (a fused
    projection's output); past_k/v [1,Hkv,KV,D]; total (int32 scalar) = cached + S; position_ids
    [1,S]. Returns (out [1,S,H*D], present_k, present_v): past with the new keys (rotated) and
    values written at [total-S, total).
    """

    @staticmethod
    def forward(ctx, q, k, v, past_k, past_v, seqlens_k, total, cos_table, sin_table, position_ids, heads: int,
                kv_heads: int):
        s, d = q.shape[1], past_k.shape[-1]
        if k is None:  # packed: q holds q, k and v side by side
            q, k, v = q.split([heads * d, kv_heads * d, kv_heads * d], dim=-1)
        q, k, v = q[0].view(s, heads, d), k[0].view(s, kv_heads, d), v[0].view(s, kv_heads, d)
        q, k = (rotate(t, position_ids, cos_table, sin_table) for t in (q, k))
        end = int(total)
        start = end - s
        present_k, present_v = past_k.clone(), past_v.clone()
        present_k[0, :, start:end] = k.transpose(0, 1)
        present_v[0, :, start:end] = v.transpose(0, 1)
        keys = present_k[0, :, :end].repeat_interleave(heads // kv_heads, dim=0)  # [H,T,D]
        values = present_v[0, :, :end].repeat_interleave(heads // kv_heads, dim=0)
        scores = torch.matmul(q.transpose(0, 1), keys.transpose(1, 2)) * d**-0.5  # [H,S,T]
        causal = torch.arange(end)[None, :] <= torch.arange(start, end)[:, None]
        probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
        out = torch.matmul(probs, values).transpose(0, 1).reshape(1, s, heads * d)
        return out, present_k, present_v

    @staticmethod
    def symbolic(g, q, k, v, past_k, past_v, seqlens_k, total, cos_table, sin_table, position_ids, heads: int,
                 kv_heads: int):
        if k is None:
            k = v = g.op("prim::Constant").setType(torch._C.OptionalType.ofTensor())  # omitted optional inputs
        out, present_k, present_v = g.op(
            "com.microsoft::GroupQueryAttention", q, k, v, past_k, past_v, seqlens_k, total, cos_table, sin_table,
            position_ids, num_heads_i=heads, kv_num_heads_i=kv_heads, do_rotary_i=1, rotary_interleaved_i=0, outputs=3)
        out.setType(q.type().with_sizes([1, None, heads * past_k.type().sizes()[-1]]))
        present_k.setType(past_k.type())
        present_v.setType(past_v.type())
        return out, present_k, present_v


class SkipRMSNorm(torch.autograd.Function):
    """(RMSNorm(x + skip) * weight, x + skip) as com.microsoft SkipSimplifiedLayerNormalization (float32)."""

    @staticmethod
    def forward(ctx, x, skip, weight, eps: float):
        total = x + skip
        return rms_norm(total, weight, eps), total

    @staticmethod
    def symbolic(g, x, skip, weight, eps: float):
        normed, _, _, total = g.op("com.microsoft::SkipSimplifiedLayerNormalization", x, skip, weight,
                                   epsilon_f=eps, outputs=4)
        normed.setType(x.type())
        total.setType(x.type())
        return normed, total


def add_norm(x: torch.Tensor, skip: torch.Tensor | None, norm) -> tuple[torch.Tensor, torch.Tensor]:
    """(norm(x + skip), x + skip), one node in the graph; (norm(x), x) when there is nothing to add."""
    if skip is None:
        return norm(x), x
    return SkipRMSNorm.apply(x, skip, norm.weight, norm.eps)


class InplaceCacheGraph(nn.Module):
    """The onnxruntime graph of an EdgeLlama with GroupQueryAttention: the manifest's graph.cache "inplace".

    forward(input_ids, attention_mask, position_ids, logits_index, k_0, v_0, k_1, ...) -> (logits, k_0', v_0', ...):
    the masks and positions of docs/design.md §3, but the cache is a prefix (attention_mask's cache bits
    are 1 for slots [0, n) and 0 after), each layer's keys/values come back whole, and logits
    [1, N, V] only for the N chunk rows that logits_index [N] names (the manifest's graph.logits
    "index"): a chat prefill wants the last row, and lm_head over every row cost 7-19 % of a
    64-token prefill (bench/RESULTS.md).
    """

    def __init__(self, model):
        super().__init__()
        self.model = model.use_contrib_rope() if model.rope_cos is None else model  # its tables feed the node

    @property
    def arch(self):
        return self.model.arch

    @property
    def max_positions(self) -> int:
        return self.model.max_positions

    @property
    def kv_dtype(self) -> torch.dtype:
        return self.model.kv_dtype

    def empty_cache(self, kv_len: int) -> list[torch.Tensor]:
        """Zero caches, one [1,Hkv,kv_len,D] per layer and kind, in the graph's input order."""
        a = self.model.arch
        return [torch.zeros(1, a.num_kv_heads, kv_len, a.head_dim) for _ in range(2 * a.num_layers)]

    def forward(self, input_ids, attention_mask, position_ids, logits_index, *past):
        m, a = self.model, self.model.arch
        total = attention_mask.sum().to(torch.int32)  # the cached tokens plus the new ones
        seqlens_k = (total - 1).view(1)
        x, pending = m.embed_tokens(input_ids), None  # pending: the MLP output not yet added to x
        presents = []
        for i, block in enumerate(m.blocks):
            h, x = add_norm(x, pending, block.input_layernorm)
            fused = getattr(block, "qkv_proj", None)
            qkv = (fused(h), None, None) if fused is not None else block.project(h, "qkv_proj")
            out, k, v = GroupQueryAttention.apply(*qkv, past[2 * i], past[2 * i + 1], seqlens_k, total, m.rope_cos,
                                                  m.rope_sin, position_ids, a.num_heads, a.num_kv_heads)
            presents += (k, v)
            h, x = add_norm(x, block.o_proj(out), block.post_attention_layernorm)
            pending = block.mlp(h)
        x, pending = x.index_select(1, logits_index), pending.index_select(1, logits_index)
        return (m._head(add_norm(x, pending, m.norm)[0]), *presents)

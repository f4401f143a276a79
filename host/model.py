"""An export-friendly Llama: the graph of docs/design.md §3 over the weights of an HF LlamaForCausalLM.

`EdgeLlama.from_hf(hf_model)` shares (does not copy) the Hugging Face modules: embedding,
RMSNorm weights, and the seven nn.Linear projections of every layer plus `lm_head`. Those
Linear modules are plain attributes of each `Block` (`block.q_proj`, ...), which is what
quantization swaps (fusing q/k/v and gate/up: FUSED_PROJECTIONS). The forward pass takes a
fixed number of KV slots with a mask, so one graph serves prefill chunks and single-token decode:

    inputs   input_ids int64 [1,S], attention_mask int64 [1,KV+S], position_ids int64 [1,S],
             past_key_values [2L,Hkv,KV,D] (item 2i: layer i's keys, 2i+1: its values)
    outputs  logits float32 [1,S,V], present_key_values [2L,Hkv,S,D] (keys after RoPE)

The cache is rank 4 because ATC takes ND inputs of rank <= 4 when --dynamic_dims is used; it is
the board's [L,2,1,Hkv,KV,D] cache reshaped (a view: the same bytes).

The graph is shaped for onnxruntime's CPU decode step, where every node costs ~1 us and every
copy of the cache costs bandwidth: static shapes as Python ints, no concatenation of the cache
with the new keys, no transposed copy of K, one slab of the cache copied per layer just before use
(bench/profile_decode.py shows where a step's time goes).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from board.manifest import Arch
from host.errors import InputError
from host.families import check_config, family_of
from host.load import arch_numbers
from host.rotary import RotaryEmbedding, rope_tables, table_positions

# Projection names of one decoder layer, in the order Hugging Face Llama applies them.
ATTN_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
PROJECTIONS = ATTN_PROJECTIONS + MLP_PROJECTIONS
# Projections that read the same input, by the name of the one module quantization may fuse them
# into (host/quantize.py): one matmul instead of several, its output split in this order.
FUSED_PROJECTIONS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}

# Added to the scores of masked positions. fp16's lowest finite value rather than -inf or
# float32's min: a fully masked row then stays finite (uniform, no NaN), and the constant
# survives an fp16 conversion of the graph (ATC) without becoming -inf.
MASK_VALUE = -65504.0

# Lower bound of the per-row scale of an fp16 RMSNorm (any m > 0 gives the same result; this
# keeps eps / m / m finite for all-zero rows).
FP16_NORM_FLOOR = 1e-4

# RoPE variants whose frequencies depend on the sequence length cannot be baked into a
# static graph; every other rope_type (default, linear, llama3, yarn) gives a fixed inv_freq.
_DYNAMIC_ROPE_TYPES = ("dynamic", "longrope")


def arch_from_config(config) -> Arch:
    """The manifest's architecture numbers from an HF LlamaConfig (transformers 4.x or 5.x)."""
    return Arch(**arch_numbers(config))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Llama's RMSNorm in float32: x / sqrt(mean(x^2) + eps) * weight."""
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


class RMSNorm(nn.Module):
    """Llama RMSNorm: x / sqrt(mean(x^2) + eps) * weight, in the dtype of x."""

    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight, requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return rms_norm(x, self.weight, self.eps)
        # fp16: x^2 overflows above |x| = 256, which residual streams reach. Scale each row by its
        # max |x| first (exact: x * rsqrt(mean(x^2) + eps) == y * rsqrt(mean(y^2) + eps / m^2), y = x / m).
        # Max, not a one-sided Clip (some ATC parsers need both Clip bounds), and y * y, not Pow: onnxruntime
        # 1.23-1.25 fail to load this graph when SimplifiedLayerNormFusion matches Pow under fp16.
        m = torch.maximum(x.abs().amax(-1, keepdim=True), x.new_tensor(FP16_NORM_FLOOR))
        y = x / m
        return self.weight.to(x.dtype) * (y * torch.rsqrt((y * y).mean(-1, keepdim=True) + self.eps / m / m))

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.eps}"


class Block(nn.Module):
    """One decoder layer: pre-norm GQA attention over [cache slots + new tokens], pre-norm SiLU MLP."""

    def __init__(self, hf_layer, arch: Arch):
        super().__init__()
        attn, mlp = hf_layer.self_attn, hf_layer.mlp
        self.input_layernorm = RMSNorm(hf_layer.input_layernorm.weight, arch.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(hf_layer.post_attention_layernorm.weight, arch.rms_norm_eps)
        for name in ATTN_PROJECTIONS:
            setattr(self, name, getattr(attn, name))
        for name in MLP_PROJECTIONS:
            setattr(self, name, getattr(mlp, name))
        self.num_heads, self.num_kv_heads, self.head_dim = arch.num_heads, arch.num_kv_heads, arch.head_dim

    def forward(self, x, rope, mask, past_k, past_v):
        """x [1,S,H]; rope(t [1,S,heads*D], heads) -> [S,heads,D] rotated; mask [S,KV+S] additive; past_k/v [Hkv,KV,D]."""
        hkv, d = self.num_kv_heads, self.head_dim
        q, k, v = self.project(self.input_layernorm(x), "qkv_proj")
        # -1 for S throughout: the graph then needs no Shape/Gather/Concat to compute shapes
        q = rope(q, self.num_heads)
        k_new = rope(k, hkv).transpose(0, 1)  # [Hkv,S,D]
        v_new = v.view(-1, hkv, d).transpose(0, 1)
        attn = attend(q, past_k, past_v, k_new, v_new, mask, self.num_heads // hkv)
        x = x + self.o_proj(attn[None])
        return x + self.mlp(self.post_attention_layernorm(x)), k_new, v_new

    def mlp(self, h: torch.Tensor) -> torch.Tensor:
        """The SiLU-gated MLP of the normed h [1,S,H] (without the residual)."""
        gate, up = self.project(h, "gate_up_proj")
        return self.down_proj(nn.functional.silu(gate) * up)

    def project(self, h: torch.Tensor, group: str) -> tuple[torch.Tensor, ...]:
        """The outputs of a FUSED_PROJECTIONS group: one fused matmul split, or one matmul per projection."""
        fused = getattr(self, group, None)
        if fused is not None:
            return fused(h).split(list(fused.split_sizes), dim=-1)
        return tuple(getattr(self, name)(h) for name in FUSED_PROJECTIONS[group])


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [S,heads,D] rotated by position, HF Llama's pairing (dimension i with i + D/2, not interleaved).

    x*cos + rotate_half(x)*sin with rotate_half(x) = (-x2, x1): `sin` comes with its first half
    negated (EdgeLlama._rope), so only the halves are swapped here.
    """
    half = int(cos.shape[-1]) // 2
    first, second = x.split(half, dim=-1)
    return x * cos + torch.cat((second, first), dim=-1) * sin


def attend(q, past_k, past_v, k_new, v_new, mask, rep: int):
    """GQA softmax attention of q [S,H,D] over the cache slots [Hkv,KV,D] and the new keys/values [Hkv,S,D].

    `mask` [rep*S,KV+S] is additive, rows ordered (head within the group, token), as `EdgeLlama._mask`.
    Returns [S,H*D]. The cache is never concatenated with the new keys (that would copy it every
    step): scores against both are computed apart and joined (small: [.., S, KV+S]), and the
    weighted values are the sum of the two parts. The `rep` query heads that share a KV head are
    folded into the matmul's rows (as HF's repeat_kv, without copying K/V), so each KV head is
    one [rep*S, D] x [D, KV] product and K^T is never materialized.
    """
    hkv, kv_len, d = (int(n) for n in past_k.shape)  # static: Python ints keep shape arithmetic out of the graph
    q = q.view(-1, hkv, rep, d).permute(1, 2, 0, 3).reshape(hkv, -1, d)  # [Hkv,rep*S,D]
    q = q * d**-0.5  # scaled before QK^T, not after: unscaled fp16 scores can overflow (65504)
    scores = torch.cat((torch.matmul(q, past_k.transpose(1, 2)),
                        torch.matmul(q, k_new.transpose(1, 2))), dim=-1)  # [Hkv,rep*S,KV+S]
    probs = torch.softmax(scores + mask, dim=-1)
    out = torch.matmul(probs[..., :kv_len], past_v) + torch.matmul(probs[..., kv_len:], v_new)  # [Hkv,rep*S,D]
    return out.view(hkv, rep, -1, d).permute(2, 0, 1, 3).reshape(-1, hkv * rep * d)


class EdgeLlama(nn.Module):
    """The bundle's graph as a torch module; see the module docstring for its signature."""

    def __init__(self, hf_model, kv_dtype: torch.dtype = torch.float32):
        super().__init__()
        config = hf_model.config
        family_of(getattr(config, "model_type", None), [type(hf_model).__name__], "the model")
        check_config(config, "the model config")
        rotary = hf_model.model.rotary_emb
        rope_type = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
        if rope_type in _DYNAMIC_ROPE_TYPES:
            raise InputError(f"rope_type {rope_type!r} depends on the sequence length; it cannot be exported")
        self.arch = arch_from_config(config)
        self.kv_dtype = kv_dtype
        self.compute_dtype = torch.float32  # activations, norms, attention; see `use_compute_dtype`
        inner = hf_model.model
        self.embed_tokens = inner.embed_tokens
        self.blocks = nn.ModuleList(Block(layer, self.arch) for layer in inner.layers)
        self.norm = RMSNorm(inner.norm.weight, self.arch.rms_norm_eps)
        self.lm_head = hf_model.lm_head
        self.tied = hf_model.lm_head.weight is inner.embed_tokens.weight  # tie_word_embeddings
        self.register_buffer("inv_freq", rotary.inv_freq.detach().float().clone(), persistent=False)
        self.attention_scaling = float(getattr(rotary, "attention_scaling", 1.0))
        # cos, sin of every position once `use_contrib_rope` (onnxruntime target); buffers become initializers
        self.register_buffer("rope_cos", None, persistent=False)
        self.register_buffer("rope_sin", None, persistent=False)

    @classmethod
    def from_hf(cls, hf_model, kv_dtype: torch.dtype = torch.float32) -> "EdgeLlama":
        """Wrap an HF LlamaForCausalLM, sharing its modules (no weight is copied)."""
        return cls(hf_model, kv_dtype).eval()

    def use_compute_dtype(self, dtype: torch.dtype) -> "EdgeLlama":
        """Compute activations, norms and attention in `dtype` (fp16 for the NPU).

        Float nn.Linear modules get their own `dtype` copies (the HF modules stay fp32 for the
        reference); W8A8 modules keep their integer matmul and fp32 rescale and return `dtype`.
        """
        self.compute_dtype = dtype
        for name, module in list(self.linears()):
            if type(module) is nn.Linear and module.weight.dtype != dtype:
                owner = self if name == "lm_head" else self.blocks[int(name.split(".")[1])]
                setattr(owner, name.rsplit(".", 1)[-1], copy.deepcopy(module).to(dtype))
        return self

    def linears(self):
        """(qualified name, module) of every projection module: `layers.{i}.q_proj`, ... (or the fused `qkv_proj`)."""
        for i, block in enumerate(self.blocks):
            for name in PROJECTIONS + tuple(FUSED_PROJECTIONS):
                module = getattr(block, name, None)
                if module is not None:
                    yield f"layers.{i}.{name}", module
        yield "lm_head", self.lm_head

    def empty_cache(self, kv_len: int) -> torch.Tensor:
        """Zero KV slots [2L,Hkv,kv_len,D] in the graph's KV dtype."""
        a = self.arch
        return torch.zeros(2 * a.num_layers, a.num_kv_heads, kv_len, a.head_dim, dtype=self.kv_dtype)

    def use_contrib_rope(self) -> "EdgeLlama":
        """Rotate with onnxruntime's contrib RotaryEmbedding (host/rotary.py), from tables of every position it can hold."""
        a = self.arch
        positions = table_positions(a.max_position_embeddings, a.head_dim)
        self.rope_cos, self.rope_sin = rope_tables(self.inv_freq, positions, self.attention_scaling)
        return self

    @property
    def max_positions(self) -> int:
        """Positions the graph can rotate: the model's, or fewer when its rotary tables were capped."""
        return self.arch.max_position_embeddings if self.rope_cos is None else int(self.rope_cos.shape[0])

    def _rope(self, position_ids, dtype: torch.dtype):
        """rope(t [1,S,heads*D], heads) -> t as [S,heads,D], rotated to the positions of the new tokens."""
        d = self.arch.head_dim
        if self.rope_cos is not None and dtype == torch.float32:
            return lambda t, heads: RotaryEmbedding.apply(t, position_ids, self.rope_cos, self.rope_sin, heads).view(-1, heads, d)
        # cos, sin [S,1,D]; sin's first half negated so that `apply_rope` needs no Neg (exact: x*(-s) == -(x*s))
        freqs = position_ids[0, :, None].float() * self.inv_freq  # [S,D/2]
        cos, sin = freqs.cos() * self.attention_scaling, freqs.sin() * self.attention_scaling
        cos = _cast(torch.cat((cos, cos), dim=-1)[:, None], dtype)
        sin = _cast(torch.cat((-sin, sin), dim=-1)[:, None], dtype)
        return lambda t, heads: apply_rope(t.view(-1, heads, d), cos, sin)

    def _mask(self, attention_mask, kv_len: int, seq_ids):
        """Additive [rep*S,KV+S] (see `attend`): cache slots by their mask bit; new token j visible to i when j <= i and bit j."""
        cache = attention_mask[0, :kv_len].bool().expand(seq_ids.shape[-1], kv_len)  # [S,KV]
        # positions 1..S of the new tokens, as a tensor op so the exported graph keeps S dynamic
        idx = torch.cumsum(torch.ones_like(seq_ids[0]), dim=-1)  # [S]
        causal = idx[None, :] <= idx[:, None]  # [S(i),S(j)]
        new = causal & attention_mask[0, kv_len:].bool()[None, :]
        mask = (~torch.cat((cache, new), dim=-1)).float() * MASK_VALUE  # [S,KV+S]
        return mask.repeat(self.arch.num_heads // self.arch.num_kv_heads, 1)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits [1,S,V]; a float tied head reads the embedding table itself (table @ h^T), because
        h @ table^T would make the exporter fold a transposed second copy of the table."""
        if self.tied and isinstance(self.lm_head, nn.Linear):
            return torch.matmul(self.lm_head.weight, h[0].t()).t()[None]
        return self.lm_head(h)

    def forward(self, input_ids, attention_mask, position_ids, past_key_values):
        kv_len = past_key_values.shape[2]
        assert input_ids.shape[0] == 1 and attention_mask.shape[-1] == kv_len + input_ids.shape[-1], (
            f"attention_mask {tuple(attention_mask.shape)} must be [1, KV+S] for KV={kv_len}, S={input_ids.shape[-1]}"
        )
        dtype = self.compute_dtype
        x = _cast(self.embed_tokens(input_ids), dtype)
        rope = self._rope(position_ids, dtype)
        mask = _cast(self._mask(attention_mask, kv_len, input_ids), dtype)
        keys, values = _cache_slabs(past_key_values)
        presents = []
        for i, block in enumerate(self.blocks):
            # a cache in another dtype is converted one slab at a time, after the copy, where the slab is small and hot
            past_k = _cast(keys[2 * i], dtype)
            past_v = _cast(values[2 * i + 1].view(keys.shape[1:]), dtype)
            x, k, v = block(x, rope, mask, past_k, past_v)
            presents += (k, v)
        logits = _cast(self._head(self.norm(x)), torch.float32)
        return logits, _cast(torch.stack(presents), self.kv_dtype)  # [2L,Hkv,S,D]


def _cache_slabs(past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views of the cache [2L,Hkv,KV,D] whose item 2i / 2i+1 is layer i's keys / values.

    Each layer takes (copies: onnxruntime has no strided views) its contiguous slabs just before
    it uses them, so they are still in cache for the attention matmuls. Keys and values come from
    differently shaped views because onnxruntime fuses Gathers that take every slab of one tensor
    into a single Split, which copies the whole cache up front.
    """
    return past, past.flatten(1)  # [2L,Hkv,KV,D], [2L,Hkv*KV*D]


def _cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x as dtype; no graph node when it already is (a same-type Cast still copies in onnxruntime)."""
    return x if x.dtype == dtype else x.to(dtype)

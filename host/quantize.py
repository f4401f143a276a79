"""W8A8 quantization (docs/design.md §4): int8 weights per output channel, int8 activations per token
(dynamic) or per tensor (static, from calibration), integer matmul rescaled to float.

`W8A8Linear.from_float(linear, ...)` is the one way to swap an nn.Linear. Its forward computes
exactly what the exported ONNX computes: the same float32 ops to quantize the activation, an
exact integer matmul (torch's int8 kernel, or float64, where every partial sum of int8
products is an exact integer), and the same float32 rescale. Under `torch.onnx.export` the integer matmul becomes a single
`MatMulInteger` node through `IntegerMatMul.symbolic`.

Two graph dialects carry the same integers:
- "s8s8" (Ascend): int8 activations x int8 weights, no zero points.
- "u8u8" (onnxruntime CPU): activations q+128 and weights w+128, both uint8 with zero point 128.
  Why not onnxruntime's usual u8 x s8: its AVX2 kernel (no VNNI) multiplies with
  vpmaddubsw, which adds adjacent u8*s8 products into a *saturating* int16; with activations
  up to 255 and weights up to +-127 two products reach 64770 > 32767, so results are wrong by
  5-18% on real layers. s8 x s8 has no fast kernel there (10-40x slower than fp32), while
  u8 x u8 with both zero points 128 runs on a fast exact kernel. Subtracting the zero points
  gives back q and w exactly, so both dialects compute the same int32 sums.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from board.manifest import ACT_SCHEMES, DIALECTS, ActScheme, Dialect
from host.model import FUSED_PROJECTIONS, PROJECTIONS, EdgeLlama, RMSNorm
from host.nbits import NBitsLinear
from host.smooth import SMOOTH_GROUPS, fold, group_scales, weight_absmax

QMAX = 127  # symmetric int8: codes -127..127 (no -128, so negation is exact)
EPS = 1e-8  # floor on scales so an all-zero row or token does not divide by zero
_ZERO_POINT = {"u8u8": 128, "s8s8": 0, "nbits8": 128}


def quantize_weight_per_channel_absmax(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes [N,K] and float32 scales [N] with w ~= q * scale[:, None], scale = max|w_row| / 127."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / QMAX).clamp(min=EPS)
    q = torch.clamp(torch.round(w / scale[:, None]), -QMAX, QMAX).to(torch.int8)
    return q, scale


def activation_scale_per_token_absmax(x: torch.Tensor) -> torch.Tensor:
    """Scale [..., 1] of each token (row over the last dim): max|x_token| / 127."""
    # Max, not clamp(min=): a one-sided Clip is what some ATC releases cannot parse (host/ascend/opcheck.py).
    return torch.maximum(x.abs().amax(dim=-1, keepdim=True) / QMAX, x.new_tensor(EPS))


def quantize_activation(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Integer codes (as float) q = clamp(round(x / scale), -127, 127); round half to even, like ONNX Round."""
    return torch.clamp(torch.round(x / scale), -QMAX, QMAX)


def quantize_activation_per_token_absmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes, scales [...,1]) with x ~= q * scale per token."""
    scale = activation_scale_per_token_absmax(x)
    return quantize_activation(x, scale).to(torch.int8), scale


def _as_int8(codes: torch.Tensor, zero_point: int) -> torch.Tensor:
    return (codes.to(torch.int16) - zero_point).to(torch.int8)


class IntegerMatMul(torch.autograd.Function):
    """a [...,K] x b [K,N] of integer codes (int8, or uint8 with zero point) -> int32; ONNX MatMulInteger."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, zero_point: int) -> torch.Tensor:
        if zero_point:  # uint8 codes q+128 -> the int8 codes q they stand for (exact: q is in -127..127)
            a, b = _as_int8(a, zero_point), _as_int8(b, zero_point)
        flat = a.reshape(-1, a.shape[-1])
        try:
            out = torch._int_mm(flat, b)  # int8 x int8 -> int32 accumulate, like MatMulInteger
        except (AttributeError, RuntimeError):  # no int8 kernel in this torch build:
            # float64 holds every partial sum exactly, |sum| <= 127*127*K < 2^53
            out = torch.matmul(flat.to(torch.float64), b.to(torch.float64)).to(torch.int32)
        return out.reshape(*a.shape[:-1], b.shape[-1])

    @staticmethod
    def symbolic(g, a, b, zero_point: int):
        if not zero_point:
            return g.op("MatMulInteger", a, b)
        zp = g.op("Constant", value_t=torch.tensor(zero_point, dtype=torch.uint8))
        return g.op("MatMulInteger", a, b, zp, zp)


class W8A8Linear(nn.Module):
    """y = (q_x @ q_w^T) * s_x * s_w + b, with int8 weights per output channel and int8 activations.

    One module may compute several linears that read the same input (`from_float_group`): their
    outputs are concatenated, `split_sizes` wide each.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, act_scheme: ActScheme, dialect: Dialect,
                 split_sizes: tuple[int, ...] | None = None):
        super().__init__()
        if act_scheme not in ACT_SCHEMES:
            raise ValueError(f"act_scheme {act_scheme!r}: use one of {ACT_SCHEMES}")
        if dialect not in DIALECTS:
            raise ValueError(f"dialect {dialect!r}: use one of {DIALECTS}")
        self.in_features, self.out_features = in_features, out_features
        self.split_sizes = tuple(split_sizes or (out_features,))
        assert sum(self.split_sizes) == out_features, f"split sizes {self.split_sizes} do not add up to {out_features}"
        self.act_scheme, self.dialect = act_scheme, dialect
        self.zero_point = _ZERO_POINT[dialect]
        code_dtype = torch.uint8 if self.zero_point else torch.int8
        # stored transposed [K,N] so the graph feeds it to MatMulInteger as is
        self.register_buffer("weight_q", torch.zeros(in_features, out_features, dtype=code_dtype))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("act_scale", torch.ones(()) if act_scheme == "static" else None)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_float(
        cls,
        linear: nn.Linear,
        act_scheme: ActScheme = "dynamic",
        dialect: Dialect = "u8u8",
        act_absmax: float | None = None,
        weight: torch.Tensor | None = None,
    ) -> "W8A8Linear":
        """Quantize `linear` (or `weight`, e.g. a smoothed copy of its weight); `act_absmax` for static scales."""
        return cls.from_float_group([linear], act_scheme, dialect, act_absmax, None if weight is None else [weight])

    @classmethod
    def from_float_group(
        cls,
        linears: list[nn.Linear],
        act_scheme: ActScheme = "dynamic",
        dialect: Dialect = "u8u8",
        act_absmax: float | None = None,
        weights: list[torch.Tensor] | None = None,
    ) -> "W8A8Linear":
        """One module for linears that read the same input: one activation quantization, one integer matmul.

        Exactly what each linear quantized alone computes: weights are stacked by output channel and
        scaled per channel, so every row gets the codes and scale it would get alone, and the shared
        input gets the same per-token scale (or, static, the group's one calibrated scale).
        """
        weights = [lin.weight for lin in linears] if weights is None else weights
        assert len({lin.in_features for lin in linears}) == 1, "fused linears must read the same input"
        return cls.from_weights(weights, [lin.bias for lin in linears], act_scheme, dialect, act_absmax)

    @classmethod
    def from_weights(cls, weights: list[torch.Tensor], biases: list, act_scheme: str = "dynamic", dialect: str = "u8u8",
                     act_absmax: float | None = None) -> "W8A8Linear":
        """`from_float_group` on float weights [N_i, K] and their biases (None: no bias)."""
        sizes = tuple(int(w.shape[0]) for w in weights)
        has_bias = any(b is not None for b in biases)
        module = cls(int(weights[0].shape[1]), sum(sizes), has_bias, act_scheme, dialect, sizes)
        q, scale = quantize_weight_per_channel_absmax(torch.cat([w.detach().float() for w in weights]))
        module.weight_q = (q.to(torch.int16) + module.zero_point).to(module.weight_q.dtype).t().contiguous()
        module.weight_scale = scale
        if act_scheme == "static":
            if act_absmax is None:
                raise ValueError("static activation scales need act_absmax from calibration")
            module.act_scale = torch.tensor(max(float(act_absmax) / QMAX, EPS), dtype=torch.float32)
        if has_bias:
            module.bias = torch.cat([b.detach().float() if b is not None else torch.zeros(n) for b, n in zip(biases, sizes)])
        return module

    def dequantized_weight(self) -> torch.Tensor:
        """float32 [N,K] weight the integer codes stand for (for error measurements)."""
        return (self.weight_q.to(torch.float32) - self.zero_point).t() * self.weight_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype  # returned in the model's compute dtype; quantization and rescale stay float32
        x = x.float()
        scale = self.act_scale if self.act_scheme == "static" else activation_scale_per_token_absmax(x)
        q = quantize_activation(x, scale)
        codes = (q + self.zero_point).to(torch.uint8) if self.zero_point else q.to(torch.int8)
        acc = IntegerMatMul.apply(codes, self.weight_q, self.zero_point)
        y = acc.to(torch.float32) * scale * self.weight_scale  # an int32 sum overflows fp16: rescale in fp32
        y = y + self.bias if self.bias is not None else y
        return y if y.dtype == dtype else y.to(dtype)

    def extra_repr(self) -> str:
        extra = f", act_scale={float(self.act_scale):.4g}" if self.act_scheme == "static" else ""
        if len(self.split_sizes) > 1:
            extra += f", split_sizes={self.split_sizes}"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"weight=int8_per_channel_symmetric, act={self.act_scheme}, dialect={self.dialect}{extra}"
        )


def quantize_model(
    hf_model,
    absmax: dict[str, torch.Tensor] | None,
    act_scheme: ActScheme = "dynamic",
    dialect: Dialect = "u8u8",
    smooth_alpha: float | dict | None = None,
    kv_dtype: torch.dtype = torch.float32,
    compute_dtype: torch.dtype = torch.float32,
):
    """A W8A8 EdgeLlama over `hf_model`, whose own modules stay untouched (the fp32 reference).

    Every projection of every layer and lm_head becomes a W8A8Linear; projections that read the
    same input become one (FUSED_PROJECTIONS: `qkv_proj`, `gate_up_proj`), which computes the same
    numbers with fewer graph nodes; the embedding becomes int8 per row (`Int8Embedding`).
    `smooth_alpha`: one SmoothQuant alpha for every group of host/smooth.py, or a dict
    {"layers.{i}.{group}": alpha} (a group that is absent is not smoothed). Smoothed float weights
    exist one layer at a time, so peak memory stays near fp32 model + int8 copy. `absmax` (from
    calibration) is needed for smoothing or static scales.
    """
    if dialect == "nbits8" and act_scheme != "dynamic":
        raise ValueError("the nbits8 dialect quantizes activations at run time; static scales need u8u8")
    if (smooth_alpha is not None or act_scheme == "static") and absmax is None:
        raise ValueError("SmoothQuant and static activation scales need calibration statistics")
    model = EdgeLlama.from_hf(hf_model, kv_dtype)
    stats = absmax or {}
    fused = {p for names in FUSED_PROJECTIONS.values() for p in names}
    for i, block in enumerate(model.blocks):
        layer = LayerFloats.of(block, stats, i)
        if smooth_alpha is not None:
            alphas = {g.name: smooth_alpha if not isinstance(smooth_alpha, dict) else smooth_alpha.get(f"layers.{i}.{g.name}")
                      for g in SMOOTH_GROUPS}
            smooth_layer(block, layer, alphas, model.arch)
        for group, names in FUSED_PROJECTIONS.items():
            _swap(block, group, names, layer, act_scheme, dialect)
            for p in names:
                delattr(block, p)
        for p in PROJECTIONS:
            if p not in fused:
                _swap(block, p, (p,), layer, act_scheme, dialect)
    head = LayerFloats({"lm_head": model.lm_head.weight}, {"lm_head": model.lm_head.bias}, {"lm_head": stats.get("lm_head")})
    _swap(model, "lm_head", ("lm_head",), head, act_scheme, dialect)
    quantize_embedding(model, model.tied)
    return model.use_compute_dtype(compute_dtype).eval()


@dataclass
class LayerFloats:
    """The float weights, biases and input abs-max of one layer's projections, as smoothing leaves them."""

    weights: dict
    biases: dict
    inputs: dict

    @classmethod
    def of(cls, block, stats: dict, i: int) -> "LayerFloats":
        return cls({p: getattr(block, p).weight.detach() for p in PROJECTIONS},
                   {p: getattr(block, p).bias for p in PROJECTIONS},
                   {p: stats.get(f"layers.{i}.{p}") for p in PROJECTIONS})


def smooth_layer(block, layer: LayerFloats, alphas: dict, arch) -> None:
    """SmoothQuant one Block: new norm weights on `block`; smoothed weights, biases, input ranges into `layer`."""
    rep = arch.num_heads // arch.num_kv_heads
    for group in SMOOTH_GROUPS:
        alpha = alphas.get(group.name)
        if alpha is None:
            continue
        act = layer.inputs[group.consumers[0]]
        w_absmax = weight_absmax([layer.weights[p] for p in group.consumers])
        s = group_scales(group, act, w_absmax, alpha, rep, arch.head_dim)
        if group.producer in layer.weights:  # a projection's output rows
            s_rows = fold(s, rep, arch.head_dim) if group.gqa and rep > 1 else s
            layer.weights[group.producer] = layer.weights[group.producer] / s_rows[:, None]
            bias = layer.biases[group.producer]
            if bias is not None:
                layer.biases[group.producer] = bias.detach() / s_rows
        else:  # an RMSNorm's weight
            norm = getattr(block, group.producer)
            setattr(block, group.producer, RMSNorm((norm.weight.detach() / s).clone(), norm.eps))
        for p in group.consumers:
            layer.weights[p], layer.inputs[p] = layer.weights[p] * s, act / s


def _swap(owner, attr: str, names: tuple, layer: LayerFloats, act_scheme: str, dialect: str) -> None:
    """Set `owner.attr` to the W8A8Linear of the projections `names` (one, or a group sharing its input)."""
    known = [float(layer.inputs[p].max()) for p in names if layer.inputs[p] is not None]
    act_max = max(known) if known else None  # a group's inputs are one tensor: the same range
    module = W8A8Linear.from_weights([layer.weights[p] for p in names], [layer.biases[p] for p in names],
                                     act_scheme, dialect, act_max)
    setattr(owner, attr, NBitsLinear.from_w8a8(module) if dialect == "nbits8" else module)


def quantized_layer_count(model) -> int:
    """How many of the model's linear layers are quantized (a fused group counts each of its linears)."""
    return sum(len(m.split_sizes) for m in model.modules() if isinstance(m, (W8A8Linear, NBitsLinear)))


# --- the token embedding: int8 codes per row with one float scale per row ---
# The float table is the largest float tensor of a W8A8 bundle. Stored as int8 per row (absmax/127, the
# scheme of the weights) it is a quarter of that, and the graph dequantizes only the gathered rows:
# x = (codes[ids] - zero_point) * scale[ids]. A tied model's lm_head already holds exactly these codes
# (per output channel = per vocabulary row), so its embedding gathers from the head's own codes and the
# table is stored once.


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

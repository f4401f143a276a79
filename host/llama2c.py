"""karpathy/llama2.c files: the legacy fp32 `.bin` checkpoint and the binary `tok*.bin` tokenizer.

Reads both and converts the checkpoint to a Hugging Face LlamaConfig + state dict. llama2.c's
RoPE rotates interleaved pairs (2i, 2i+1); HF Llama rotates halves (i, i + d/2), so the rows
of wq and wk are permuted per head (llama2.c export.py's `permute`).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from host.errors import InputError

HEADER = struct.Struct("<7i")  # dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
MAGIC_V1 = 0x616B3432  # "ak42": llama2.c export.py version >= 1 (not the legacy layout read here)
ROPE_THETA = 10000.0  # run.c hard-codes both
RMS_NORM_EPS = 1e-5
SPACE = "\u2581"  # SentencePiece's visible space; llama2.c's tokenizer export wrote " " instead


# --- checkpoint -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Header:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool  # llama2.c: a positive vocab size means wcls = token embedding

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_size


def read_header(path: Path) -> Header:
    """The 7-int header of a legacy llama2.c checkpoint; InputError if it cannot be one."""
    with open(path, "rb") as f:
        raw = f.read(HEADER.size)
    if len(raw) < HEADER.size:
        raise InputError(f"{path}: too short for a llama2.c checkpoint header; is it a model file?")
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = HEADER.unpack(raw)
    if dim == MAGIC_V1:
        raise InputError(
            f"{path}: llama2.c export format version >= 1 is not supported; "
            "export it with llama2.c's `export.py --version 0` (legacy fp32) or pass a Hugging Face directory"
        )
    values = (dim, hidden, layers, heads, kv_heads, abs(vocab), seq_len)
    if min(values) <= 0 or dim % heads or heads % kv_heads or (dim // heads) % 2:
        raise InputError(
            f"{path}: header {values} is not a valid llama2.c checkpoint (needs positive sizes, "
            "dim divisible by heads, heads by kv heads, even head size); pass a legacy llama2.c .bin "
            "or a Hugging Face checkpoint directory"
        )
    return Header(dim, hidden, layers, heads, kv_heads, abs(vocab), seq_len, shared_classifier=vocab > 0)


def tensor_shapes(h: Header) -> list[tuple[str, tuple[int, ...]]]:
    """Name and shape of every fp32 tensor, in file order (run.c's memory_map_weights)."""
    L, d, f, kv = h.n_layers, h.dim, h.hidden_dim, h.kv_dim
    shapes = [
        ("tok_embeddings", (h.vocab_size, d)),
        ("attention_norm", (L, d)),
        ("wq", (L, h.n_heads * h.head_size, d)),
        ("wk", (L, kv, d)),
        ("wv", (L, kv, d)),
        ("wo", (L, d, h.n_heads * h.head_size)),
        ("ffn_norm", (L, d)),
        ("w1", (L, f, d)),
        ("w2", (L, d, f)),
        ("w3", (L, f, d)),
        ("norm", (d,)),
        ("freq_cis_real", (h.seq_len, h.head_size // 2)),  # unused: RoPE is recomputed
        ("freq_cis_imag", (h.seq_len, h.head_size // 2)),
    ]
    if not h.shared_classifier:
        shapes.append(("output", (h.vocab_size, d)))
    return shapes


def read_checkpoint(path: Path) -> tuple[Header, dict[str, np.ndarray]]:
    """Header and fp32 tensors (llama2.c layout, [out, in] matrices) of a legacy checkpoint."""
    path = Path(path)
    header = read_header(path)
    shapes = tensor_shapes(header)
    expected = HEADER.size + 4 * sum(int(np.prod(s)) for _, s in shapes)
    actual = path.stat().st_size
    if actual != expected:
        raise InputError(
            f"{path}: {actual} bytes, but its header {header_summary(header)} needs {expected}; "
            "the checkpoint is truncated or corrupt (re-download or re-export it)"
        )
    data = np.fromfile(path, dtype="<f4", offset=HEADER.size)
    weights, at = {}, 0
    for name, shape in shapes:
        n = int(np.prod(shape))
        weights[name] = data[at : at + n].reshape(shape)
        at += n
    if not all(np.isfinite(w).all() for w in weights.values()):
        raise InputError(f"{path}: the checkpoint holds NaN or Inf weights; re-download or re-export it")
    return header, weights


def header_summary(h: Header) -> str:
    return (
        f"(dim {h.dim}, hidden {h.hidden_dim}, layers {h.n_layers}, heads {h.n_heads}, "
        f"kv heads {h.n_kv_heads}, vocab {h.vocab_size}, seq_len {h.seq_len})"
    )


# --- conversion to Hugging Face ---------------------------------------------------------------
def hf_config(h: Header):
    """The LlamaConfig that computes what run.c computes."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=h.vocab_size,
        hidden_size=h.dim,
        intermediate_size=h.hidden_dim,
        num_hidden_layers=h.n_layers,
        num_attention_heads=h.n_heads,
        num_key_value_heads=h.n_kv_heads,
        head_dim=h.head_size,
        max_position_embeddings=h.seq_len,
        rms_norm_eps=RMS_NORM_EPS,
        rope_theta=ROPE_THETA,
        hidden_act="silu",
        tie_word_embeddings=h.shared_classifier,
        bos_token_id=1,
        eos_token_id=2,
        architectures=["LlamaForCausalLM"],
    )


def interleaved_to_half_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder q/k rows per head from pairs (2i, 2i+1) to halves (i, i + d/2)."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def hf_state_dict(h: Header, weights: dict[str, np.ndarray]) -> dict:
    """HF LlamaForCausalLM parameter names -> fp32 torch tensors."""
    import torch

    per_layer = {
        "input_layernorm.weight": "attention_norm",
        "self_attn.q_proj.weight": "wq",
        "self_attn.k_proj.weight": "wk",
        "self_attn.v_proj.weight": "wv",
        "self_attn.o_proj.weight": "wo",
        "post_attention_layernorm.weight": "ffn_norm",
        "mlp.gate_proj.weight": "w1",
        "mlp.down_proj.weight": "w2",
        "mlp.up_proj.weight": "w3",
    }
    heads = {"wq": h.n_heads, "wk": h.n_kv_heads}
    sd = {"model.embed_tokens.weight": weights["tok_embeddings"], "model.norm.weight": weights["norm"]}
    for layer in range(h.n_layers):
        for hf_name, name in per_layer.items():
            w = weights[name][layer]
            if name in heads:
                w = interleaved_to_half_rotary(w, heads[name])
            sd[f"model.layers.{layer}.{hf_name}"] = w
    sd["lm_head.weight"] = weights["tok_embeddings" if h.shared_classifier else "output"]
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in sd.items()}


def load_llama2c_model(path: Path):
    """A fp32 eval-mode LlamaForCausalLM from a legacy llama2.c checkpoint, plus its header."""
    from transformers import LlamaForCausalLM

    header, weights = read_checkpoint(path)
    model = LlamaForCausalLM(hf_config(header))
    missing, unexpected = model.load_state_dict(hf_state_dict(header, weights), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:  # lm_head is absent only when tied
        raise InputError(f"{path}: llama2.c conversion mismatch (missing {missing}, unexpected {unexpected}); "
                         "is it a llama2.c checkpoint of the version 0 format?")
    return model.float().eval(), header


# --- tokenizer --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Vocab:
    """A SentencePiece-BPE vocabulary: pieces (`▁` for space) and their merge scores."""

    pieces: list
    scores: list
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2


def read_tokenizer(path: Path) -> Vocab:
    """Pieces and scores of a llama2.c tokenizer (`tok512.bin`, `tokenizer.bin`)."""
    path = Path(path)
    raw = path.read_bytes()
    pieces, scores, at = [], [], 4
    try:
        (max_len,) = struct.unpack_from("<i", raw, 0)
        while at < len(raw):
            score, n = struct.unpack_from("<fi", raw, at)
            at += 8
            if n <= 0 or n > max_len or at + n > len(raw):
                raise ValueError(f"token {len(pieces)} has length {n}")
            pieces.append(raw[at : at + n].decode("utf-8"))
            scores.append(score)
            at += n
    except (struct.error, ValueError) as e:
        raise InputError(f"{path}: not a llama2.c tokenizer ({e}); pass a tok<vocab>.bin, tokenizer.model or tokenizer.json") from None
    if len(pieces) < 259:
        raise InputError(f"{path}: only {len(pieces)} tokens; a llama2.c tokenizer has <unk>, <s>, </s> and 256 byte tokens first")
    # export.py wrote BOS/EOS as "\n<s>\n" / "\n</s>\n" and "▁" as " "; restore SentencePiece's names
    specials = {0: "<unk>", 1: "<s>", 2: "</s>"}
    pieces = [specials.get(i, p.replace(" ", SPACE)) for i, p in enumerate(pieces)]
    return Vocab(pieces=pieces, scores=scores)

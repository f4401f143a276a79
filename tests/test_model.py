"""host.model: the export-friendly Llama computes what Hugging Face's LlamaForCausalLM computes."""
from __future__ import annotations

import pytest
import torch

from tests.support.bundles import make_model
from host.errors import InputError
from host.model import EdgeLlama, arch_from_config


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def full_logits(hf, ids: list[int]) -> torch.Tensor:
    return hf(torch.tensor([ids])).logits[0]


def feed(model: EdgeLlama, cache: torch.Tensor, slots: list[int], ids: list[int], start: int, filled: list[int]):
    """Run `ids` at absolute positions start.. with cache slots `filled` visible; store K/V into `slots`.

    Below the runtime on purpose: it places K/V in arbitrary slots (which board.kvcache never
    does) to pin the graph signature's slot/mask contract itself; everything above uses board.engine."""
    kv = cache.shape[2]
    mask = torch.zeros(1, kv + len(ids), dtype=torch.long)
    mask[0, filled] = 1
    mask[0, kv:] = 1
    positions = torch.arange(start, start + len(ids))[None]
    logits, present = model(torch.tensor([ids]), mask, positions, cache)
    cache[:, :, slots] = present
    return logits[0]


@pytest.fixture(scope="module")
def hf():
    return make_model(vocab=200, layers=3, hidden=64, heads=8, kv_heads=2, intermediate=96, seed=3, init_std=0.2)


IDS = [1, 17, 99, 4, 150, 23, 8, 77, 5, 120, 64, 3]


def test_prefill_logits_match_hf_within_1e5(hf):
    model = EdgeLlama.from_hf(hf)
    got = feed(model, model.empty_cache(16), list(range(len(IDS))), IDS, 0, [])
    want = full_logits(hf, IDS)
    assert want.abs().max() > 1.0  # the random model is not trivially flat
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_cached_decode_through_scattered_slots_matches_hf(hf):
    """Prefill 5 tokens into slots 3..7, then decode one token at a time into slots 12, 0, 9, ...;
    garbage in never-filled slots is masked out, so slot order and leftovers do not matter."""
    model = EdgeLlama.from_hf(hf)
    cache = torch.randn(model.empty_cache(16).shape) * 100  # garbage in every slot
    want = full_logits(hf, IDS)
    slots = [3, 4, 5, 6, 7, 12, 0, 9, 15, 1, 2, 10]
    got = feed(model, cache, slots[:5], IDS[:5], 0, [])
    torch.testing.assert_close(got, want[:5], atol=1e-5, rtol=0)
    for t in range(5, len(IDS)):
        got = feed(model, cache, [slots[t]], [IDS[t]], t, slots[:t])
        torch.testing.assert_close(got[0], want[t], atol=1e-5, rtol=0)


def test_chunked_prefill_equals_one_prefill(hf):
    model = EdgeLlama.from_hf(hf)
    cache = model.empty_cache(16)
    first = feed(model, cache, list(range(7)), IDS[:7], 0, [])
    second = feed(model, cache, list(range(7, 12)), IDS[7:], 7, list(range(7)))
    torch.testing.assert_close(torch.cat((first, second)), full_logits(hf, IDS), atol=1e-5, rtol=0)


def test_present_holds_rotated_keys_and_values_of_new_tokens_only(hf):
    model = EdgeLlama.from_hf(hf)
    a = model.arch
    mask = torch.ones(1, 16 + 3, dtype=torch.long)
    mask[0, :16] = 0
    _, present = model(torch.tensor([IDS[:3]]), mask, torch.tensor([[0, 1, 2]]), model.empty_cache(16))
    assert present.shape == (2 * a.num_layers, a.num_kv_heads, 3, a.head_dim)  # item 2i keys, 2i+1 values
    # values of layer 0 are v_proj(norm(embedding)), no rotation
    h = model.blocks[0].input_layernorm(model.embed_tokens(torch.tensor([IDS[:3]])))
    v = model.blocks[0].v_proj(h).view(1, 3, a.num_kv_heads, a.head_dim).transpose(1, 2)
    torch.testing.assert_close(present[1], v[0], atol=1e-6, rtol=0)
    # keys at position 0 are unrotated (cos 1, sin 0)
    k = model.blocks[0].k_proj(h).view(1, 3, a.num_kv_heads, a.head_dim).transpose(1, 2)
    torch.testing.assert_close(present[0, :, 0], k[0, :, 0], atol=1e-6, rtol=0)
    assert not torch.allclose(present[0, :, 2], k[0, :, 2], atol=1e-3)


def test_rope_theta_from_transformers5_rope_parameters_is_used():
    hf = make_model(vocab=100, layers=1, seed=1, init_std=0.3, rope_theta=500000.0)
    assert hf.config.rope_parameters["rope_theta"] == 500000.0
    model = EdgeLlama.from_hf(hf)
    assert model.arch.rope_theta == 500000.0
    ids = list(range(3, 40))
    got = feed(model, model.empty_cache(40), list(range(len(ids))), ids, 0, [])
    torch.testing.assert_close(got, full_logits(hf, ids), atol=1e-5, rtol=0)


def test_arch_numbers_from_config(hf):
    arch = arch_from_config(hf.config)
    assert (arch.num_layers, arch.num_heads, arch.num_kv_heads, arch.head_dim) == (3, 8, 2, 8)
    assert (arch.hidden_size, arch.intermediate_size, arch.vocab_size) == (64, 96, 200)
    assert arch.rope_theta == 10000.0 and arch.max_position_embeddings == 512


def test_model_shares_hf_weights_instead_of_copying(hf):
    model = EdgeLlama.from_hf(hf)
    assert model.blocks[1].gate_proj is hf.model.layers[1].mlp.gate_proj
    assert model.blocks[0].input_layernorm.weight is hf.model.layers[0].input_layernorm.weight
    assert model.lm_head is hf.lm_head


def test_fp16_kv_cache_is_returned_in_fp16(hf):
    model = EdgeLlama.from_hf(hf, kv_dtype=torch.float16)
    cache = model.empty_cache(8)
    assert cache.dtype == torch.float16
    mask = torch.tensor([[0] * 8 + [1, 1]])
    logits, present = model(torch.tensor([[1, 5]]), mask, torch.tensor([[0, 1]]), cache)
    assert present.dtype == torch.float16 and logits.dtype == torch.float32


def test_non_llama_model_is_refused():
    from transformers import MistralConfig, MistralForCausalLM

    mistral = MistralForCausalLM(MistralConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                               num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(InputError, match="unsupported architecture MistralForCausalLM; edge-llm builds LlamaForCausalLM, Qwen2ForCausalLM"):
        EdgeLlama.from_hf(mistral)


def test_fp16_rmsnorm_does_not_overflow_on_large_activations():
    from host.model import RMSNorm

    torch.manual_seed(0)
    x = torch.randn(3, 64) * 900.0  # residual streams of large models reach this; x^2 overflows fp16 above 256
    x[1] = 0.0  # an all-zero row stays finite too
    norm = RMSNorm(torch.rand(64) + 0.5, eps=1e-5)
    want = norm(x)
    got = norm(x.half())
    assert got.dtype == torch.float16 and torch.isfinite(got).all()
    assert torch.allclose(got.float(), want, rtol=2e-3, atol=2e-3)
    naive = x.half().pow(2).mean(-1)
    assert torch.isinf(naive).any()  # what the straightforward fp16 form would have computed

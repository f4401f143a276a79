"""Model families (host.families): each family's graph computes what transformers' own forward does.

Tiny random configs of each family, built by the real pipeline into bundles whose ONNX graph is
run like the board runs it and compared with the Hugging Face model's logits: Qwen2 (q/k/v
biases, rope_theta 1e6, tied and untied head) and a Llama-3-style config (rope_scaling llama3,
tied embeddings, head_dim != hidden/heads), in fp32 and in both W8A8 dialects.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.support.bundles import bundle_engine, make_tokenizer_bundle, sample_text
from host.build import BuildConfig, build_from_model
from host.errors import InputError
from host.model import EdgeLlama

IDS = [1, 17, 99, 4, 150, 23, 8, 77, 5, 120, 64, 3]
COMMON = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.1, bos_token_id=1, eos_token_id=2)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
CONFIGS = {
    "qwen2-tied": ("Qwen2", dict(rope_theta=1e6, tie_word_embeddings=True)),
    "qwen2-untied": ("Qwen2", dict(rope_theta=1e6, tie_word_embeddings=False)),
    "llama3-tied": ("Llama", dict(rope_theta=5e5, rope_scaling=LLAMA3_ROPE, head_dim=32, tie_word_embeddings=True)),
}


def make_family_model(name: str, seed: int = 0):
    """A random HF model of one CONFIGS entry (transformers' own classes), with nonzero q/k/v biases for Qwen2."""
    import transformers

    prefix, extra = CONFIGS[name]
    torch.manual_seed(seed)
    config = getattr(transformers, f"{prefix}Config")(**COMMON, **extra)
    model = getattr(transformers, f"{prefix}ForCausalLM")(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:  # transformers initialises biases to zero: make them matter
            for proj in ("q_proj", "k_proj", "v_proj"):
                bias = getattr(layer.self_attn, proj).bias
                if bias is not None:
                    bias.normal_(0, 0.5)
    return model


def hf_logits(model, ids=IDS) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def onnx_prefill_logits(bundle, ids=IDS) -> np.ndarray:
    """Logits of every prompt position through the bundle's ONNX graph, fed by the board's Engine."""
    _, engine = bundle_engine(bundle)
    with engine.backend:
        return engine.feed(ids, all_logits=True)


def table_dtypes(result) -> list[str]:
    """Element types of the graph's vocabulary-sized initializers (embedding table, head weights: [64,320],
    [320,64], or nbits8's [320,2,32])."""
    import onnx

    graph = onnx.load(str(result.path / result.manifest.graph.onnx)).graph
    return [onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name for t in graph.initializer
            if 320 in t.dims and np.prod(t.dims) == 64 * 320]


def build_family(name: str, out, quant: str, target: str = "ort"):
    config = BuildConfig(model=name, out=out, quant=quant, target=target, kv_len=32, calib_samples=4, calib_seq_len=32,
                         eval_tokens=32, prefill_chunks=[1, 16])
    info = {"name": name, "source": "tests/test_families.py (random weights)"}
    return build_from_model(make_family_model(name), make_tokenizer_bundle(320), sample_text(), config, info)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_graph_module_matches_transformers_forward_within_1e5(name):
    hf = make_family_model(name)
    model = EdgeLlama.from_hf(hf)
    kv = 16
    mask = torch.tensor([[0] * kv + [1] * len(IDS)])
    with torch.no_grad():
        got, _ = model(torch.tensor([IDS]), mask, torch.arange(len(IDS))[None], model.empty_cache(kv))
    want = hf_logits(hf)
    assert np.abs(want).max() > 1.0
    np.testing.assert_allclose(got[0].numpy(), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["qwen2-untied", "llama3-tied"])
def test_fp32_bundle_logits_match_transformers(name, tmp_path):
    result = build_family(name, tmp_path / "b", "none")
    want = hf_logits(make_family_model(name))
    np.testing.assert_allclose(onnx_prefill_logits(result.path), want, atol=1e-4 * np.abs(want).max(), rtol=0)
    assert [dtype for dtype in table_dtypes(result)] == ["float32"] * (1 if CONFIGS[name][1]["tie_word_embeddings"] else 2)


@pytest.mark.parametrize("name,target", [("qwen2-tied", "ort"), ("qwen2-untied", "ascend"), ("llama3-tied", "ort"),
                                         ("llama3-tied", "ascend")])
def test_w8a8_bundle_logits_stay_near_transformers_and_agree_on_the_top_token(name, target, tmp_path):
    result = build_family(name, tmp_path / "b", "w8a8", target)
    assert result.manifest.quantization.dialect == {"ort": "nbits8", "ascend": "s8s8"}[target]
    want = hf_logits(make_family_model(name))
    got = onnx_prefill_logits(result.path)
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9
    codes = "uint8" if target == "ort" else "int8"  # int8 embedding rows; a tied head's codes serve both
    assert table_dtypes(result) == [codes] * (1 if CONFIGS[name][1]["tie_word_embeddings"] else 2)


def test_sliding_window_qwen2_is_refused_with_the_setting_to_change():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hf = Qwen2ForCausalLM(Qwen2Config(**COMMON, use_sliding_window=True, sliding_window=16))
    with pytest.raises(InputError, match="sliding-window attention is not supported; set use_sliding_window to false"):
        EdgeLlama.from_hf(hf)

"""host.load and host.llama2c: checkpoints become fp32 LlamaForCausalLM that compute what the original does."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from host.errors import InputError
from host.llama2c import Header, read_checkpoint, read_tokenizer, tensor_shapes
from host.load import arch_numbers, load_model
from tests.support.paths import STORIES_BIN, STORIES_TOK, need

README_STORY = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."


# --- a reference: llama2.c run.c's forward pass in numpy (interleaved RoPE, on the raw weights) ---
def rmsnorm(x, w, eps=1e-5):
    return x / np.sqrt(np.mean(x * x) + eps) * w


def rope_interleaved(v, pos, head_size):
    """run.c: rotate pairs (2i, 2i+1) of each head by pos * 10000^(-2i/head_size)."""
    pairs = v.reshape(-1, head_size // 2, 2)
    angle = pos * 10000.0 ** (-np.arange(0, head_size, 2) / head_size)
    c, s = np.cos(angle), np.sin(angle)
    a, b = pairs[..., 0], pairs[..., 1]
    return np.stack([a * c - b * s, a * s + b * c], axis=-1).reshape(-1)


def llama2c_logits(h: Header, w: dict, tokens: list[int]) -> np.ndarray:
    """Logits after each token, computed one position at a time with a KV cache like run.c."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    hs, group = h.head_size, h.n_heads // h.n_kv_heads
    keys = np.zeros((h.n_layers, len(tokens), h.kv_dim))
    values = np.zeros_like(keys)
    out = []
    for pos, token in enumerate(tokens):
        x = w["tok_embeddings"][token].copy()
        for l in range(h.n_layers):
            xb = rmsnorm(x, w["attention_norm"][l])
            q = rope_interleaved(w["wq"][l] @ xb, pos, hs)
            keys[l, pos] = rope_interleaved(w["wk"][l] @ xb, pos, hs)
            values[l, pos] = w["wv"][l] @ xb
            heads = []
            for head in range(h.n_heads):
                kv = slice((head // group) * hs, (head // group + 1) * hs)
                att = keys[l, : pos + 1, kv] @ q[head * hs : (head + 1) * hs] / np.sqrt(hs)
                att = np.exp(att - att.max())
                heads.append((att / att.sum()) @ values[l, : pos + 1, kv])
            x = x + w["wo"][l] @ np.concatenate(heads)
            xb = rmsnorm(x, w["ffn_norm"][l])
            gate = w["w1"][l] @ xb
            x = x + w["w2"][l] @ (gate / (1 + np.exp(-gate)) * (w["w3"][l] @ xb))
        classifier = w["tok_embeddings"] if h.shared_classifier else w["output"]
        out.append(classifier @ rmsnorm(x, w["norm"]))
    return np.array(out)


def reference_greedy(h, w, n_new: int, bos: int = 1) -> list[int]:
    tokens = [bos]
    for _ in range(n_new):
        tokens.append(int(llama2c_logits(h, w, tokens)[-1].argmax()))
    return tokens


def hf_greedy(model, n_new: int, bos: int = 1) -> list[int]:
    out = model.generate(torch.tensor([[bos]]), max_new_tokens=n_new, do_sample=False, min_new_tokens=n_new)
    return out[0].tolist()


def write_llama2c(path, h: Header, rng: np.random.Generator) -> dict:
    """Write a random legacy llama2.c checkpoint; return its tensors."""
    weights = {name: rng.normal(0, 0.5, shape).astype(np.float32) for name, shape in tensor_shapes(h)}
    for norm in ("attention_norm", "ffn_norm", "norm"):
        weights[norm] = 1 + 0.1 * weights[norm]
    vocab = h.vocab_size if h.shared_classifier else -h.vocab_size
    with open(path, "wb") as f:
        f.write(struct.pack("<7i", h.dim, h.hidden_dim, h.n_layers, h.n_heads, h.n_kv_heads, vocab, h.seq_len))
        for name, _ in tensor_shapes(h):
            f.write(weights[name].tobytes())
    return weights


# --- stories260K: the real pretrained model -------------------------------------------------------
@pytest.fixture(scope="module")
def stories():
    return load_model(str(need(STORIES_BIN)))


def test_stories260K_greedy_from_bos_tells_the_lily_story_like_llama2c(stories):
    header, weights = read_checkpoint(STORIES_BIN)
    ids = hf_greedy(stories.model, 40)
    assert ids == reference_greedy(header, weights, 40)
    pieces = read_tokenizer(need(STORIES_TOK)).pieces
    text = "".join(pieces[i] for i in ids[1:]).replace("\u2581", " ").lstrip(" ")
    assert text.startswith(README_STORY), text


def test_stories260K_logits_match_llama2c_reference_within_1e4(stories):
    header, weights = read_checkpoint(STORIES_BIN)
    tokens = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315]
    expected = llama2c_logits(header, weights, tokens)
    with torch.no_grad():
        got = stories.model(torch.tensor([tokens])).logits[0].double().numpy()
    assert np.abs(got - expected).max() < 1e-4


def test_stories260K_arch_numbers_match_its_header(stories):
    assert stories.name == "stories260K" and stories.model_dir == STORIES_BIN.parent.resolve()
    assert stories.model.dtype == torch.float32 and not stories.model.training
    assert arch_numbers(stories.config) == dict(
        num_layers=5, num_heads=8, num_kv_heads=4, head_dim=8, hidden_size=64, intermediate_size=172,
        vocab_size=512, rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=512,
    )
    assert stories.model.lm_head.weight.data_ptr() == stories.model.model.embed_tokens.weight.data_ptr()


# --- synthetic llama2.c checkpoints ---------------------------------------------------------------
def test_untied_classifier_and_gqa_checkpoint_matches_reference(tmp_path):
    h = Header(dim=32, hidden_dim=48, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=40, seq_len=16, shared_classifier=False)
    weights = write_llama2c(tmp_path / "untied.bin", h, np.random.default_rng(0))
    loaded = load_model(str(tmp_path / "untied.bin"))
    assert not loaded.config.tie_word_embeddings
    np.testing.assert_array_equal(loaded.model.lm_head.weight.detach().numpy(), weights["output"])
    tokens = [1, 5, 17, 39, 0, 22, 8]
    with torch.no_grad():
        got = loaded.model(torch.tensor([tokens])).logits[0].double().numpy()
    assert np.abs(got - llama2c_logits(h, weights, tokens)).max() < 1e-4


def test_truncated_checkpoint_is_refused_naming_file_and_sizes(tmp_path):
    data = need(STORIES_BIN).read_bytes()
    bad = tmp_path / "cut.bin"
    bad.write_bytes(data[:-100])
    with pytest.raises(InputError, match=r"cut\.bin: 1056440 bytes, but its header .* needs 1056540; .*truncated"):
        load_model(str(bad))


def test_header_that_cannot_be_a_model_is_refused(tmp_path):
    bad = tmp_path / "junk.bin"
    bad.write_bytes(struct.pack("<7i", 64, 172, 5, 7, 4, 512, 512) + b"\0" * 64)  # 64 % 7 != 0
    with pytest.raises(InputError, match=r"junk\.bin: header .* is not a valid llama2.c checkpoint"):
        load_model(str(bad))


def test_newer_llama2c_export_format_is_refused_with_how_to_reexport(tmp_path):
    bad = tmp_path / "v1.bin"
    bad.write_bytes(struct.pack("<Ii", 0x616B3432, 1) + b"\0" * 248)
    with pytest.raises(InputError, match=r"v1\.bin: llama2.c export format version >= 1 is not supported; export it with .*--version 0"):
        load_model(str(bad))


def test_missing_path_is_refused_with_what_to_pass(tmp_path):
    with pytest.raises(InputError, match=r"nope\.bin: no such file or directory; pass a Hugging Face"):
        load_model(str(tmp_path / "nope.bin"))


def test_hub_id_without_network_or_repo_says_to_pass_a_local_directory():
    with pytest.raises(InputError, match=r"edge-llm-tests/no-such-model: not a local path, and the Hugging Face hub is unreachable or has no such model .* pass its local directory"):
        load_model("edge-llm-tests/no-such-model")


# --- Hugging Face checkpoint directories ----------------------------------------------------------
def tiny_llama_config(**overrides):
    from transformers import LlamaConfig

    args = dict(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6, rope_theta=500000.0,
        tie_word_embeddings=False,
    )
    return LlamaConfig(**(args | overrides))


@pytest.fixture
def hf_dir(tmp_path):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config()).to(torch.bfloat16).eval()  # stored like TinyLlama: bf16
    model.save_pretrained(tmp_path / "tiny-llama")
    return tmp_path / "tiny-llama", model


def test_hf_directory_loads_as_fp32_with_the_same_outputs(hf_dir):
    directory, original = hf_dir
    loaded = load_model(str(directory))
    assert loaded.name == "tiny-llama" and loaded.model_dir == directory.resolve()
    assert loaded.model.dtype == torch.float32 and not loaded.model.training
    tokens = torch.tensor([[1, 7, 42, 95, 3]])
    with torch.no_grad():
        expected = original.float()(tokens).logits
        got = loaded.model(tokens).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert arch_numbers(loaded.config) == dict(
        num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, hidden_size=32, intermediate_size=64,
        vocab_size=96, rope_theta=500000.0, rms_norm_eps=1e-6, max_position_embeddings=128,
    )


def test_rope_theta_is_read_from_transformers4_style_config():
    config = tiny_llama_config()
    config.rope_parameters = None
    config.rope_theta = 1234.0
    assert arch_numbers(config)["rope_theta"] == 1234.0


def test_unsupported_architecture_is_refused_naming_it_and_the_supported_list(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(InputError) as e:
        load_model(str(tmp_path))
    assert str(e.value) == (f"{tmp_path / 'config.json'}: unsupported architecture GPT2LMHeadModel; "
                            "edge-llm builds LlamaForCausalLM, Qwen2ForCausalLM")


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"no config\.json; pass a Hugging Face checkpoint directory"):
        load_model(str(tmp_path))


def test_checkpoint_missing_a_layer_is_refused_not_randomly_filled(hf_dir):
    directory, _ = hf_dir
    config = json.loads((directory / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"the weights do not fill the model \(missing or mis-shaped: model\.layers\.2\."):
        load_model(str(directory))


def test_checkpoint_without_weights_is_refused(hf_dir):
    directory, _ = hf_dir
    for f in directory.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(InputError, match=r"no \*\.safetensors or pytorch_model\*\.bin weights"):
        load_model(str(directory))


def test_corrupt_safetensors_is_refused(hf_dir):
    directory, _ = hf_dir
    (directory / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(InputError, match=r"cannot load the checkpoint .*re-download it"):
        load_model(str(directory))


def test_smollm2_fetched_checkpoint_loads_as_a_tied_30_layer_llama(smollm2):
    loaded = load_model(str(smollm2.hf_dir))
    numbers = arch_numbers(loaded.config)
    assert (numbers["num_layers"], numbers["num_heads"], numbers["num_kv_heads"], numbers["vocab_size"]) == (30, 9, 3, 49152)
    assert loaded.model.lm_head.weight.data_ptr() == loaded.model.model.embed_tokens.weight.data_ptr()  # tied
    assert smollm2.gguf.stat().st_size == 98362432


@pytest.mark.slow  # 50 s: transformers dequantizes the whole GGUF twice over; `make test-slow` runs it
def test_smollm2_gguf_loads_as_its_hf_directory_with_tokenizer_and_chat_template(smollm2):
    """--model FILE.gguf: the same dequantized weights, tokenizer ids, chat template and stop ids as the
    Hugging Face directory fetch-smollm2.sh converted from that very file."""
    import torch

    from host.tokenizer import load_tokenizer

    gguf, hf = load_model(str(smollm2.gguf)), load_model(str(smollm2.hf_dir))
    assert gguf.name == "SmolLM2-135M-Instruct.Q4_1" and arch_numbers(gguf.config) == arch_numbers(hf.config)
    ids = torch.tensor([[1, 504, 3575, 282, 4649, 314, 7042, 30]])
    with torch.no_grad():
        torch.testing.assert_close(gguf.model(ids).logits, hf.model(ids).logits, atol=1e-4, rtol=0)
    tok, ref = gguf.tokenizer, load_tokenizer(None, hf.model_dir, hf.config.vocab_size)
    text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.tokenizer.encode(text).ids == ref.tokenizer.encode(text).ids
    assert (tok.bos_id, tok.eos_id, tok.chat_template, tok.chat.source) == (ref.bos_id, ref.eos_id, "chatml", "gguf")
    assert tok.chat.jinja == ref.chat.jinja and "<|im_start|>" in tok.chat.jinja
    assert tok.chat.stop_ids == ref.chat.stop_ids

"""host.tokenizer: every tokenizer format becomes a tokenizer.json that encodes exactly like the original."""
from __future__ import annotations

import json
import random
import struct

import pytest
from tokenizers import Tokenizer

from host.errors import InputError
from host.load import load_model
from host.chat_source import detect_template
from host.tokenizer import check_vocab, load_tokenizer
from tests.support.paths import LLAMA2_TOKENIZER, STORIES_TOK, TINYSTORIES_TEXT, WIKITEXT, need

ZEPHYR_JINJA = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\\n' + message['content'] + eos_token }}"
    "\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n{% endif %}"
    "\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
LLAMA2_JINJA = "{{ bos_token }}{% for m in messages %}{{ '[INST] ' + m['content'] + ' [/INST]' }}{% endfor %}"
CHATML_JINJA = "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n'}}{% endfor %}"
# Text no real corpus line covers: leading/trailing/multiple spaces, tabs, newlines, digits, accents,
# CJK, emoji (byte fallback), zero-width space, a literal "▁", and strings that look like byte pieces.
EDGE_CASES = [
    "", " ", "  ", "\n", "a\n\nb", " Hello", "  Hello  ", "12345 67.89 -0.5e10", "\tTab\t  spaces   end  ",
    "naïve café — “quotes” 日本語 😀🤖 \u200b x", "ǅ ﬁ Å Å", "<0x41> \u2581\u2581 \u2581x", "€100, ½ & ©",
]
# Llama-2's whitespace-run pieces ("▁▁" .. 16 x "▁") all score -1e9: ties the merge order must break alike.
EDGE_CASES += [" " * n + "x" for n in range(1, 40)] + ["if x:\n" + " " * n + "return y" for n in (2, 4, 8, 12, 16, 24)]


def sample_texts(path, n_lines: int, n_slices: int, seed: int = 0) -> list[str]:
    """Whole lines of a real corpus, plus random multi-line slices of it (mid-word starts, newlines)."""
    text = need(path).read_text()
    lines = text.split("\n")[:n_lines]
    rng = random.Random(seed)
    starts = [rng.randrange(len(text)) for _ in range(n_slices)]
    return lines + [text[s : s + rng.randrange(1, 400)] for s in starts]


# --- SentencePiece tokenizer.model --------------------------------------------------------------
@pytest.fixture(scope="module")
def llama2():
    return load_tokenizer(str(need(LLAMA2_TOKENIZER)))


@pytest.fixture(scope="module")
def sentencepiece_llama2():
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(need(LLAMA2_TOKENIZER)))


def test_llama2_hello_world_is_bos_15043_3186(llama2):
    assert llama2.tokenizer.encode("Hello world").ids == [1, 15043, 3186]
    assert llama2.tokenizer.encode("Hello world", add_special_tokens=False).ids == [15043, 3186]
    assert (llama2.bos_id, llama2.eos_id, llama2.pad_id, llama2.add_bos) == (1, 2, 2, True)
    assert (llama2.vocab_size, llama2.chat_template) == (32000, "none")


@pytest.mark.parametrize("corpus", [WIKITEXT, TINYSTORIES_TEXT], ids=["wikitext", "tinystories"])
def test_llama2_encodes_and_decodes_exactly_like_sentencepiece(llama2, sentencepiece_llama2, corpus):
    texts = sample_texts(corpus, n_lines=1500, n_slices=300) + EDGE_CASES
    for text in texts:
        ids = llama2.tokenizer.encode(text, add_special_tokens=False).ids
        assert ids == sentencepiece_llama2.encode(text), repr(text)
        assert llama2.tokenizer.decode(ids) == sentencepiece_llama2.decode(ids), repr(text)


def test_llama2_special_token_text_maps_to_its_id_like_hf_llama_tokenizer_json(llama2):
    # Rendered chat templates contain "</s>": it must become EOS. Each text segment after a special
    # token gets the dummy-prefix "▁" (29871), as Hugging Face's Llama/TinyLlama tokenizer.json does.
    ids = llama2.tokenizer.encode("<|user|>\nHi</s>\n<|assistant|>\n", add_special_tokens=False).ids
    assert ids == [529, 29989, 1792, 29989, 29958, 13, 18567, 2, 29871, 13, 29966, 29989, 465, 22137, 29989, 29958, 13]


def test_saved_tokenizer_json_reloads_with_tokenizers_alone_and_adds_bos(llama2, sentencepiece_llama2, tmp_path):
    path = tmp_path / "tokenizer.json"
    llama2.tokenizer.save(str(path))  # as the build writes it into a bundle
    reloaded = Tokenizer.from_file(str(path))
    for text in EDGE_CASES + ["Hello world", "The quick brown fox\njumps."]:
        assert reloaded.encode(text).ids == [1] + sentencepiece_llama2.encode(text)
        assert reloaded.encode(text, add_special_tokens=False).ids == sentencepiece_llama2.encode(text)


def test_garbage_sentencepiece_model_is_refused(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"\xff\xfe not a protobuf")
    with pytest.raises(InputError, match=r"tokenizer\.model: not a SentencePiece model"):
        load_tokenizer(str(bad))


# --- llama2.c tok512.bin ------------------------------------------------------------------------
def read_llama2c_raw(path):
    """pieces (bytes, space as in the file) and scores of a llama2.c tokenizer file."""
    raw = path.read_bytes()
    pieces, scores, at = [], [], 4
    while at < len(raw):
        score, n = struct.unpack_from("<fi", raw, at)
        pieces.append(raw[at + 8 : at + 8 + n].decode())
        scores.append(score)
        at += 8 + n
    return pieces, scores


def llama2c_encode(text: str, pieces: list[str], scores: list[float]) -> list[int]:
    """run.c's encode(bos=0, eos=0): dummy prefix, per-character lookup with +3 byte fallback,
    then repeatedly merge the leftmost adjacent pair whose merged piece scores highest."""
    lookup = {p: i for i, p in enumerate(pieces)}
    tokens = [lookup[" "]] if text else []
    for ch in text:
        tokens += [lookup[ch]] if ch in lookup else [b + 3 for b in ch.encode("utf-8")]
    while True:
        best = None
        for i in range(len(tokens) - 1):
            merged = lookup.get(pieces[tokens[i]] + pieces[tokens[i + 1]])
            if merged is not None and (best is None or scores[merged] > scores[best[1]]):
                best = (i, merged)
        if best is None:
            return tokens
        tokens[best[0] : best[0] + 2] = [best[1]]


@pytest.fixture(scope="module")
def tok512():
    return load_tokenizer(str(need(STORIES_TOK)))


def test_tok512_encodes_like_llama2c_and_decodes_back(tok512):
    pieces, scores = read_llama2c_raw(STORIES_TOK)
    lines = [line[:160] for line in need(TINYSTORIES_TEXT).read_text().split("\n") if line][:300]
    # llama2.c looks a literal "▁" up as a character; SentencePiece (and we) read it as a space
    for text in lines + [t for t in EDGE_CASES if "\u2581" not in t]:
        ids = tok512.tokenizer.encode(text, add_special_tokens=False).ids
        assert ids == llama2c_encode(text, pieces, scores), repr(text)
        assert tok512.tokenizer.decode(ids) == text, repr(text)


def test_tok512_falls_back_to_bytes_and_adds_bos(tok512):
    ids = tok512.tokenizer.encode("hi 😀").ids
    assert ids[0] == tok512.bos_id == 1
    assert ids[-4:] == [b + 3 for b in "😀".encode()]  # <0xF0> <0x9F> <0x98> <0x80>
    assert tok512.tokenizer.decode(ids, skip_special_tokens=True) == "hi 😀"
    assert (tok512.eos_id, tok512.vocab_size, tok512.chat_template) == (2, 512, "none")


def test_truncated_llama2c_tokenizer_is_refused(tmp_path):
    bad = tmp_path / "tok512.bin"
    bad.write_bytes(need(STORIES_TOK).read_bytes()[:-3])
    with pytest.raises(InputError, match=r"tok512\.bin: not a llama2.c tokenizer"):
        load_tokenizer(str(bad))


# --- tokenizer.json + tokenizer_config.json (Hugging Face directories) ----------------------------
@pytest.fixture
def hf_model_dir(tmp_path, llama2):
    """A tiny random LlamaForCausalLM with TinyLlama's vocabulary and chat template, as save_pretrained writes it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    directory = tmp_path / "tiny-chat"
    LlamaForCausalLM(config).save_pretrained(directory)
    llama2.tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "chat_template": ZEPHYR_JINJA,
    }))
    return directory


def test_hf_directory_gives_its_tokenizer_json_special_tokens_and_zephyr_template(hf_model_dir):
    model = load_model(str(hf_model_dir))
    bundle = load_tokenizer(None, model.model_dir, model.config.vocab_size)
    assert bundle.source == str(hf_model_dir.resolve() / "tokenizer.json")
    assert (bundle.bos_id, bundle.eos_id, bundle.pad_id, bundle.add_bos) == (1, 2, 2, True)
    assert bundle.chat_template == "zephyr"
    assert bundle.tokenizer.encode("Hello world").ids == [1, 15043, 3186]
    check_vocab(bundle, model.config.vocab_size, hf_model_dir)


def test_transformers5_chat_template_file_and_added_token_entries_are_read(hf_model_dir):
    token = {"__type": "AddedToken", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    (hf_model_dir / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": {**token, "content": "<s>"}, "eos_token": {**token, "content": "</s>"}}))
    (hf_model_dir / "chat_template.jinja").write_text(CHATML_JINJA)
    bundle = load_tokenizer(str(hf_model_dir))
    assert (bundle.bos_id, bundle.eos_id, bundle.pad_id, bundle.chat_template) == (1, 2, 2, "chatml")
    assert (bundle.chat.jinja, bundle.chat.source) == (CHATML_JINJA, "chat_template.jinja")


def test_a_tokenizer_json_adds_bos_exactly_when_transformers_does(llama2, tmp_path):
    from transformers import AutoTokenizer

    bare = Tokenizer.from_str(llama2.tokenizer.to_str())
    bare.post_processor = None  # no BOS template: transformers 5 encodes without BOS whatever the config says
    bare.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True}))
    bundle = load_tokenizer(str(tmp_path / "tokenizer.json"))
    assert AutoTokenizer.from_pretrained(tmp_path)("Hello world").input_ids == [15043, 3186]
    assert bundle.tokenizer.encode("Hello world").ids == [15043, 3186] and not bundle.add_bos


SMOLLM2_QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
# transformers' apply_chat_template(SMOLLM2_QUESTION, add_generation_prompt=True) on SmolLM2-135M-Instruct
SMOLLM2_IDS = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407, 19712, 8182,
               2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]


def test_smollm2_gives_transformers_ids_special_tokens_and_template(smollm2):
    from transformers import AutoTokenizer

    from board.jinja_template import render_jinja

    bundle = load_tokenizer(None, smollm2.hf_dir, 49152)
    assert (bundle.bos_id, bundle.eos_id, bundle.pad_id, bundle.add_bos, bundle.vocab_size) == (1, 2, 2, False, 49152)
    assert (bundle.chat_template, bundle.chat.source, bundle.chat.stop_ids) == ("chatml", "chat_template.jinja", [])
    assert bundle.chat.jinja == (smollm2.hf_dir / "chat_template.jinja").read_text()
    assert bundle.chat.special_tokens == {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                                          "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>"}
    text = render_jinja(bundle.chat.jinja, SMOLLM2_QUESTION, True, bundle.chat.special_tokens)
    assert bundle.tokenizer.encode(text, add_special_tokens=False).ids == SMOLLM2_IDS
    hf = AutoTokenizer.from_pretrained(smollm2.hf_dir)
    assert hf.apply_chat_template(SMOLLM2_QUESTION, add_generation_prompt=True, tokenize=True, return_dict=False) == SMOLLM2_IDS


def test_sampling_defaults_come_from_generation_config(hf_model_dir):
    from host.chat_source import sampling_defaults
    from board.manifest import Sampling

    assert load_tokenizer(str(hf_model_dir)).chat.sampling == Sampling()  # save_pretrained's: no sampling values
    qwen = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05, "eos_token_id": [2, 7]}
    (hf_model_dir / "generation_config.json").write_text(json.dumps(qwen))
    chat = load_tokenizer(str(hf_model_dir)).chat
    assert (chat.sampling, chat.stop_ids) == (Sampling(temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.05), [7])
    (hf_model_dir / "generation_config.json").write_text(json.dumps({"do_sample": False, "temperature": 0.7}))
    assert load_tokenizer(str(hf_model_dir)).chat.sampling == Sampling(temperature=0.0)  # greedy, as transformers would
    assert sampling_defaults(None) == Sampling()


@pytest.mark.parametrize(
    "jinja, name",
    [(ZEPHYR_JINJA, "zephyr"), (LLAMA2_JINJA, "llama2"), (CHATML_JINJA, "chatml"), ("{{ messages[0]['content'] }}", "none"), ("", "none")],
)
def test_chat_template_family_is_detected_from_its_markers(jinja, name):
    assert detect_template(jinja) == name


def test_unreadable_tokenizer_json_is_refused(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{ not json")
    with pytest.raises(InputError, match=r"tokenizer\.json: not a readable tokenizer\.json"):
        load_tokenizer(str(tmp_path / "tokenizer.json"))


# --- default lookup and vocabulary check --------------------------------------------------------
def test_default_tokenizer_of_a_llama2c_model_is_tok_vocab_bin_beside_it():
    bundle = load_tokenizer(None, need(STORIES_TOK).parent, vocab_size=512)
    assert bundle.source == str(STORIES_TOK) and bundle.vocab_size == 512


def test_no_tokenizer_beside_the_model_asks_for_tokenizer_option(tmp_path):
    with pytest.raises(InputError, match=r"no tokenizer found in .*tok512\.bin\); pass --tokenizer PATH"):
        load_tokenizer(None, tmp_path, vocab_size=512)


def test_tokenizer_that_does_not_fit_the_model_vocab_is_refused(tok512, llama2):
    with pytest.raises(InputError, match=r"tokenizer .*tok512\.bin has 512 tokens but model m\.bin has a vocabulary of 32000; pass the model's own tokenizer"):
        check_vocab(tok512, 32000, "m.bin")
    with pytest.raises(InputError, match=r"tokenizer .*tokenizer\.model has 32000 tokens but model stories260K\.bin has a vocabulary of 512"):
        check_vocab(llama2, 512, "stories260K.bin")
    check_vocab(tok512, 512, "m.bin")
    check_vocab(llama2, 32064, "padded")  # embeddings padded to a multiple of 64 still fit


def test_a_tokenizer_with_an_id_past_the_model_vocab_is_refused_though_it_has_few_tokens(tok512):
    from dataclasses import replace

    from tokenizers import models

    # 400 tokens, but one of them is id 600: a 512-row model has no row for it
    vocab = {f"t{i}": i for i in range(399)} | {"<far>": 600}
    sparse = replace(tok512, tokenizer=Tokenizer(models.WordLevel(vocab, unk_token="t0")), vocab_size=400,
                     bos_id=1, eos_id=2, pad_id=2)
    with pytest.raises(InputError, match="has 400 tokens but model m.bin has a vocabulary of 512"):
        check_vocab(sparse, 512, "m.bin")

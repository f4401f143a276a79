"""GGUF checkpoints (`--model FILE.gguf`, llama.cpp's format) through transformers' GGUF support.

transformers reads the GGUF's metadata into a config and a tokenizer (with the chat template the
file carries) and dequantizes its tensors to float32; from there the build is the same as for a
Hugging Face directory. The family is checked from the metadata before any tensor is read.
"""
from __future__ import annotations

from pathlib import Path

from host.chat_source import SPECIAL_TOKEN_NAMES, ChatSource, special_token_strings, stop_ids
from host.errors import InputError, first_line
from host.families import check_config
from host.tokenizer import TokenizerBundle, detect_template


def load_gguf(path: Path):
    """(fp32 eval-mode *ForCausalLM, TokenizerBundle) of a GGUF file; InputError naming the file and fix."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    where = str(path)
    directory, name = str(path.parent), path.name
    try:
        config = AutoConfig.from_pretrained(directory, gguf_file=name)
    except Exception as e:  # gguf raises ValueError/KeyError/struct errors on a file it cannot read
        raise InputError(f"{where}: not a readable GGUF model ({first_line(e)}); pass a GGUF of a supported family") from None
    check_config(config, where)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    except Exception as e:
        raise InputError(f"{where}: cannot load the GGUF's weights or tokenizer ({first_line(e)})") from None
    # the loaded model is marked quantized (it came from a quantized file); a plain model with its
    # dequantized weights is what the build quantizes
    if hasattr(loaded.config, "quantization_config"):
        delattr(loaded.config, "quantization_config")
    model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=False)
    if getattr(loaded.config, "tie_word_embeddings", False):
        model.tie_weights()
    model.generation_config = loaded.generation_config
    return model.eval(), tokenizer_bundle(tokenizer, model.generation_config, where)


def tokenizer_bundle(hf_tokenizer, generation_config, where: str) -> TokenizerBundle:
    """The host's tokenizer record of a transformers fast tokenizer (as a GGUF yields one)."""
    tok = hf_tokenizer.backend_tokenizer
    bos, eos = hf_tokenizer.bos_token_id, hf_tokenizer.eos_token_id
    if eos is None:
        raise InputError(f"{where}: the GGUF names no EOS token (tokenizer.ggml.eos_token_id); it cannot end an answer")
    bos = eos if bos is None else bos
    jinja = hf_tokenizer.chat_template or ""
    specials = {n: getattr(hf_tokenizer, n) for n in SPECIAL_TOKEN_NAMES}
    chat = ChatSource(jinja, "gguf" if jinja else "builtin", special_token_strings(specials),
                      stop_ids(tok, jinja, getattr(generation_config, "eos_token_id", None), eos))
    return TokenizerBundle(
        tokenizer=tok, bos_id=bos, eos_id=eos, pad_id=hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else eos,
        add_bos=tok.encode("a").ids[:1] == [bos], vocab_size=tok.get_vocab_size(with_added_tokens=True),
        chat_template=detect_template(jinja), source=where, chat=chat,
    )

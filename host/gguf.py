"""GGUF checkpoints (`--model FILE.gguf`, llama.cpp's format) through transformers' GGUF support.

transformers reads the GGUF's metadata into a config and a tokenizer (with the chat template the
file carries) and dequantizes its tensors to float32; from there the build is the same as for a
Hugging Face directory. The family is checked from the metadata before any tensor is read.
"""
from __future__ import annotations

from pathlib import Path

from host.errors import InputError, first_line
from host.families import check_config
from host.tokenizer import from_transformers


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
    return model.eval(), from_transformers(tokenizer, model.generation_config, where)

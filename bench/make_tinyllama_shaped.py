"""Write a Hugging Face checkpoint with TinyLlama-1.1B-Chat-v1.0's exact shapes and random weights.

No real TinyLlama weights exist here (no hub); speed and memory do not depend on weight values,
so this stands in for the real model in build-time and decode-speed measurements.
Run: python bench/make_tinyllama_shaped.py --out /tmp/tinyllama-shaped [--layers 22]
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
# TinyLlama-1.1B-Chat-v1.0's chat template is Zephyr's; the board detects it from this text.
ZEPHYR_JINJA = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)


def tinyllama_config(layers: int) -> LlamaConfig:
    """TinyLlama-1.1B-Chat-v1.0's config.json numbers, with `layers` decoder layers."""
    return LlamaConfig(
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers, num_attention_heads=32,
        num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5,
        rope_theta=10000.0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(tinyllama_config(args.layers)).to(torch.bfloat16)  # as published: bf16
    model.save_pretrained(args.out)
    shutil.copy(SHARED / "tokenizers/llama2/tokenizer.model", args.out / "tokenizer.model")
    (args.out / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>",
         "chat_template": ZEPHYR_JINJA}, indent=2))
    print(json.dumps({"out": str(args.out), "layers": args.layers,
                      "params": sum(p.numel() for p in model.parameters())}))


if __name__ == "__main__":
    main()

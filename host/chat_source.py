"""A model's chat template and stop tokens, as the bundle carries them to the board.

The Jinja template comes from tokenizer_config.json's `chat_template`, chat_template.jinja or
chat_template.json (transformers 5 writes those), or a GGUF's metadata; the board renders it
(board/jinja_template.py) with the special-token strings transformers passes (bos_token, ...).
An answer ends at the EOS id, at any id of generation_config.json's `eos_token_id` (an int or a
list), or at the template's end-of-turn token.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from host.errors import InputError

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")
# Tokens that close a turn in the chat formats models use (ChatML, Llama-3, Phi-3, Gemma).
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


@dataclass(frozen=True)
class ChatSource:
    jinja: str = ""  # the template's Jinja source; "" when the model has none
    source: str = "builtin"  # the file (or "gguf") it was read from
    special_tokens: dict = field(default_factory=dict)  # {"bos_token": "<s>", ...}
    stop_ids: list = field(default_factory=list)  # ids besides EOS that end an answer


def find_chat_template(directory: Path, config: dict) -> tuple[str, str]:
    """(Jinja source, file it came from); ("", "builtin") when the checkpoint has no template."""
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if template:
        return template, "tokenizer_config.json"
    if (directory / "chat_template.jinja").is_file():
        return (directory / "chat_template.jinja").read_text(), "chat_template.jinja"
    if (directory / "chat_template.json").is_file():
        return json.loads((directory / "chat_template.json").read_text()).get("chat_template", ""), "chat_template.json"
    return "", "builtin"


def special_token_strings(config: dict) -> dict:
    """The special-token strings of a tokenizer config (entries may be text or {"content": text})."""
    found = {}
    for name in SPECIAL_TOKEN_NAMES:
        entry = config.get(name)
        entry = entry.get("content") if isinstance(entry, dict) else entry
        if isinstance(entry, str):
            found[name] = entry
    return found


def stop_ids(tokenizer, jinja: str, eos_ids, eos_id: int) -> list[int]:
    """generation_config's EOS ids (int or list) and the template's end-of-turn token, EOS itself left out."""
    ids = [eos_ids] if isinstance(eos_ids, int) else list(eos_ids or [])
    ids += [tokenizer.token_to_id(t) for t in END_OF_TURN if t in jinja and tokenizer.token_to_id(t) is not None]
    return sorted({int(i) for i in ids} - {eos_id})


def read_generation_eos(directory: Path):
    """eos_token_id of generation_config.json (int, list or None)."""
    path = directory / "generation_config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("eos_token_id")
    except ValueError as e:
        raise InputError(f"{path}: not valid JSON ({e}); fix or remove it") from None


def chat_source(directory: Path | None, tokenizer, config: dict, eos_id: int) -> ChatSource:
    """The ChatSource of a checkpoint directory (its tokenizer config already read into `config`)."""
    if directory is None:
        return ChatSource()
    jinja, source = find_chat_template(directory, config)
    return ChatSource(jinja, source, special_token_strings(config),
                      stop_ids(tokenizer, jinja, read_generation_eos(directory), eos_id))

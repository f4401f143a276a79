"""A model's chat template, stop tokens and sampling defaults, as the bundle carries them to the board.

The Jinja template is what transformers' AutoTokenizer reads (tokenizer_config.json's `chat_template`,
chat_template.jinja or .json, a GGUF's metadata); a SentencePiece model's directory is read here. The
board renders it (board/jinja_template.py) with the special-token strings transformers passes. An
answer ends at the EOS id, at any id of generation_config.json's `eos_token_id` (an int or a list), or
at the template's end-of-turn token. Sampling defaults come from transformers' GenerationConfig.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from board.manifest import Sampling
from host.errors import InputError

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")
# Tokens that close a turn in the chat formats models use (ChatML, Llama-3, Phi-3, Gemma).
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")
# Substrings of a Jinja chat template that identify its family (board/chat_templates/NAME.jinja).
TEMPLATE_MARKERS = (("<|user|>", "zephyr"), ("[INST]", "llama2"), ("<|im_start|>", "chatml"))
# Text that ends an answer of each family besides its EOS id: the start of the next turn (never shown).
STOP_STRINGS = {"zephyr": ["<|user|>", "<|system|>"], "llama2": ["[INST]"], "chatml": ["<|im_end|>"], "none": []}


@dataclass(frozen=True)
class ChatSource:
    jinja: str = ""  # the template's Jinja source; "" when the model has none
    source: str = "builtin"  # the file (or "gguf") it was read from
    special_tokens: dict = field(default_factory=dict)  # {"bos_token": "<s>", ...}
    stop_ids: list = field(default_factory=list)  # ids besides EOS that end an answer
    sampling: Sampling = Sampling()  # generation_config.json's temperature, top_k, top_p, repetition_penalty


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


def detect_template(template: str) -> str:
    """The family of a Jinja template (zephyr, llama2, chatml, or none), by the markers it renders."""
    return next((name for marker, name in TEMPLATE_MARKERS if marker in template), "none")


def sampling_defaults(generation_config) -> Sampling:
    """What a transformers GenerationConfig says about sampling: greedy when do_sample is false, else the values it sets
    (transformers 5 leaves the unset ones None)."""
    if generation_config is None:
        return Sampling()
    if generation_config.do_sample is False:
        return Sampling(temperature=0.0)
    said = {name: getattr(generation_config, name, None) for name in ("temperature", "top_k", "top_p", "repetition_penalty")}
    kinds = {"top_k": int}
    return Sampling(**{k: None if v is None else kinds.get(k, float)(v) for k, v in said.items()})


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


def chat_source(directory: Path | None, tokenizer, config: dict, eos_id: int, generation_config=None) -> ChatSource:
    """The ChatSource of a converted (SentencePiece) tokenizer's checkpoint directory, its config read into `config`."""
    if directory is None:
        return ChatSource()
    jinja, source = find_chat_template(directory, config)
    eos_ids = getattr(generation_config, "eos_token_id", None)
    return ChatSource(jinja, source, special_token_strings(config), stop_ids(tokenizer, jinja, eos_ids, eos_id),
                      sampling_defaults(generation_config))


def transformers_chat_source(hf, generation_config, directory: Path | None) -> ChatSource:
    """The ChatSource of a tokenizer transformers loaded: from a checkpoint `directory`, or a GGUF (None)."""
    jinja = hf.chat_template or ""
    jinja = jinja.get("default", "") if isinstance(jinja, dict) else jinja
    specials = special_token_strings({name: getattr(hf, name, None) for name in SPECIAL_TOKEN_NAMES})
    eos_ids = getattr(generation_config, "eos_token_id", None)
    ids = stop_ids(hf.backend_tokenizer, jinja, eos_ids, hf.eos_token_id)
    source = "builtin" if not jinja else "gguf" if directory is None else _template_file(directory)
    return ChatSource(jinja, source, specials, ids, sampling_defaults(generation_config))


def _template_file(directory: Path) -> str:
    """The file transformers took the template from: chat_template.jinja/.json (transformers 5) before the config."""
    return next((n for n in ("chat_template.jinja", "chat_template.json") if (directory / n).is_file()), "tokenizer_config.json")

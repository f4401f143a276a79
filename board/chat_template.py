"""A conversation as the model reads it: OpenAI-style messages rendered with the bundle's Jinja chat
template (board/jinja_template.py), then encoded.

The template is the model's own, or the built-in one of its family (board/chat_templates/) that the
host wrote when the model has none; either way one engine renders it.
"""
from __future__ import annotations

from board.jinja_template import render_jinja
from board.manifest import ChatTemplate
from board.tokenizer import Tokenizer


def render_messages(tpl: ChatTemplate, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The text of `messages` ([{"role", "content"}, ...]) under the template, as transformers renders it."""
    return render_jinja(tpl.jinja, messages, add_generation_prompt, tpl.special_tokens)


def chat_ids(tokenizer: Tokenizer, tpl: ChatTemplate, messages: list[dict]) -> list[int]:
    """Token ids of a conversation ending with a user message; BOS as the manifest says, unless the template wrote it."""
    text = render_messages(tpl, messages)
    bos = tpl.special_tokens.get("bos_token")
    return tokenizer.encode(text, bos=not (bos and text.startswith(bos)))

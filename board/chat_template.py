"""Render a conversation with the manifest's chat template: the model's own Jinja template when the
bundle has one (board/jinja_template.py), else the built-in rules of board.manifest.ChatTemplate.

`render_messages` gives the text of a whole conversation ([{"role", "content"}, ...]) and
`chat_ids` its token ids; a chat feeds the cache only the ids past what it already holds. The
rule-based pieces (an opening, then one follow-up per later turn) concatenate to the same text.
"""
from __future__ import annotations

from board.jinja_template import render_jinja
from board.manifest import ChatTemplate
from board.tokenizer import Tokenizer

SLOT = "{content}"


def _fill(pattern: str, content: str) -> str:
    return pattern.replace(SLOT, content)


def assistant_close(tpl: ChatTemplate) -> str:
    """What follows the generated answer text in the template (e.g. '</s>\\n' for Zephyr)."""
    return tpl.assistant.split(SLOT, 1)[1] if SLOT in tpl.assistant else ""


def conversation(system: str, turns: list[tuple[str, str]], user: str) -> list[dict]:
    """Messages of a history [(user, answer), ...] and a new user message, with the system prompt if any."""
    messages = [{"role": "system", "content": system}] if system else []
    for question, answer in turns:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages + [{"role": "user", "content": user}]


def render_messages(tpl: ChatTemplate, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The text of a conversation that ends with a user message, as the model was trained to read it."""
    if tpl.jinja:
        return render_jinja(tpl.jinja, messages, add_generation_prompt, tpl.special_tokens)
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    rest = messages[1:] if system else messages
    users, answers = [m["content"] for m in rest[0::2]], [m["content"] for m in rest[1::2]]
    text = "".join(render_conversation(tpl, system, list(zip(users, answers)), users[-1]))
    return text if add_generation_prompt else text[: len(text) - len(tpl.generation_prompt)]


def chat_ids(tokenizer: Tokenizer, tpl: ChatTemplate, text: str) -> list[int]:
    """Token ids of rendered chat text; BOS as the manifest says, unless the template wrote it already."""
    bos = tpl.special_tokens.get("bos_token")
    return tokenizer.encode(text, bos=not (bos and text.startswith(bos)))


def render_opening(tpl: ChatTemplate, system: str, user: str) -> str:
    """System block (or Llama-2 in-user system prefix), the first user turn, the generation prompt."""
    system = system or tpl.default_system
    text = ""
    if system and tpl.system:
        text += _fill(tpl.system, system)
    elif system and tpl.system_in_user:
        user = _fill(tpl.system_in_user, system) + user
    return text + _fill(tpl.user, user) + tpl.generation_prompt


def render_followup(tpl: ChatTemplate, user: str) -> str:
    """Close the previous answer, then the next user turn and the generation prompt."""
    return assistant_close(tpl) + _fill(tpl.user, user) + tpl.generation_prompt


def render_conversation(tpl: ChatTemplate, system: str, turns: list[tuple[str, str]], user: str) -> list[str]:
    """Pieces for a whole history [(user, answer), ...] and a new user message, in feeding order."""
    users = [u for u, _ in turns] + [user]
    pieces = [render_opening(tpl, system, users[0])]
    for (_, answer), nxt in zip(turns, users[1:]):
        pieces += [answer, render_followup(tpl, nxt)]
    return pieces

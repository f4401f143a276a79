"""Render a conversation with the manifest's chat template (rules: board.manifest.ChatTemplate).

Text pieces only; the caller tokenizes them. A conversation is rendered as an opening (system +
first user turn + generation prompt) followed by one follow-up per later turn (the close of the
previous assistant answer + the user turn + generation prompt), so a chat can feed the cache
turn by turn, and the whole history renders to the same text when it must be re-encoded.
"""
from __future__ import annotations

from board.manifest import ChatTemplate

SLOT = "{content}"


def _fill(pattern: str, content: str) -> str:
    return pattern.replace(SLOT, content)


def assistant_close(tpl: ChatTemplate) -> str:
    """What follows the generated answer text in the template (e.g. '</s>\\n' for Zephyr)."""
    return tpl.assistant.split(SLOT, 1)[1] if SLOT in tpl.assistant else ""


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

"""Interactive chat: a multi-turn session on one KV cache, and the read-eval-print loop around it.

Each turn renders the whole conversation (OpenAI-style messages) with the bundle's chat template and
lets the engine keep the longest prefix of those ids it already holds (`Engine.reuse_prefix`, as the
server does), so only the rest is fed. When that rest and an answer would run past the model's
position range, or the cache lost its prefix to eviction, the history is re-encoded from scratch,
trimmed to the newest turns that fit the KV window. Ctrl-C stops the current answer, not the
session; /reset and /exit.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace

import numpy as np

from board.chat_template import chat_ids
from board.engine import Engine
from board.errors import BoardError
from board.generate import GenerateConfig, GenerationResult, finish_mark, generate
from board.manifest import ChatTemplate
from board.tokenizer import Tokenizer


@dataclass
class ChatSession:
    engine: Engine
    tokenizer: Tokenizer
    template: ChatTemplate
    cfg: GenerateConfig
    rng: np.random.Generator
    system: str = ""
    messages: list = field(default_factory=list)  # the history: user and assistant messages, alternating
    rebuilds: int = 0  # times the history was re-encoded (position range exhausted, or its prefix evicted)

    def reset(self) -> None:
        self.engine.reset()
        self.messages = []

    def ask(self, user: str, on_text=None, on_notice=None) -> GenerationResult:
        """Answer one user message, streaming text to on_text; the turn is kept in the history."""
        history, cfg = self.messages, self.cfg
        ids = self._ids(history, user)
        cached = self.engine.reuse_prefix(ids)
        evicted = history and not cached and len(ids) + cfg.max_new_tokens > self.engine.cache.kv_len
        if len(ids) - cached + cfg.max_new_tokens > self.engine.positions_left or evicted:
            history, ids, cfg = self._rebuild(user, on_notice)
            cached = 0
        result = generate(self.engine, self.tokenizer, ids[cached:], cfg, self.rng, on_text)
        # a prompt cut before any answer is left out of the history (the next turn's prefix reuse drops it)
        if result.finish_reason != "interrupted" or result.tokens:
            self.messages = history + [_message("user", user), _message("assistant", result.text)]
        return result

    def _ids(self, history: list, user: str) -> list[int]:
        """Ids of the whole conversation (system prompt, history, the new message) with the generation prompt."""
        system = [_message("system", self.system)] if self.system else []
        return chat_ids(self.tokenizer, self.template, system + history + [_message("user", user)])

    def _rebuild(self, user: str, on_notice=None) -> tuple[list, list[int], GenerateConfig]:
        """Reset the cache and encode the newest turns that fit the window beside the message and its answer.

        The user's message is never cut: when it and a full answer do not fit the KV window, the
        answer budget shrinks (and on_notice says so); a message that alone fills the window is refused.
        """
        self.engine.reset()
        self.rebuilds += 1
        kv_len = self.engine.cache.kv_len
        message = self._ids([], user)
        room = min(kv_len, self.engine.positions_left) - len(message)
        if room < 1:
            raise BoardError(
                f"your message is {len(message)} tokens; with the template it must leave room for an answer in the "
                f"{kv_len}-token window: shorten it (or rebuild the bundle with a larger --kv-len)"
            )
        cfg = self.cfg
        if room < cfg.max_new_tokens:
            cfg = replace(cfg, max_new_tokens=room)
            (on_notice or (lambda text: None))(
                f"[answer limited to {room} tokens so that your {len(message)}-token message fits the {kv_len}-token window]"
            )
        for start in range(0, len(self.messages) + 1, 2):  # whole turns: a user message and its answer
            history = self.messages[start:]
            ids = self._ids(history, user)
            if len(ids) + cfg.max_new_tokens <= kv_len:
                break
        return history, ids, cfg


def _message(role: str, content: str) -> dict:
    return {"role": role, "content": content}


HELP = "/reset clears the conversation, /exit (or Ctrl-D) quits; Ctrl-C stops the current answer"


def run_repl(session: ChatSession, read=input, out=sys.stdout) -> int:
    """Read lines, answer them; returns the exit status (0)."""
    print(HELP, file=out, flush=True)
    while True:
        try:
            line = read("> ")
        except EOFError:  # Ctrl-D
            print(file=out)
            return 0
        except KeyboardInterrupt:  # Ctrl-C at the prompt only clears the line
            print(file=out)
            continue
        line = line.strip()
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            session.reset()
            print("[conversation cleared]", file=out, flush=True)
            continue
        if not line:
            continue
        try:
            result = session.ask(line, on_text=lambda piece: print(piece, end="", file=out, flush=True),
                                 on_notice=lambda text: print(text, file=out, flush=True))
        except BoardError as e:  # e.g. a message too long for the window: say so, keep the session
            print(f"error: {e}", file=out, flush=True)
            continue
        print(finish_mark(result.finish_reason), file=out, flush=True)

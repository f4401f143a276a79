"""Interactive chat: a multi-turn session on one KV cache, and the read-eval-print loop around it.

Each turn renders the whole conversation with the bundle's chat template and feeds only the text
past what the cache already holds; when the rendering no longer starts with that text (the
template rewrote an earlier turn), or the model's position range would run out, the history is
re-encoded from scratch, trimmed to the newest turns that fit the KV window. Ctrl-C stops the
current answer, not the session; /reset and /exit.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace

import numpy as np

from board.chat_template import chat_ids, conversation, render_messages
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
    turns: list = field(default_factory=list)  # [(user, answer)]
    rebuilds: int = 0  # times the history was re-encoded (position range exhausted, or interrupted prefill)
    _unfed: list = field(default_factory=list)  # ids of the last answer not in the cache yet
    _held: str = ""  # the rendered text the cache holds: last prompt and answer
    _dirty: bool = False  # the cache holds a half-fed prompt (interrupted prefill)

    def reset(self) -> None:
        self.engine.reset()
        self.turns, self._unfed, self._dirty = [], [], False

    def ask(self, user: str, on_text=None, on_notice=None) -> GenerationResult:
        """Answer one user message, streaming text to on_text; the turn is kept in the history."""
        text = self._render(self.turns, user)
        ids, cfg = (None if self._dirty else self._new_ids(text)), self.cfg
        if ids is None or len(ids) + cfg.max_new_tokens > self.engine.positions_left:
            ids, text, cfg = self._rebuild(user, on_notice)
        result = generate(self.engine, self.tokenizer, ids, cfg, self.rng, on_text)
        self._dirty = result.finish_reason == "interrupted" and not result.tokens
        if not self._dirty:
            self.turns.append((user, result.text))
            self._unfed, self._held = result.unfed, text + result.text
        return result

    def _render(self, turns: list, user: str) -> str:
        """The whole conversation (history, then the new message) with the generation prompt."""
        return render_messages(self.template, conversation(self.system, turns, user))

    def _new_ids(self, text: str) -> list[int] | None:
        """Ids that bring the cache to `text`: the answer ids not yet fed, then the new suffix's;
        None when `text` does not start with what the cache holds (the template rewrote the history)."""
        if not self.turns:
            self.engine.reset()
            return chat_ids(self.tokenizer, self.template, text)
        if len(text) <= len(self._held) or not text.startswith(self._held):
            return None
        return self._unfed + self.tokenizer.encode(text[len(self._held) :])

    def _rebuild(self, user: str, on_notice=None) -> tuple[list[int], str, GenerateConfig]:
        """Reset the cache and encode the newest turns that fit the window beside the message and its answer.

        The user's message is never cut: when it and a full answer do not fit the KV window, the
        answer budget shrinks (and on_notice says so); a message that alone fills the window is refused.
        """
        self.engine.reset()
        self.rebuilds += 1
        kv_len = self.engine.cache.kv_len
        message = chat_ids(self.tokenizer, self.template, self._render([], user))
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
        for start in range(len(self.turns) + 1):
            text = self._render(self.turns[start:], user)
            ids = chat_ids(self.tokenizer, self.template, text)
            if len(ids) + cfg.max_new_tokens <= kv_len:
                break
        self.turns = self.turns[start:]
        return ids, text, cfg


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

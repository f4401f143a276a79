"""Interactive chat: a multi-turn session on one KV cache, and the read-eval-print loop around it.

Each turn feeds only the new text (the close of the last answer + the user turn). When the model's
position range would run out, the history is re-encoded from scratch, trimmed to the newest turns
that fit the KV window. Ctrl-C stops the current answer, not the session; /reset and /exit.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

from board.chat_template import render_conversation, render_followup, render_opening
from board.engine import Engine
from board.generate import GenerateConfig, GenerationResult, generate
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
    _unfed: list = field(default_factory=list)
    _dirty: bool = False  # the cache holds a half-fed prompt (interrupted prefill)

    def reset(self) -> None:
        self.engine.reset()
        self.turns, self._unfed, self._dirty = [], [], False

    def ask(self, user: str, on_text=None) -> GenerationResult:
        """Answer one user message, streaming text to on_text; the turn is kept in the history."""
        if self._dirty:
            ids = self._rebuild(user)
        elif self.turns:
            ids = self._unfed + self.tokenizer.encode(render_followup(self.template, user))
        else:
            self.engine.reset()
            ids = self.tokenizer.encode(render_opening(self.template, self.system, user), bos=True)
        if len(ids) + self.cfg.max_new_tokens > self.engine.positions_left:
            ids = self._rebuild(user)
        result = generate(self.engine, self.tokenizer, ids, self.cfg, self.rng, on_text)
        self._dirty = result.finish_reason == "interrupted" and not result.tokens
        if not self._dirty:
            self.turns.append((user, result.text))
            self._unfed = result.unfed
        return result

    def _rebuild(self, user: str) -> list[int]:
        """Reset the cache and encode the newest turns that fit the window with room for an answer."""
        self.engine.reset()
        self.rebuilds += 1
        budget = self.engine.cache.kv_len - self.cfg.max_new_tokens
        for start in range(len(self.turns) + 1):
            pieces = render_conversation(self.template, self.system, self.turns[start:], user)
            ids = self.tokenizer.encode(pieces[0], bos=True)
            for piece in pieces[1:]:
                ids += self.tokenizer.encode(piece)
            if len(ids) <= budget:
                break
        self.turns = self.turns[start:]
        # a single over-long message still goes in (its end): the cache evicts as it prefills
        keep = max(1, min(len(ids), self.engine.positions_left - self.cfg.max_new_tokens))
        return ids[len(ids) - keep :]


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
        result = session.ask(line, on_text=lambda piece: print(piece, end="", file=out, flush=True))
        suffix = " [stopped]" if result.finish_reason == "interrupted" else ""
        print(suffix, file=out, flush=True)

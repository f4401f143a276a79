"""Streaming text out of token ids: never emit half a UTF-8 character, never emit a stop string.

TextStream wraps tokenizers' DecodeStream (which re-decodes a short window and emits only the new,
complete suffix, keeping SentencePiece's leading spaces right) and hands out what it still holds at
the end. StopFilter holds back text that could still turn into a stop string.
"""
from __future__ import annotations

from tokenizers.decoders import DecodeStream


class TextStream:
    """Feed ids one at a time; `push` returns the text that is now certain (maybe '')."""

    def __init__(self, tokenizer, context_ids=()):
        self._tok = tokenizer  # a tokenizers.Tokenizer
        # already-printed ids give the decoder its left context (e.g. the space before a word)
        self._stream = DecodeStream(ids=[int(i) for i in context_ids], skip_special_tokens=True)
        self._pending: list[int] = []  # ids since the last text: an incomplete character so far

    def push(self, token_id: int) -> str:
        text = self._stream.step(self._tok, int(token_id))
        self._pending = [] if text is not None else self._pending + [int(token_id)]
        return text or ""

    def flush(self) -> str:
        """What is pending at the end: an incomplete character decodes as U+FFFD, as a full decode gives it."""
        text, self._pending = (self._tok.decode(self._pending, skip_special_tokens=True) if self._pending else ""), []
        return text


class StopFilter:
    """Passes text through until a stop string appears; never lets any part of a stop string out."""

    def __init__(self, stop_strings):
        self.stops = [s for s in stop_strings if s]
        self._pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        if self.stopped:
            return ""
        self._pending += text
        hits = [i for i in (self._pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self._pending = self._pending[: min(hits)], ""
            return out
        hold = self._longest_stop_prefix_suffix()
        out = self._pending[: len(self._pending) - hold]
        self._pending = self._pending[len(self._pending) - hold :]
        return out

    def flush(self) -> str:
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out

    def _longest_stop_prefix_suffix(self) -> int:
        """Length of the longest tail of pending text that is a proper start of some stop string."""
        best = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self._pending)), best, -1):
                if self._pending.endswith(stop[:k]):
                    best = k
                    break
        return best

"""Streaming text out of token ids: never emit half a UTF-8 character, never emit a stop string.

StreamDecoder re-decodes a short window of recent ids and emits only the new, complete suffix (the
approach of text-generation-inference), which also keeps SentencePiece's leading spaces right.
StopFilter holds back text that could still turn into a stop string.
"""
from __future__ import annotations

REPLACEMENT = "\ufffd"  # what a decoder yields for an incomplete byte sequence


class StreamDecoder:
    """Feed ids one at a time; `push` returns the text that is now certain (maybe '')."""

    def __init__(self, decode, context_ids=()):
        self._decode = decode
        # a few already-printed ids give the decoder its left context (e.g. the space before a word)
        self._ids = list(context_ids)[-4:]
        self._prefix = 0
        self._read = len(self._ids)

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        if len(text) > len(before) and not text.endswith(REPLACEMENT):
            self._prefix, self._read = self._read, len(self._ids)
            return text[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is pending at the end (an incomplete character stays as U+FFFD)."""
        before = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return text[len(before) :]


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

"""The bundle's tokenizer (Hugging Face `tokenizers` JSON) with the manifest's BOS rule applied.

The board always encodes with add_special_tokens=False and prepends tokens.bos_id itself, so the
same ids come out whatever post-processor the host's tokenizer.json carries.
"""
from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer

from board.detokenize import TextStream
from board.manifest import BundleError, Tokens


class Tokenizer:
    """Encode/decode text for one bundle; `encode(text, bos=True)` adds BOS when the manifest asks."""

    def __init__(self, path: Path, tokens: Tokens):
        try:
            self._tok = _HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception on bad JSON
            raise BundleError(f"{path}: not a readable tokenizers JSON ({e}); rebuild the bundle") from None
        self.tokens = tokens

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, bos: bool = False) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return ([self.tokens.bos_id] if bos and self.tokens.add_bos else []) + ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def stream(self, context_ids=()) -> TextStream:
        """A streaming decoder whose output continues the text of `context_ids` (board/detokenize.py)."""
        return TextStream(self._tok, context_ids)

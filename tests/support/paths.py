"""Where the checkout and ../shared live, and a skip naming the file when ../shared lacks it."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
STORIES_BIN = SHARED / "models/stories260K/stories260K.bin"
STORIES_TOK = SHARED / "models/stories260K/tok512.bin"
LLAMA2_TOKENIZER = SHARED / "tokenizers/llama2/tokenizer.model"
TINYSTORIES_TEXT = SHARED / "data/tinystories-valid-part1.txt"
WIKITEXT = SHARED / "data/wikitext-2-raw-wiki.test.raw"


def need(path: Path) -> Path:
    """Skip the test, naming the file, when ../shared does not have it."""
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared is not beside this checkout)")
    return path

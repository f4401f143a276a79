"""Shared test fixtures: where ../shared lives, and skips with a reason when it does not."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
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


# --- bundles (owner: host pipeline) ---------------------------------------------------------
# Complete bundles of a tiny random Llama, built once per test session by the real host
# pipeline (tests/bundles.py). Treat them as read-only; copy one before modifying it.
@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """fp32 bundle: 2 layers, hidden 64, GQA 4/2 heads, vocab 320, KV 64, prefill chunks [1, 8, 16]."""
    from bundles import build_test_bundle

    return build_test_bundle(tmp_path_factory.mktemp("bundles") / "tiny", quant="none")


@pytest.fixture(scope="session")
def tiny_w8a8_bundle(tmp_path_factory) -> Path:
    """The same model as `tiny_bundle`, W8A8 (u8u8 dialect, per-token dynamic activations)."""
    from bundles import build_test_bundle

    return build_test_bundle(tmp_path_factory.mktemp("bundles") / "tiny-w8a8", quant="w8a8")


@pytest.fixture(scope="session")
def stories_bundles(tmp_path_factory) -> dict:
    """The real stories260K model (../shared) built by the host pipeline: {"none": fp32, "w8a8": W8A8} bundles."""
    from host.build import BuildConfig, build

    root = tmp_path_factory.mktemp("stories")
    return {
        quant: build(BuildConfig(model=str(need(STORIES_BIN)), tokenizer=str(need(STORIES_TOK)),
                                 calib=need(TINYSTORIES_TEXT), quant=quant, kv_len=128, out=root / quant)).path
        for quant in ("none", "w8a8")
    }


@pytest.fixture(scope="session")
def stories_bundle(stories_bundles) -> Path:
    """The fp32 stories260K bundle."""
    return stories_bundles["none"]


# --- a real chat model (tests/support/models.py) ---------------------------------------------
@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct, fetched once into ~/.cache/edge-llm/models: `.gguf` and `.hf_dir`."""
    from tests.support.models import smollm2 as fetch

    return fetch()

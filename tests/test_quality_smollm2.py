"""The default W8A8 recipe on a real chat model (SmolLM2-135M-Instruct): issue 13's acceptance.

Slow (two 30-layer builds and 16 windows of 512 positions each; ~25 min on 2 busy cores): opt in
with -m slow. Calibration takes 16 x 128 tokens from the start of the TinyStories file; the
perplexity text starts at byte 200000 of it, so none of it was calibrated on.
"""
import json
import subprocess
import sys

import pytest

from tests.support.paths import ROOT, TINYSTORIES_TEXT, need

QUESTION = "What is the capital of France? Answer in one sentence."
CTX, TOKENS = 512, 16 * 511  # 8176 tokens in 16 full windows


def board(*args) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "board", *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.slow
def test_default_w8a8_is_within_one_percent_of_fp32_and_answers_paris(smollm2, tmp_path):
    text = tmp_path / "heldout.txt"
    text.write_bytes(need(TINYSTORIES_TEXT).read_bytes()[200000:])  # = tail -c +200001
    result = {}
    for quant in ("none", "w8a8"):
        out = tmp_path / quant
        subprocess.run([sys.executable, "-m", "host", "build", "--model", str(smollm2.hf_dir), "--calib",
                        str(need(TINYSTORIES_TEXT)), "--quant", quant, "--kv-len", str(CTX), "--out", str(out)],
                       cwd=ROOT, check=True, capture_output=True)
        result[quant] = json.loads(board("perplexity", "--bundle", out, "--text", text, "--ctx", CTX,
                                         "--max-tokens", TOKENS, "--json").stdout)
        answer = json.loads(board("generate", "--bundle", out, "--chat", "--greedy", "--prompt", QUESTION,
                                  "--max-new-tokens", 40, "--json").stdout)["text"]
        assert "Paris" in answer, (quant, answer)
    assert result["w8a8"]["tokens"] == result["none"]["tokens"] == TOKENS
    assert result["w8a8"]["perplexity"] / result["none"]["perplexity"] < 1.01, result

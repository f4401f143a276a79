"""bench/compare_llamacpp.py without llama.cpp: the same ids for both sides, one-line errors for what is missing.

The comparison itself is a benchmark (minutes, a compiled llama.cpp), never part of the test run.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.compare_llamacpp import token_ids
from tests.support.bundles import make_model

ROOT = Path(__file__).resolve().parents[1]


def compare(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench/compare_llamacpp.py", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_both_sides_get_a_bos_prompt_and_decode_ids_inside_the_vocabulary():
    prompt, decode = token_ids(512, 1, 64, 32)
    assert len(prompt) == 64 and prompt[0] == 1 and len(decode) == 32
    assert all(100 <= t < 512 for t in prompt[1:] + decode)
    assert (prompt, decode) == token_ids(512, 1, 64, 32)  # deterministic: every run times the same ids


def test_a_python_without_llama_cpp_is_one_line_naming_the_setup_and_exit_2(tiny_bundle, tmp_path):
    make_model().save_pretrained(tmp_path / "hf")  # the checkpoint tiny_bundle is built from (same shapes)
    r = compare(tmp_path / "hf", "--bundle", tiny_bundle, "--prompt-tokens", 8, "--new-tokens", 4,
                "--peer-python", sys.executable, "--work", tmp_path / "work")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "llama-cpp-python is not importable" in r.stderr
    assert "setup-llamacpp.sh" in r.stderr and not (tmp_path / "work").exists()  # nothing converted


def test_a_bundle_of_another_model_is_refused_before_anything_runs(tiny_bundle, tmp_path):
    make_model(layers=3).save_pretrained(tmp_path / "hf")
    r = compare(tmp_path / "hf", "--bundle", tiny_bundle, "--peer-python", sys.executable)
    assert r.returncode == 2 and "was not built from" in r.stderr and r.stderr.count("\n") == 1


def test_a_directory_without_config_is_refused(tiny_bundle, tmp_path):
    r = compare(tmp_path, "--bundle", tiny_bundle)
    assert r.returncode == 2 and "no config.json" in r.stderr

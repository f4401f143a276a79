"""A real tiny bundle deployed over SSH: `fab generate / bench / chat` run the board's CLI on it."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.paths import ROOT
from tests.support.sshd import FAB, fab, write_inventory

pytestmark = pytest.mark.ssh
PROMPT = "once upon a time"


@pytest.fixture(scope="module")
def deployed(sshd, tiny_bundle, tmp_path_factory):
    """The tiny bundle deployed to the sshd board; the inventory."""
    tmp = tmp_path_factory.mktemp("generate")
    inventory = write_inventory(tmp / "inventory.yml", sshd.board(tmp / "board"))
    r = fab(inventory, "deploy", "--bundle", str(tiny_bundle))
    assert r.returncode == 0, r.stderr
    return inventory


def board_locally(bundle, *args: str) -> str:
    """What `python -m board ARGS` prints when run here on the same bundle."""
    p = subprocess.run([sys.executable, "-m", "board", *args, "--bundle", str(bundle)], cwd=ROOT,
                       capture_output=True, text=True, check=True)
    return p.stdout


def test_fab_generate_prints_the_same_text_as_the_board_cli_run_locally(deployed, tiny_bundle):
    r = fab(deployed, "generate", "--prompt", PROMPT, "--max-new-tokens", "12", "--greedy")
    assert r.returncode == 0, r.stderr
    expected = board_locally(tiny_bundle, "generate", "--prompt", PROMPT, "--max-new-tokens", "12", "--greedy")
    assert r.stdout == expected and len(expected.strip()) > 0


def test_fab_bench_prints_the_boards_json_with_its_name(deployed):
    r = fab(deployed, "bench", "--prompt-tokens", "8", "--new-tokens", "4")
    assert r.returncode == 0, r.stderr
    (line,) = r.stdout.strip().splitlines()
    result = json.loads(line)
    assert result["board"] == "testboard" and result["model"] == "tiny-random-llama"
    assert result["decode_tok_s_median"] > 0 and result["prefill_tok_s"] > 0


def test_fab_status_names_the_model_of_the_current_release(deployed):
    r = fab(deployed, "status")
    assert r.returncode == 0, r.stderr
    assert "model tiny-random-llama, quantization none, kv 64, onnx" in r.stdout


def test_fab_chat_with_piped_input_answers_as_the_board_cli_does_and_ends_at_eof(deployed, tiny_bundle):
    typed = "hello\n"  # no /exit: the end of the input ends the chat, as Ctrl-D does
    env = {**os.environ, "EDGE_LLM_INVENTORY": str(deployed)}
    p = subprocess.run([str(FAB), "chat"], cwd=ROOT, env=env, input=typed, capture_output=True, text=True, timeout=60)
    local = subprocess.run([sys.executable, "-m", "board", "chat", "--bundle", str(tiny_bundle)], cwd=ROOT,
                           input=typed, capture_output=True, text=True, timeout=60)
    assert p.returncode == local.returncode == 0, p.stderr
    assert local.stdout.split("> ")[1].strip()  # the model answered
    assert p.stdout == local.stdout  # piped, not a pty: the same bytes as on the board


def test_fab_chat_from_dev_null_ends_instead_of_waiting_forever(deployed):
    env = {**os.environ, "EDGE_LLM_INVENTORY": str(deployed)}
    p = subprocess.run([str(FAB), "chat"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=60)  # it used to wait for a key on the board's pty
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr

"""A real tiny bundle deployed over SSH: `fab generate / bench / chat` run the board's CLI on it."""
from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import subprocess
import sys
import termios
import time

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


def read_until(fd: int, marker: bytes, seen: bytes, timeout: float = 60) -> bytes:
    """Read the pty until `marker` shows once more than in what was `seen`; the whole transcript."""
    deadline, want = time.monotonic() + timeout, seen.count(marker) + 1
    while seen.count(marker) < want:
        if time.monotonic() > deadline:
            raise AssertionError(f"no {marker!r} within {timeout} s; the terminal showed {seen[-400:]!r}")
        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            try:
                seen += os.read(fd, 4096)
            except OSError:  # EIO: the terminal closed
                break
    return seen


def test_fab_chat_on_a_terminal_answers_through_the_boards_pty_and_exits(deployed, tiny_bundle):
    local = subprocess.run([sys.executable, "-m", "board", "chat", "--bundle", str(tiny_bundle)], cwd=ROOT,
                           input="hello\n", capture_output=True, text=True, timeout=60)
    answer = local.stdout.split("> ")[1].strip()
    master, slave = pty.openpty()
    env = {**os.environ, "EDGE_LLM_INVENTORY": str(deployed)}
    # the pty is fab's controlling terminal, as in a shell: only then does invoke put it in cbreak mode
    proc = subprocess.Popen([str(FAB), "chat"], cwd=ROOT, env=env, stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(slave)
    try:
        shown = read_until(master, b"> ", b"")
        os.write(master, b"hello\r")
        shown = read_until(master, b"> ", shown)
        os.write(master, b"/exit\r")
        shown = read_until(master, b"\n", shown + b"/exit", timeout=30)  # the echo of /exit
        assert proc.wait(timeout=60) == 0, shown
    finally:
        proc.kill()
        os.close(master)
    text = shown.decode(errors="replace").replace("\r\n", "\n")
    assert "/reset clears the conversation" in text and "hello" in text  # the board's REPL, the echoed line
    assert answer and answer in text  # the same sampled answer as the board CLI run locally (same seed)

"""What `fab deploy` guarantees (docs/deploy.md), each against a real sshd on 127.0.0.1.

Integrity rule before upload, no symlinks, escaped manifest strings, one deploy at a time,
the board's own check before the switch, and a Ctrl-C that says whether `current` moved.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.paths import ROOT
from tests.support.sshd import FAB, fab, synthetic_bundle, write_inventory

pytestmark = pytest.mark.ssh


def current(board: Path) -> str | None:
    link = board / "current"
    return os.readlink(link).split("/")[-1] if link.is_symlink() else None


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def edit_manifest(bundle: Path, change) -> None:
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.fixture
def board_dir(sshd, tmp_path):
    """The board's install path, listed by the `inventory.yml` beside it."""
    write_inventory(tmp_path / "inventory.yml", sshd.board(tmp_path / "board"))
    return tmp_path / "board"


@pytest.fixture
def inventory(board_dir):
    return board_dir.parent / "inventory.yml"


def start_deploy(inventory: Path, bundle: Path) -> subprocess.Popen:
    env = {**os.environ, "EDGE_LLM_INVENTORY": str(inventory)}
    return subprocess.Popen([str(FAB), "deploy", "--bundle", str(bundle)], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def wait_for(condition, what: str, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            pytest.fail(f"fab ended before {what}: {proc.communicate()}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"{what} never happened")


def partial_upload(board: Path) -> bool:
    """model.onnx of the deploy in progress is on the board, but not all of it."""
    partial = list((board / "releases").glob(".incoming-*/model.onnx")) if (board / "releases").is_dir() else []
    return bool(partial) and 0 < partial[0].stat().st_size < 32 << 20


# --- integrity rule (issue 10 #1, #2, #4) --------------------------------------------------
@pytest.mark.parametrize("change, why", [
    (lambda m: m.update(tokenizer="other.json"), "tokenizer 'other.json' is not listed in `files`"),
    (lambda m: m["graph"].update(onnx="../outside.onnx"), "graph.onnx '../outside.onnx' is not listed in `files`"),
    (lambda m: m["files"].update({"/etc/hostname": m["files"]["model.onnx"]}), "file name '/etc/hostname' would escape"),
    (lambda m: m["files"].update({".release.json": m["files"]["model.onnx"]}), "file name '.release.json' would escape or clash"),
])
def test_a_file_the_board_would_open_unverified_is_refused_before_upload(inventory, board_dir, tmp_path, change, why):
    bundle = synthetic_bundle(tmp_path / "bundle")
    (bundle / "other.json").write_bytes((bundle / "tokenizer.json").read_bytes())
    (tmp_path / "outside.onnx").write_bytes(b"unverified")
    edit_manifest(bundle, change)
    r = fab(inventory, "deploy", "--bundle", str(bundle))
    assert r.returncode == 2
    assert one_line(r.stderr).startswith(f"refusing to deploy: {bundle / 'manifest.json'}: ") and why in r.stderr
    assert not board_dir.exists()  # nothing was sent


def test_a_symlink_inside_the_bundle_is_refused_not_followed(inventory, board_dir, tmp_path):
    bundle = synthetic_bundle(tmp_path / "bundle")
    secret = tmp_path / "secret.json"
    secret.write_bytes((bundle / "tokenizer.json").read_bytes())  # same bytes: the checksum alone would pass
    (bundle / "tokenizer.json").unlink()
    (bundle / "tokenizer.json").symlink_to(secret)
    r = fab(inventory, "deploy", "--bundle", str(bundle))
    assert r.returncode == 2
    assert one_line(r.stderr) == (f"refusing to deploy: {bundle / 'tokenizer.json'}: a symlink inside the bundle (a bundle "
                                  f"holds files, never links); put the file itself there (cp --dereference) or rebuild the bundle")
    assert not board_dir.exists()


# --- strings from a manifest reach the terminal escaped (issue 10 #3) -----------------------
def test_status_and_doctor_print_a_manifest_s_terminal_escapes_escaped(inventory, tmp_path):
    evil = "tiny\x1b[2J\x1b]0;owned\x07\u202e"
    bundle = synthetic_bundle(tmp_path / "bundle", model=evil)
    assert fab(inventory, "deploy", "--bundle", str(bundle)).returncode == 0
    status = fab(inventory, "status")
    doctor = fab(inventory, "doctor", "--bundle", str(bundle))
    for out in (status.stdout, doctor.stdout):
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "model tiny\\x1b[2J\\x1b]0;owned\\x07\\u202e, quantization none" in status.stdout
    assert "bundle tiny\\x1b[2J\\x1b]0;owned\\x07\\u202e is already there" in doctor.stdout
    assert json.loads(fab(inventory, "status", "--json").stdout)["bundle"]["model"] == evil  # JSON keeps the value


# --- bad input: one line, status 2 (issue 10 #8) ---------------------------------------------
def test_a_binary_inventory_or_key_file_and_a_bad_count_are_one_line_and_status_2(sshd, tmp_path):
    binary = tmp_path / "binary"
    binary.write_bytes(bytes(range(256)) * 4)
    r = fab(binary, "status")
    assert r.returncode == 2
    assert one_line(r.stderr) == f"inventory: {binary}: not a text file (an inventory is YAML); set EDGE_LLM_INVENTORY to the right file"
    inventory = write_inventory(tmp_path / "inv.yml", sshd.board(tmp_path / "b", key=str(binary)))
    r = fab(inventory, "status")
    assert r.returncode == 2
    assert one_line(r.stderr).startswith(f"inventory: board 'testboard': key {binary} is not an SSH private key (")
    r = fab(write_inventory(tmp_path / "ok.yml", sshd.board(tmp_path / "b")), "generate", "--prompt", "hi",
            "--max-new-tokens", "x")
    assert r.returncode == 2
    assert one_line(r.stderr) == "generate: --max-new-tokens must be a whole number >= 1, not 'x'"


# --- one deploy at a time (issue 10 #12) -------------------------------------------------------
def test_a_second_deploy_is_told_who_holds_the_lock_and_the_first_one_completes(inventory, board_dir, tmp_path):
    big = synthetic_bundle(tmp_path / "big", model="big", weights=os.urandom(64 << 20))
    first = start_deploy(inventory, big)
    wait_for(lambda: partial_upload(board_dir), "the first upload started", first)
    r = fab(inventory, "deploy", "--bundle", str(synthetic_bundle(tmp_path / "small", model="small")))
    assert r.returncode == 1
    assert re.fullmatch(r"testboard: another deploy holds the board's lock \([^@]+@[^,]+, pid \d+: deploy [0-9a-f]{16}, "
                        r"since \d\d:\d\d:\d\d UTC\); wait for it to finish, then run `fab deploy` again",
                        one_line(r.stderr)), r.stderr
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err  # its incoming dir was left alone
    assert out.strip().endswith(f"current -> {current(board_dir)}")
    assert json.loads((board_dir / "current" / ".release.json").read_text())["bundle"]["model"] == "big"
    assert fab(inventory, "deploy", "--bundle", str(tmp_path / "small")).returncode == 0  # the lock went with it


# --- the board's own check before the switch (issue 10 #13) ------------------------------------
def test_a_board_python_without_numpy_is_refused_before_the_switch_with_the_fix(sshd, tmp_path, board_dir):
    ok = write_inventory(tmp_path / "ok.yml", sshd.board(board_dir))
    assert fab(ok, "deploy", "--bundle", str(synthetic_bundle(tmp_path / "a", model="a"))).returncode == 0
    before = current(board_dir)
    bare = tmp_path / "bare"  # a python with the standard library only, as on a board before `fab setup`
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(bare)], check=True)
    inventory = write_inventory(tmp_path / "bare.yml", sshd.board(board_dir, python=str(bare / "bin" / "python")))
    r = fab(inventory, "deploy", "--bundle", str(synthetic_bundle(tmp_path / "b", model="b")))
    assert r.returncode == 1
    line = one_line(r.stderr)
    assert line.startswith(f"testboard: the board's python {bare / 'bin' / 'python'} cannot import jinja2 (ModuleNotFoundError")
    assert "; numpy (ModuleNotFoundError" in line and "; tokenizers (ModuleNotFoundError" in line
    assert line.endswith(f"current unchanged ({before}); run `fab setup --board testboard`")
    assert current(board_dir) == before and not list((board_dir / "releases").glob(".incoming-*"))


# --- Ctrl-C says whether `current` moved (issue 10 #6, #15) --------------------------------------
def slow_python(tmp_path: Path, op: str) -> Path:
    """A board python that marks and stalls the board-side step `op`, so Ctrl-C lands inside it."""
    script = tmp_path / f"slow-{op}"
    script.write_text(f'#!/bin/sh\nif [ "$3" = {op} ]; then touch {tmp_path}/reached-{op}; sleep 2; fi\n'
                      f'exec {sys.executable} "$@"\n')
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("op", ["verify", "activate"])
def test_ctrl_c_on_the_board_step_says_whether_current_moved(sshd, tmp_path, board_dir, op):
    inventory = write_inventory(tmp_path / "inv.yml", sshd.board(board_dir, python=str(slow_python(tmp_path, op))))
    assert fab(inventory, "deploy", "--bundle", str(synthetic_bundle(tmp_path / "a", model="a"))).returncode == 0
    (tmp_path / f"reached-{op}").unlink()
    before = current(board_dir)
    proc = start_deploy(inventory, synthetic_bundle(tmp_path / "b", model="b"))
    wait_for(lambda: (tmp_path / f"reached-{op}").exists(), f"the board-side {op}", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    after = current(board_dir)
    if op == "verify":
        assert after == before
        assert one_line(err) == (f"testboard: interrupted while verifying the upload on the board, before the switch; "
                                 f"current unchanged ({before}); run `fab deploy` again")
        assert not list((board_dir / "releases").glob(".incoming-*"))
    else:
        assert after != before
        assert one_line(err) == f"testboard: interrupted during the switch, which completed: current -> {after} (was {before})"


def test_ctrl_c_mid_upload_says_interrupted_and_current_stays(inventory, board_dir, tmp_path):
    assert fab(inventory, "deploy", "--bundle", str(synthetic_bundle(tmp_path / "a", model="a"))).returncode == 0
    before = current(board_dir)
    proc = start_deploy(inventory, synthetic_bundle(tmp_path / "big", model="big", weights=os.urandom(64 << 20)))
    wait_for(lambda: partial_upload(board_dir), "the upload started", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert one_line(err) == (f"testboard: interrupted while uploading model.onnx; current unchanged ({before}); "
                             f"run `fab deploy` again")
    assert current(board_dir) == before and not list((board_dir / "releases").glob(".incoming-*"))


# --- SSH keys as `ssh` uses them (issue 10 #15) -------------------------------------------------
def test_a_passphrase_key_is_used_through_ssh_agent_and_without_it_the_fix_is_named(sshd, tmp_path):
    key = tmp_path / "locked_key"
    key.write_bytes(sshd.client_key.read_bytes())
    key.chmod(0o600)
    inventory = write_inventory(tmp_path / "inv.yml", sshd.board(tmp_path / "b", key=str(key)))
    agent = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, check=True).stdout
    env = dict(re.findall(r"(SSH_AUTH_SOCK|SSH_AGENT_PID)=([^;]+);", agent))
    try:
        subprocess.run(["ssh-add", "-q", str(key)], env={**os.environ, **env}, check=True, capture_output=True)
        subprocess.run(["ssh-keygen", "-q", "-p", "-N", "secret words", "-f", str(key)], check=True, capture_output=True)
        with_agent = fab(inventory, "status", env=env)
        assert with_agent.returncode == 0, with_agent.stderr
        assert with_agent.stdout.startswith("testboard: no release deployed")
        without = fab(inventory, "status", env={"SSH_AUTH_SOCK": ""})
        assert without.returncode == 1
        assert one_line(without.stderr) == (f"testboard: SSH key {key} needs a passphrase and ssh-agent offered no key "
                                            f"the board accepts; load it into ssh-agent: eval $(ssh-agent) && ssh-add {key}")
    finally:
        os.kill(int(env["SSH_AGENT_PID"]), signal.SIGTERM)


# --- doctor goes through the same per-board path as every task (issue 9 §3) ---------------------
def test_doctor_reports_a_connection_dropped_mid_check_as_a_failed_ssh_check(sshd, tmp_path):  # noqa: F811
    dropping = tmp_path / "dropping-python"  # kills its SSH session when the probe starts: the link drops
    dropping.write_text(f'#!/bin/sh\nif [ "$3" = probe ]; then kill -9 $PPID; sleep 5; fi\nexec {sys.executable} "$@"\n')
    dropping.chmod(0o755)
    inventory = write_inventory(tmp_path / "inv.yml", sshd.board(tmp_path / "b", python=str(dropping)))
    r = fab(inventory, "doctor")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    first, last = r.stdout.splitlines()[0], r.stdout.splitlines()[-1]
    assert re.fullmatch(r"testboard: fail   ssh         connection lost during doctor \(.+\) -> fix: check the board and "
                        r"run `fab doctor` again", first), r.stdout
    assert last == "testboard: NOT ready (failed: ssh) to run bundles with backend onnxruntime"

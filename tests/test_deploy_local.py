"""A board that is this machine (`connection: local`): the real `fab` tasks with no sshd at all."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from board.manifest import sha256_file
from deploy.inventory import parse_inventory
from deploy.remote import LocalRemote
from tests.support.paths import ROOT
from tests.support.sshd import FAB, fab, write_inventory

PROMPT = "once upon a time"


@pytest.fixture(scope="module")
def local(tiny_bundle, tmp_path_factory):
    """(inventory, board dir) with the tiny bundle deployed to a local board."""
    tmp = tmp_path_factory.mktemp("local")
    board_dir = tmp / "board"
    inventory = write_inventory(tmp / "inventory.yml", {"name": "here", "connection": "local", "path": str(board_dir),
                                                        "backend": "onnxruntime"})
    r = fab(inventory, "deploy", "--bundle", str(tiny_bundle), env={"PATH": "/usr/bin:/bin"})  # no ssh on PATH either
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"here: release [0-9a-f]{16}: \d+ file\(s\) uploaded \(.+\), 0 already on the board; "
                        r"current -> [0-9a-f]{16}", r.stdout.strip().splitlines()[-1])
    return inventory, board_dir


def test_a_local_deploy_is_a_release_whose_files_are_the_bundles_byte_for_byte(local, tiny_bundle):
    _, board_dir = local
    current = board_dir / "current"
    assert current.is_symlink() and os.readlink(current).startswith("releases/")
    for name in ("manifest.json", "model.onnx", "tokenizer.json"):
        assert sha256_file(current / name) == sha256_file(tiny_bundle / name)
    assert json.loads((current / ".release.json").read_text())["bundle"]["model"] == "tiny-random-llama"


def test_fab_generate_and_chat_on_a_local_board_print_what_the_board_cli_prints(local, tiny_bundle):
    inventory, _ = local
    args = ["--prompt", PROMPT, "--max-new-tokens", "12", "--greedy"]
    r = fab(inventory, "generate", *args)
    expected = subprocess.run([sys.executable, "-m", "board", "generate", *args, "--bundle", str(tiny_bundle)],
                              cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected and expected.strip()
    env = {**os.environ, "EDGE_LLM_INVENTORY": str(inventory)}
    chat = subprocess.run([str(FAB), "chat"], cwd=ROOT, env=env, input="hello\n", capture_output=True, text=True,
                          timeout=60)
    here = subprocess.run([sys.executable, "-m", "board", "chat", "--bundle", str(tiny_bundle)], cwd=ROOT,
                          input="hello\n", capture_output=True, text=True, timeout=60)
    assert chat.returncode == here.returncode == 0, chat.stderr
    assert chat.stdout == here.stdout and here.stdout.split("> ")[1].strip()


def test_a_local_boards_lock_refuses_a_second_deploy_until_it_is_released(local, tiny_bundle):
    inventory, board_dir = local
    (board,) = parse_inventory({"boards": [{"name": "here", "connection": "local", "path": str(board_dir),
                                            "backend": "onnxruntime"}]}, "inv")
    with LocalRemote(board).deploy_lock("deploy by a test"):
        r = fab(inventory, "deploy", "--bundle", str(tiny_bundle))
    assert r.returncode == 1
    assert re.fullmatch(r"here: another deploy holds the board's lock \([^@]+@[^,]+, pid \d+: deploy by a test, "
                        r"since \d\d:\d\d:\d\d UTC\); wait for it to finish, then run `fab deploy` again",
                        r.stderr.strip()), r.stderr
    again = fab(inventory, "deploy", "--bundle", str(tiny_bundle))
    assert again.returncode == 0, again.stderr
    assert "0 file(s) uploaded" in again.stdout  # the same bundle: every file reused from the first release


def test_fab_status_and_doctor_on_a_local_board_say_it_is_this_machine(local):
    inventory, _ = local
    status = fab(inventory, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["bundle"]["model"] == "tiny-random-llama"
    doctor = fab(inventory, "doctor")
    assert f"here: ok     ssh         this machine (connection: local) as " in doctor.stdout
    assert f"here: ok     python      {sys.version.split()[0]} ({sys.executable})" in doctor.stdout

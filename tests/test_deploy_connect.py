"""Reaching a board: host keys checked against known_hosts, clear one-line errors, no injection."""
from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.support.sshd import fab, free_port, synthetic_bundle, write_inventory

pytestmark = pytest.mark.ssh


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_unreachable_board_is_one_line_and_a_non_zero_exit(sshd, tmp_path):
    port = free_port()  # nothing listens there
    inventory = write_inventory(tmp_path / "inv.yml", sshd.board(tmp_path / "b", port=port))
    r = fab(inventory, "status")
    assert r.returncode == 1
    assert one_line(r.stderr) == (f"testboard: cannot reach 127.0.0.1:{port} (connection refused); is sshd running on "
                                  f"the board, and are host/port right in the inventory?")


def test_one_unreachable_board_does_not_stop_the_others_and_each_is_reported(sshd, tmp_path):
    port = free_port()
    inventory = write_inventory(tmp_path / "inv.yml", sshd.board(tmp_path / "a", name="down", port=port),
                                sshd.board(tmp_path / "b", name="up"))
    r = fab(inventory, "deploy", "--bundle", str(synthetic_bundle(tmp_path / "bundle")))
    assert r.returncode == 1
    assert (tmp_path / "b" / "current").is_symlink() and not (tmp_path / "a").exists()
    assert r.stdout.startswith("up: release ")
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith(f"down: cannot reach 127.0.0.1:{port}")
    assert lines[-1] == "deploy failed on 1 of 2 boards: down"


def test_unknown_host_key_is_rejected_and_nothing_runs(sshd, tmp_path):
    known = tmp_path / "known_hosts"
    known.write_text("")
    inventory = write_inventory(tmp_path / "inv.yml", sshd.board(tmp_path / "b", known_hosts=str(known)))
    r = fab(inventory, "deploy", "--bundle", str(synthetic_bundle(tmp_path / "bundle")))
    assert r.returncode == 1
    assert one_line(r.stderr) == (
        f"testboard: host key of 127.0.0.1:{sshd.port} is unknown (not in {known}); check the board's fingerprint and "
        f"add it: ssh-keyscan -p {sshd.port} 127.0.0.1 >> {known} (or set trust_new_host: true for first contact)")
    assert not (tmp_path / "b").exists() and known.read_text() == ""


def test_trust_new_host_records_the_key_and_later_contacts_are_verified(sshd, tmp_path):
    known = tmp_path / "new" / "known_hosts"
    inventory = write_inventory(tmp_path / "inv.yml",
                                sshd.board(tmp_path / "b", known_hosts=str(known), trust_new_host=True))
    r = fab(inventory, "status")
    assert r.returncode == 0, r.stderr
    recorded = known.read_text().split()
    assert recorded[0] == f"[127.0.0.1]:{sshd.port}" and recorded[1:] == sshd.known_hosts.read_text().split()[1:]
    strict = write_inventory(tmp_path / "strict.yml", sshd.board(tmp_path / "b", known_hosts=str(known)))
    assert fab(strict, "status").returncode == 0


def test_changed_host_key_is_refused_even_with_trust_new_host(sshd, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = (tmp_path / "other.pub").read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n")
    inventory = write_inventory(tmp_path / "inv.yml",
                                sshd.board(tmp_path / "b", known_hosts=str(known), trust_new_host=True))
    r = fab(inventory, "status")
    assert r.returncode == 1
    assert one_line(r.stderr).startswith(f"testboard: host key of 127.0.0.1:{sshd.port} does NOT match {known} ")


def test_a_key_the_board_does_not_accept_is_named(sshd, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "stranger")], check=True)
    inventory = write_inventory(tmp_path / "inv.yml", sshd.board(tmp_path / "b", key=str(tmp_path / "stranger")))
    r = fab(inventory, "status")
    assert r.returncode == 1
    assert one_line(r.stderr) == (f"testboard: SSH login as {sshd.user} with key {tmp_path / 'stranger'} refused; add "
                                  f"{tmp_path / 'stranger'}.pub to the board's ~/.ssh/authorized_keys")


def test_a_missing_key_file_is_named_before_connecting(sshd, tmp_path):
    inventory = write_inventory(tmp_path / "inv.yml", sshd.board(tmp_path / "b", key=str(tmp_path / "nokey")))
    r = fab(inventory, "status")
    assert r.returncode == 1 and one_line(r.stderr).startswith(f"testboard: SSH key {tmp_path / 'nokey'} not found;")


def test_shell_metacharacters_in_path_and_prompt_are_data_not_commands(sshd, tmp_path):
    marker = tmp_path / "pwned"
    board = tmp_path / f"b d'$(touch {marker})`touch {marker}`;touch {marker}"
    inventory = write_inventory(tmp_path / "inv.yml", sshd.board(board))
    r = fab(inventory, "deploy", "--bundle", str(synthetic_bundle(tmp_path / "bundle")))
    assert r.returncode == 0, r.stderr
    assert (board / "current" / "manifest.json").is_file()
    fab(inventory, "generate", "--prompt", f"$(touch {marker}); touch {marker}")  # the synthetic model cannot run
    assert not marker.exists()


def test_a_path_under_the_remote_home_is_resolved_on_the_board(sshd, tmp_path):
    name = f".edge-llm-test-{uuid.uuid4().hex[:8]}"
    local = Path.home() / name  # the "board" is this machine, as the same user
    inventory = write_inventory(tmp_path / "inv.yml", sshd.board(f"~/{name}"))
    try:
        r = fab(inventory, "deploy", "--bundle", str(synthetic_bundle(tmp_path / "bundle")))
        assert r.returncode == 0, r.stderr
        assert (local / "current" / "manifest.json").is_file()
    finally:
        shutil.rmtree(local, ignore_errors=True)


def test_command_lines_pass_every_word_through_the_shell_unchanged(tmp_path):
    from deploy.inventory import parse_inventory
    from deploy.remote import Remote

    (board,) = parse_inventory({"boards": [{"name": "x", "host": "h", "user": "u", "key": "k", "backend": "onnxruntime",
                                            "path": str(tmp_path / "it's $(here)"), "python": "python3"}]}, "inv.yml")
    words = ["$(touch pwned)", "a b", "'", '"', "`id`", "*", "~", "; exit 3", "\n"]
    line = Remote(board, None).command(["printf", "[%s]", *words], cwd=str(tmp_path))
    out = subprocess.run(["sh", "-c", line], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout == "".join(f"[{w}]" for w in words)
    assert not (tmp_path / "pwned").exists()

"""`fab deploy / rollback / status` against a real sshd on 127.0.0.1: what lands on the board."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import re
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest

from deploy.payload import collect
from tests.support.paths import ROOT
from tests.support.sshd import FAB, fab, synthetic_bundle, write_inventory

pytestmark = pytest.mark.ssh


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def current_release(board: Path) -> Path:
    link = board / "current"
    assert link.is_symlink(), f"{link} is not a symlink"
    assert not os.readlink(link).startswith("/"), "current must be a relative link"
    return (board / os.readlink(link)).resolve()


def releases(board: Path) -> list[str]:
    return sorted(p.name for p in (board / "releases").iterdir())


@pytest.fixture
def board_dir(tmp_path):
    return tmp_path / "board"


@pytest.fixture
def inventory(sshd, tmp_path, board_dir):
    return write_inventory(tmp_path / "inventory.yml", sshd.board(board_dir))


def test_deploy_puts_every_file_with_its_checksum_and_points_current_at_the_release(inventory, board_dir, tmp_path):
    bundle = synthetic_bundle(tmp_path / "bundle", weights=os.urandom(200_000))
    r = fab(inventory, "deploy", "--bundle", str(bundle))
    assert r.returncode == 0, r.stderr
    release = current_release(board_dir)
    assert release.parent == (board_dir / "releases").resolve()
    assert r.stdout.strip().endswith(f"current -> {release.name}")
    manifest = json.loads((bundle / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        assert sha(release / name) == entry["sha256"] == sha(bundle / name)
    assert (release / "manifest.json").read_bytes() == (bundle / "manifest.json").read_bytes()
    for src in (ROOT / "board").rglob("*.py"):
        if "__pycache__" not in src.parts:
            assert sha(release / "board" / src.relative_to(ROOT / "board")) == sha(src)
    record = json.loads((release / ".release.json").read_text())
    assert record["id"] == release.name and record["bundle"]["model"] == "synthetic"
    assert r.stderr == ""  # not a terminal: no progress lines (issue 9 §4: it was one line per file)
    assert releases(board_dir) == [release.name]  # no temporary directory left behind


def test_upload_progress_on_a_terminal_is_one_bar_redrawn_in_place(inventory, tmp_path):
    master, slave = pty.openpty()  # fab's stderr is a terminal here, 80 columns wide
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {**os.environ, "EDGE_LLM_INVENTORY": str(inventory)}
    bundle = synthetic_bundle(tmp_path / "bundle", weights=os.urandom(4 << 20))
    proc = subprocess.Popen([str(FAB), "deploy", "--bundle", str(bundle)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: fab closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert proc.wait(timeout=120) == 0
    text = shown.decode()
    assert re.search(r"testboard: +\d+%\|.*/4\.\d\dM", text), text  # the board, a bar, the bytes to send
    assert "\r" in text and "\n" not in text  # redrawn in place, and gone when done: no line per file


def test_second_deploy_of_the_same_bundle_uploads_nothing_and_touches_no_file(inventory, board_dir, tmp_path):
    bundle = synthetic_bundle(tmp_path / "bundle", weights=os.urandom(100_000))
    assert fab(inventory, "deploy", "--bundle", str(bundle)).returncode == 0
    release = current_release(board_dir)
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in release.rglob("*") if p.is_file() and p.name != ".release.json"}
    r = fab(inventory, "deploy", "--bundle", str(bundle))
    assert r.returncode == 0, r.stderr
    assert f"release {release.name}: 0 file(s) uploaded (0 B), {len(before)} already on the board" in r.stdout
    assert "%" not in r.stderr  # no progress line: nothing was sent
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in before} == before
    assert current_release(board_dir) == release and releases(board_dir) == [release.name]


def test_new_bundle_uploads_only_changed_files_and_links_the_rest(inventory, board_dir, tmp_path):
    tokenizer = b'{"shared": "tokenizer"}' * 100
    first = synthetic_bundle(tmp_path / "a", model="a", weights=os.urandom(50_000), tokenizer=tokenizer)
    second = synthetic_bundle(tmp_path / "b", model="b", weights=os.urandom(70_000), tokenizer=tokenizer)
    assert fab(inventory, "deploy", "--bundle", str(first)).returncode == 0
    old = current_release(board_dir)
    r = fab(inventory, "deploy", "--bundle", str(second))
    assert r.returncode == 0, r.stderr
    new = current_release(board_dir)
    assert new != old and r.stdout.strip().endswith(f"current -> {new.name} (was {old.name})")
    assert "2 file(s) uploaded" in r.stdout  # manifest.json and model.onnx; board/ and tokenizer reused
    assert (new / "tokenizer.json").stat().st_ino == (old / "tokenizer.json").stat().st_ino
    assert sha(new / "model.onnx") == sha(second / "model.onnx")
    status = fab(inventory, "status", "--json")
    assert status.returncode == 0, status.stderr
    s = json.loads(status.stdout)
    assert s["current"] == new.name and s["bundle"]["model"] == "b" and s["releases"] == [old.name, new.name]
    assert s["free_disk"] > 0 and s["mem_available"] > 0


def test_rollback_makes_the_previous_release_current_and_refuses_when_there_is_none(inventory, board_dir, tmp_path):
    for name in ("a", "b"):
        assert fab(inventory, "deploy", "--bundle", str(synthetic_bundle(tmp_path / name, model=name))).returncode == 0
    newest = current_release(board_dir)
    r = fab(inventory, "rollback")
    assert r.returncode == 0, r.stderr
    back = current_release(board_dir)
    assert back != newest and r.stdout.strip() == f"testboard: current -> {back.name} (was {newest.name})"
    assert json.loads((back / ".release.json").read_text())["bundle"]["model"] == "a"
    r = fab(inventory, "rollback")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"testboard: no earlier release on the board to roll back to (releases: "
                                              f"{back.name}, {newest.name})"]
    assert current_release(board_dir) == back


def test_status_of_a_board_without_a_release_says_how_to_deploy(inventory):
    r = fab(inventory, "status")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("testboard: no release deployed (run `fab deploy --bundle DIR`); 0 release(s) kept")


def test_corrupt_local_bundle_is_refused_before_upload_and_current_stays(inventory, board_dir, tmp_path):
    good = synthetic_bundle(tmp_path / "good")
    assert fab(inventory, "deploy", "--bundle", str(good)).returncode == 0
    release = current_release(board_dir)
    bad = synthetic_bundle(tmp_path / "bad", model="bad", weights=b"\1" * 4096)
    (bad / "model.onnx").write_bytes(b"\1" * 4095 + b"\2")  # same size, different bytes
    r = fab(inventory, "deploy", "--bundle", str(bad))
    assert r.returncode == 2
    assert r.stderr.strip() == (f"refusing to deploy: {bad / 'model.onnx'}: checksum mismatch (corrupt or partial copy); "
                                f"redeploy or rebuild the bundle")
    assert current_release(board_dir) == release and releases(board_dir) == [release.name]


def test_checksum_mismatch_on_the_board_leaves_current_and_no_upload_reuses_nothing(inventory, board_dir, tmp_path):
    tokenizer = b'{"tok": 1}' * 50
    first = synthetic_bundle(tmp_path / "a", model="a", tokenizer=tokenizer)
    assert fab(inventory, "deploy", "--bundle", str(first)).returncode == 0
    release = current_release(board_dir)
    (release / "tokenizer.json").write_bytes(b"bit rot")  # the board's copy goes bad
    second = synthetic_bundle(tmp_path / "b", model="b", tokenizer=tokenizer)
    r = fab(inventory, "deploy", "--bundle", str(second))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"testboard: verification on the board failed: tokenizer.json (checksum mismatch, linked from an earlier "
        f"release); current unchanged ({release.name}); run `fab deploy --no-reuse` to upload every file")
    assert current_release(board_dir) == release and releases(board_dir) == [release.name]
    r = fab(inventory, "deploy", "--bundle", str(second), "--no-reuse")
    assert r.returncode == 0, r.stderr
    assert sha(current_release(board_dir) / "tokenizer.json") == sha(second / "tokenizer.json")


def test_old_releases_are_pruned_to_keep_releases(sshd, tmp_path, board_dir):
    inventory = write_inventory(tmp_path / "inv.yml", sshd.board(board_dir, keep_releases=2))
    for name in ("a", "b", "c"):
        assert fab(inventory, "deploy", "--bundle", str(synthetic_bundle(tmp_path / name, model=name))).returncode == 0
    kept = releases(board_dir)
    assert len(kept) == 2 and current_release(board_dir).name in kept
    models = {json.loads((board_dir / "releases" / k / ".release.json").read_text())["bundle"]["model"] for k in kept}
    assert models == {"b", "c"}


def test_unwritable_install_path_is_one_clear_line(inventory, board_dir, tmp_path):
    board_dir.mkdir()
    (board_dir / "releases").write_text("not a directory")
    r = fab(inventory, "deploy", "--bundle", str(synthetic_bundle(tmp_path / "b")))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("testboard: cannot create the release directory (")
    assert "Traceback" not in r.stderr and not (board_dir / "current").exists()


def _sshd_sessions(sshd_pid: int) -> list[int]:
    """PIDs of the session processes our test sshd forked (its direct children)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == sshd_pid:
            kids.append(int(stat.parent.name))
    return kids


def test_connection_dropped_mid_upload_leaves_current_and_the_next_deploy_recovers(sshd, inventory, board_dir, tmp_path):
    small = synthetic_bundle(tmp_path / "small", model="small")
    assert fab(inventory, "deploy", "--bundle", str(small)).returncode == 0
    release = current_release(board_dir)
    big = synthetic_bundle(tmp_path / "big", model="big", weights=os.urandom(64 << 20))
    env = {**os.environ, "EDGE_LLM_INVENTORY": str(inventory)}
    proc = subprocess.Popen([str(FAB), "deploy", "--bundle", str(big)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until model.onnx is partly on the board
        partial = list((board_dir / "releases").glob(".incoming-*/model.onnx"))
        if partial and 0 < partial[0].stat().st_size < 32 << 20:  # well before the end
            break
        time.sleep(0.01)
    else:
        proc.kill()
        pytest.fail("the upload never started")
    for pid in _sshd_sessions(sshd.proc.pid):
        os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    lines = err.strip().splitlines()
    # the kill lands mid-upload, or (sftp pipelines writes) just after the last byte left
    assert re.match(r"testboard: connection lost while (uploading model\.onnx|verifying the upload on the board) \(",
                    lines[-1]), lines[-1]
    assert lines[-1].endswith(f"current unchanged ({release.name}); run `fab deploy` again once the board is reachable")
    assert "Traceback" not in err
    assert current_release(board_dir) == release
    r = fab(inventory, "deploy", "--bundle", str(small))
    assert r.returncode == 0 and "0 file(s) uploaded" in r.stdout, r.stdout + r.stderr
    r = fab(inventory, "deploy", "--bundle", str(synthetic_bundle(tmp_path / "next", model="next")))
    assert r.returncode == 0, r.stderr
    assert not list((board_dir / "releases").glob(".incoming-*"))


def test_bundle_larger_than_the_free_disk_is_refused_before_upload(sshd, tmp_path, small_disk):
    inventory = write_inventory(tmp_path / "inv.yml", sshd.board(small_disk / "board"))
    r = fab(inventory, "deploy", "--bundle", str(synthetic_bundle(tmp_path / "b", weights=b"\0" * (5 << 20))))
    assert r.returncode == 1
    assert r.stderr.strip().startswith("testboard: not enough disk on the board: the upload needs 5.")
    assert not (small_disk / "board" / "current").exists()


def test_disk_filling_up_during_upload_leaves_current_and_says_the_disk_is_full(sshd, tmp_path, small_disk):
    board = small_disk / "board"
    inventory = write_inventory(tmp_path / "inv.yml", sshd.board(board))
    assert fab(inventory, "deploy", "--bundle", str(synthetic_bundle(tmp_path / "a", model="a"))).returncode == 0
    release = current_release(board)
    st = os.statvfs(small_disk)
    free = st.f_bavail * st.f_frsize
    others = sum(p.stat().st_size for n, p in collect(synthetic_bundle(tmp_path / "b", model="b")).files.items()
                 if n != "model.onnx")
    # The whole upload fits in the free bytes, so the size check passes; tmpfs's 4 KiB pages
    # for ~20 small files then overflow the disk during the upload.
    b = synthetic_bundle(tmp_path / "b", model="b", weights=os.urandom(free - others - 4096))
    r = fab(inventory, "deploy", "--bundle", str(b), "--no-reuse")
    assert r.returncode == 1
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("testboard: the board's disk is full (") and f"current unchanged ({release.name})" in line
    assert current_release(board) == release
    assert not list((board / "releases").glob(".incoming-*"))  # the partial upload was removed


def test_generate_before_any_deploy_says_to_deploy_first(inventory, board_dir):
    r = fab(inventory, "generate", "--prompt", "hi")
    assert r.returncode == 1
    assert r.stderr.strip() == f"testboard: no release deployed under {board_dir}; run `fab deploy --bundle DIR` first"


def test_redeploying_a_release_damaged_on_the_board_uploads_it_again(inventory, board_dir, tmp_path):
    bundle = synthetic_bundle(tmp_path / "bundle", weights=os.urandom(10_000))
    assert fab(inventory, "deploy", "--bundle", str(bundle)).returncode == 0
    release = current_release(board_dir)
    (release / "model.onnx").write_bytes(b"damaged")
    r = fab(inventory, "deploy", "--bundle", str(bundle))
    assert r.returncode == 0, r.stderr
    assert current_release(board_dir) == release and sha(release / "model.onnx") == sha(bundle / "model.onnx")
    assert " 0 file(s) uploaded" not in r.stdout and releases(board_dir) == [release.name]

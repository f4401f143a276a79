"""Many boards at once against one real sshd on 127.0.0.1 (a board per install path): parallel deploys,
a staged rollout, one status table."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.sshd import fab, synthetic_bundle, write_inventory
from tests.test_deploy_guarantees import current

pytestmark = pytest.mark.ssh


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs for one board's install path (needs mount permission; skipped otherwise)."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); the full-disk fleet test needs a small filesystem")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_four_boards_deploy_in_parallel_and_the_full_one_says_why_with_current_unchanged(sshd, tmp_path, small_disk):
    paths = {"full": small_disk / "board", **{f"b{i}": tmp_path / f"b{i}" for i in (1, 2, 3)}}
    inventory = write_inventory(tmp_path / "inv.yml", *(sshd.board(p, name=n) for n, p in paths.items()))
    small = synthetic_bundle(tmp_path / "a", model="a")
    r = fab(inventory, "deploy", "--bundle", str(small))
    assert r.returncode == 0, r.stderr
    first = {n: current(p) for n, p in paths.items()}
    assert len(set(first.values())) == 1 and None not in first.values()
    # one whole line per board: printed when that board is done, never interleaved with another's
    for name, line in zip(sorted(paths), sorted(r.stdout.splitlines()), strict=True):
        assert re.fullmatch(rf"{name}: release {first[name]}: \d+ file\(s\) uploaded \([^)]+\), 0 already on the board; "
                            rf"current -> {first[name]}", line), line

    big = synthetic_bundle(tmp_path / "big", model="big", weights=os.urandom(5 << 20))  # more than the tmpfs holds
    r = fab(inventory, "deploy", "--bundle", str(big), "--canary", "1")  # the full board is the canary
    assert r.returncode == 1
    assert r.stderr.splitlines()[0].startswith("full: not enough disk on the board: the upload needs 5.")
    assert r.stderr.splitlines()[1:] == [f"b{i}: not started: canary full failed; nothing changed on it" for i in (1, 2, 3)] + [
        "deploy failed on 1 of 4 boards: full; not started: b1, b2, b3"]
    assert {n: current(p) for n, p in paths.items()} == first

    r = fab(inventory, "deploy", "--bundle", str(big), "--parallel", "4")
    assert r.returncode == 1
    now = {n: current(p) for n, p in paths.items()}
    assert now["full"] == first["full"] and not list((paths["full"] / "releases").glob(".incoming-*"))
    assert {now[f"b{i}"] for i in (1, 2, 3)} == {now["b1"]} and now["b1"] != first["b1"]
    assert sorted(line.split(":")[0] for line in r.stdout.splitlines()) == ["b1", "b2", "b3"]
    assert all(line.endswith(f"current -> {now['b1']} (was {first['b1']})") for line in r.stdout.splitlines())
    lines = r.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("full: not enough disk on the board: the upload needs 5.")
    assert lines[0].endswith("free space or lower keep_releases") and lines[1] == "deploy failed on 1 of 4 boards: full"

    r = fab(inventory, "status")
    assert r.returncode == 0, r.stderr
    header, *rows = r.stdout.splitlines()
    assert header.split() == ["board", "release", "model", "backend", "service", "tok/s", "memory", "disk"]
    assert [row.split()[:6] for row in rows] == [["full", first["full"], "a", "onnxruntime", "none", "-"]] + [
        [f"b{i}", now["b1"], "big", "onnxruntime", "none", "-"] for i in (1, 2, 3)]
    assert {row.index("onnxruntime") for row in rows} == {header.index("backend")}  # aligned under its header
    listed = json.loads(fab(inventory, "status", "--json").stdout)
    assert [s["board"] for s in listed] == ["full", "b1", "b2", "b3"] and listed[0]["current"] == first["full"]

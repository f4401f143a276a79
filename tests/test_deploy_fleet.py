"""Many boards at once against one real sshd on 127.0.0.1 (a board per install path): parallel deploys,
a staged rollout, one status table."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from deploy.fleet import NOTICE
from tests.support.paths import ROOT
from tests.support.sshd import FAB, fab, synthetic_bundle, write_inventory
from tests.test_deploy_guarantees import current, slow_python, wait_for

pytestmark = pytest.mark.ssh


def test_four_boards_deploy_in_parallel_and_the_full_one_says_why_with_current_unchanged(sshd, tmp_path, small_disk):
    paths = {"full": small_disk / "board", **{f"b{i}": tmp_path / f"b{i}" for i in (1, 2, 3)}}
    inventory = write_inventory(tmp_path / "inv.yml", *(sshd.board(p, name=n) for n, p in paths.items()))
    # The full board has a release to keep; the others start empty (each deploy costs the board's check).
    r = fab(inventory, "deploy", "--bundle", str(synthetic_bundle(tmp_path / "a", model="a")), "--board", "full")
    assert r.returncode == 0, r.stderr
    before = current(paths["full"])
    assert before is not None

    big = synthetic_bundle(tmp_path / "big", model="big", weights=os.urandom(5 << 20))  # more than the tmpfs holds
    r = fab(inventory, "deploy", "--bundle", str(big), "--canary", "1")  # the full board is the canary
    assert r.returncode == 1
    assert r.stderr.splitlines()[0].startswith("full: not enough disk on the board: the upload needs 5.")
    assert r.stderr.splitlines()[1:] == [f"b{i}: not started: canary full failed; nothing changed on it" for i in (1, 2, 3)] + [
        "deploy failed on 1 of 4 boards: full; not started: b1, b2, b3"]
    assert {n: current(p) for n, p in paths.items()} == {"full": before, "b1": None, "b2": None, "b3": None}

    r = fab(inventory, "deploy", "--bundle", str(big), "--parallel", "4")
    assert r.returncode == 1
    now = {n: current(p) for n, p in paths.items()}
    assert now["full"] == before and not list((paths["full"] / "releases").glob(".incoming-*"))
    assert {now[f"b{i}"] for i in (1, 2, 3)} == {now["b1"]} and now["b1"] not in (None, before)
    # one whole line per board: printed when that board is done, never interleaved with another's
    for name, line in zip(("b1", "b2", "b3"), sorted(r.stdout.splitlines()), strict=True):
        assert re.fullmatch(rf"{name}: release {now['b1']}: \d+ file\(s\) uploaded \([^)]+\), 0 already on the board; "
                            rf"current -> {now['b1']}", line), line
    lines = r.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("full: not enough disk on the board: the upload needs 5.")
    assert lines[0].endswith("free space or lower keep_releases") and lines[1] == "deploy failed on 1 of 4 boards: full"

    r = fab(inventory, "status")
    assert r.returncode == 0, r.stderr
    header, *rows = r.stdout.splitlines()
    assert header.split() == ["board", "release", "model", "backend", "service", "tok/s", "memory", "disk"]
    assert [row.split()[:6] for row in rows] == [["full", before, "a", "onnxruntime", "none", "-"]] + [
        [f"b{i}", now["b1"], "big", "onnxruntime", "none", "-"] for i in (1, 2, 3)]
    assert {row.index("onnxruntime") for row in rows} == {header.index("backend")}  # aligned under its header
    listed = json.loads(fab(inventory, "status", "--json").stdout)
    assert [s["board"] for s in listed] == ["full", "b1", "b2", "b3"] and listed[0]["current"] == before


def test_ctrl_c_stops_every_board_at_its_next_step_and_says_what_happened_on_each(sshd, tmp_path):
    paths = {n: tmp_path / n for n in ("b1", "b2", "b3")}
    for n in ("b1", "b2"):
        (tmp_path / f"{n}-python").mkdir()
    slow = {n: slow_python(tmp_path / f"{n}-python", "verify") for n in ("b1", "b2")}  # each stalls in its sha256 check
    inventory = write_inventory(tmp_path / "inv.yml", *(sshd.board(p, name=n, python=str(slow.get(n, sys.executable)))
                                                        for n, p in paths.items()))
    env = {**os.environ, "EDGE_LLM_INVENTORY": str(inventory)}
    proc = subprocess.Popen([str(FAB), "deploy", "--bundle", str(synthetic_bundle(tmp_path / "a")), "--parallel", "2"],
                            cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    wait_for(lambda: all((tmp_path / f"{n}-python" / "reached-verify").exists() for n in slow), "both checks", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert err.splitlines() == [NOTICE] + [
        f"{n}: interrupted while verifying the upload on the board, before the switch; current unchanged (no release yet); "
        f"run `fab deploy` again" for n in ("b1", "b2")] + ["b3: not started (Ctrl-C); nothing changed on it"]
    assert out == "" and all(current(p) is None for p in paths.values())
    assert not list(tmp_path.glob("b?/releases/.incoming-*"))  # each board's partial release was removed

"""`python -m host compile --runner board` over real SSH (sshd on 127.0.0.1), with the stand-in atc.

The "board" is this machine: its install path holds an env.sh (what `fab setup` writes on a real
board) that puts tests/fake_bin/atc on PATH and points ASCEND_OPP_PATH at a stand-in plugin.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from board.manifest import load_manifest
from host.__main__ import main
from tests.support.compile_bundles import FAKE_BIN, install_fake_plugin, make_bundle, snapshot
from tests.support.sshd import write_inventory

pytestmark = [pytest.mark.ssh, pytest.mark.cann_double]


@pytest.fixture
def board(sshd, tmp_path, monkeypatch):
    root = tmp_path / "board"
    root.mkdir()
    install_fake_plugin(root / "opp")
    (root / "env.sh").write_text(
        f'export PATH="{FAKE_BIN}:{Path(sys.executable).parent}:$PATH"\nexport ASCEND_OPP_PATH="{root / "opp"}"\n'
    )
    inv = write_inventory(tmp_path / "inventory.yml", sshd.board(root, soc="Ascend310B1"))
    monkeypatch.setenv("EDGE_LLM_INVENTORY", str(inv))
    return root


def test_board_compile_over_ssh_puts_the_om_in_the_bundle(tmp_path, board, capsys):
    bundle = make_bundle(tmp_path)
    rc = main(["compile", "--bundle", str(bundle), "--soc", "20T", "--runner", "board", "--board", "testboard", "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    result = json.loads(captured.out)
    om = (bundle / "model.om").read_bytes()
    assert om.startswith(b"FAKE-OM") and b"--model=model.onnx" in om
    assert load_manifest(bundle).files["model.om"].sha256 == hashlib.sha256(om).hexdigest() == result["sha256"]
    assert not list(board.glob("atc-*"))  # the scratch directory on the board is gone


def test_board_compile_failure_over_ssh_leaves_bundle_and_board_clean(tmp_path, board, capsys):
    bundle = make_bundle(tmp_path)
    before = snapshot(bundle)
    (board / "env.sh").write_text((board / "env.sh").read_text() + "export FAKE_ATC_FAIL='Killed'\n")
    rc = main(["compile", "--bundle", str(bundle), "--soc", "Ascend310B1", "--runner", "board", "--board", "testboard"])
    err = capsys.readouterr().err
    command = next(line for line in err.splitlines() if line.startswith("compile: board: "))
    error = err[err.index("\nerror: ") + 1:]  # after the compile's notes and the ATC command as run
    assert command.startswith("compile: board: atc --model=model.onnx ") and error.startswith("error: ATC was killed")
    assert rc == 2 and "MAX_COMPILE_CORE_NUMBER=1 TE_PARALLEL_COMPILER=1" in error
    assert snapshot(bundle) == before and not list(board.glob("atc-*"))

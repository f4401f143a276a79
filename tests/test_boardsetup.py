"""`fab setup` against the real sshd "board": a bare directory becomes able to run `fab generate`."""
from __future__ import annotations

import base64
import csv
import hashlib
import importlib.metadata as md
import io
import platform
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.paths import ROOT
from tests.support.sshd import fab, write_inventory

pytestmark = pytest.mark.ssh
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)
PINS = "jinja2==3.1.6, numpy==2.4.6, onnxruntime==1.32.0, tokenizers==0.23.3"
GLIBC_MINOR = int(platform.libc_ver()[1].split(".")[1])


def snapshot(root: Path) -> dict:
    """Every path under root with its mtime and size: what a no-op run must leave alone."""
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(root.rglob("*")) if not p.is_symlink()}


def test_setup_prepares_a_bare_directory_and_a_second_run_changes_nothing(sshd, tmp_path, tiny_bundle):
    board = tmp_path / "board"
    inventory = write_inventory(tmp_path / "inv.yml", sshd.board(board))  # its python has the pinned packages
    r = fab(inventory, "setup")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"testboard: changed install path {board} created",
        f"testboard: changed env.sh       {board}/env.sh written (no CANN found: nothing to source)",
        f"testboard: changed requirements {board}/requirements.txt uploaded (board/locks/onnxruntime-py3.11.txt for x86_64)",
        f"testboard: ok      python deps  {PINS} already in {sys.executable}",
        "testboard: setup done, 3 change(s)",
    ]
    assert (board / "requirements.txt").read_bytes() == (ROOT / "board/locks/onnxruntime-py3.11.txt").read_bytes()
    before = snapshot(board)
    r = fab(inventory, "setup")
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "testboard: setup done, nothing to change"
    assert snapshot(board) == before
    assert fab(inventory, "deploy", "--bundle", str(tiny_bundle)).returncode == 0
    r = fab(inventory, "generate", "--prompt", "once", "--max-new-tokens", "4", "--greedy")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr


def test_with_plugin_without_cann_is_refused_in_one_line(sshd, tmp_path):
    inventory = write_inventory(tmp_path / "inv.yml", sshd.board(tmp_path / "board"))
    r = fab(inventory, "setup", "--with-plugin")
    assert r.returncode == 1
    assert r.stderr.strip() == ("testboard: --with-plugin needs the CANN toolkit on the board (no set_env.sh found); "
                                "install CANN first, then run `fab setup --with-plugin` again")


def test_an_empty_wheels_directory_is_named(sshd, tmp_path):
    (tmp_path / "wheels").mkdir()
    inventory = write_inventory(tmp_path / "inv.yml", sshd.board(tmp_path / "board", python=BASE_PYTHON))
    r = fab(inventory, "setup", "--wheels", str(tmp_path / "wheels"))
    platforms = " ".join(f"--platform manylinux_2_{m}_x86_64" for m in range(17, GLIBC_MINOR + 1))
    assert r.returncode == 1 and r.stderr.strip() == (
        f"testboard: no *.whl files in {tmp_path / 'wheels'}; fill it with: pip download --no-deps --only-binary=:all: "
        f"--python-version {sys.version_info[0]}.{sys.version_info[1]} {platforms} -r board/locks/onnxruntime-py3.11.txt "
        "-r board/locks/serve-py3.11.txt -d wheels/")
    assert not (tmp_path / "board" / "venv").exists()


# --- offline install from wheels -------------------------------------------------------------
def _closure(names: list) -> list:
    """Installed distributions needed by `names` (runtime requirements, no extras)."""
    seen, todo = {}, list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen[name] = dist = md.distribution(name)
        for spec in dist.requires or []:
            req = Requirement(spec)
            if not req.marker or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def _repack(dist: md.Distribution, out: Path) -> Path:
    """A wheel rebuilt from an installed distribution's files (no network: what CI can do offline)."""
    info = next(f for f in dist.files if f.parts[0].endswith(".dist-info")).parts[0]
    tags = [line.split(": ", 1)[1].split("-") for line in dist.read_text("WHEEL").splitlines() if line.startswith("Tag: ")]
    tag = "-".join(".".join(dict.fromkeys(t[i] for t in tags)) for i in range(3))  # e.g. py2.py3-none-any
    path = out / f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}-{tag}.whl"
    record = io.StringIO()
    rows = csv.writer(record)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as whl:
        for f in dist.files:
            if f.parts[0] == ".." or "__pycache__" in f.parts or f.name in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json"):
                continue
            data = Path(dist.locate_file(f)).read_bytes()
            whl.writestr(str(f), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            rows.writerow([str(f), f"sha256={digest}", len(data)])
        rows.writerow([f"{info}/RECORD", "", ""])
        whl.writestr(f"{info}/RECORD", record.getvalue())
    return path


def pyenv_python(version: str) -> Path:
    """pyenv's interpreter of this version, or a skip naming it."""
    r = subprocess.run(["pyenv", "prefix", version], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"pyenv has no Python {version}: `pyenv install {version}` to play a Python {version} board")
    return Path(r.stdout.strip()) / "bin" / "python3"


@pytest.mark.slow  # 45 s of pip; CI's scripts/test-board-python.sh installs and runs the same 3.10 set
def test_setup_on_an_ubuntu_22_04_python_installs_the_numpy_1_set_and_the_board_runs(sshd, tmp_path, tiny_bundle):
    """Python 3.10, as Ubuntu 22.04 on the Orange Pi has it: the set with numpy 1.24 and onnxruntime 1.23.2."""
    board = tmp_path / "board"
    inventory = write_inventory(tmp_path / "inv.yml", sshd.board(board, python=str(pyenv_python("3.10.13"))))
    r = fab(inventory, "setup", timeout=600)
    assert r.returncode == 0, r.stderr
    assert (f"testboard: changed requirements {board}/requirements.txt uploaded "
            "(board/locks/onnxruntime-py3.10.txt for x86_64)") in r.stdout.splitlines()
    assert (f"testboard: changed python deps  installed jinja2==3.1.6, numpy==1.24.4, onnxruntime==1.23.2, "
            f"tokenizers==0.23.3 into {board}/venv") in r.stdout.splitlines(), r.stdout
    doctor = fab(inventory, "doctor", "--bundle", str(tiny_bundle))
    assert doctor.returncode == 0, doctor.stdout
    assert "testboard: ok     python      3.10.13" in doctor.stdout
    assert fab(inventory, "deploy", "--bundle", str(tiny_bundle)).returncode == 0
    r = fab(inventory, "generate", "--prompt", "once upon a time", "--max-new-tokens", "8", "--greedy")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr


@pytest.mark.slow
def test_offline_setup_from_wheels_makes_a_venv_that_runs_generate(sshd, tmp_path, tiny_bundle):
    if subprocess.run([BASE_PYTHON, "-c", "import onnxruntime"], capture_output=True).returncode == 0:
        pytest.skip(f"{BASE_PYTHON} already has onnxruntime: it cannot play a bare board")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for dist in _closure(["numpy", "tokenizers", "onnxruntime"]):
        _repack(dist, wheels)
    board = tmp_path / "board"
    inventory = write_inventory(tmp_path / "inv.yml", sshd.board(board, python=BASE_PYTHON))
    r = fab(inventory, "setup", "--wheels", str(wheels), timeout=600)
    assert r.returncode == 0, r.stderr
    assert f"testboard: changed venv         created {board}/venv" in r.stdout.splitlines()
    assert f"testboard: changed python deps  installed {PINS} into {board}/venv from uploaded wheels" in r.stdout.splitlines()
    assert fab(inventory, "doctor").returncode == 0
    before = snapshot(board)
    r = fab(inventory, "setup", "--wheels", str(wheels))
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "testboard: setup done, nothing to change"
    assert snapshot(board) == before
    assert fab(inventory, "deploy", "--bundle", str(tiny_bundle)).returncode == 0
    r = fab(inventory, "generate", "--prompt", "once upon a time", "--max-new-tokens", "8", "--greedy")
    local = subprocess.run([sys.executable, "-m", "board", "generate", "--bundle", str(tiny_bundle), "--prompt",
                            "once upon a time", "--max-new-tokens", "8", "--greedy"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == local.stdout, r.stderr

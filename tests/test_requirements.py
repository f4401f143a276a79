"""The board's requirement sets: inputs, locks and pyproject.toml agree, and each board gets the right one."""
from __future__ import annotations

import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from deploy.boardenv import (LOCKS, PYTHONS, REQUIREMENTS, SERVE_REQUIREMENTS, cann_fit, download_command, pins,
                             requirement_lines, requirement_set)
from tests.support.paths import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def lock(path) -> dict:
    return {Requirement(line).name: str(Requirement(line).specifier)[2:] for line in requirement_lines(path)}


def test_pyproject_extras_are_the_requirement_files_line_for_line():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert extras["board"] == requirement_lines(REQUIREMENTS["onnxruntime"])
    assert extras["serve"] == requirement_lines(SERVE_REQUIREMENTS)
    assert PYPROJECT["project"]["requires-python"] == ">=%d.%d" % PYTHONS[0]


def test_the_board_test_tools_on_the_newest_python_are_the_dev_extras_pins():
    dev = {canonicalize_name(Requirement(r).name): str(Requirement(r).specifier)[2:]
           for r in PYPROJECT["project"]["optional-dependencies"]["dev"]}
    board_tools = pins(ROOT / "tests/requirements-board.txt", PYTHONS[-1])
    assert board_tools and all(dev[name] == version for name, version in board_tools.items())


@pytest.mark.parametrize("python", PYTHONS, ids=lambda p: "py%d.%d" % p)
@pytest.mark.parametrize("backend", ["onnxruntime", "acl"])
def test_each_lock_pins_its_inputs_and_the_acl_sets_keep_numpy_1(backend, python):
    rset = requirement_set(backend, python, "aarch64")
    assert sorted(rset.pins) == ["jinja2", "numpy", "onnxruntime", "tokenizers"]
    locked = lock(rset.lock)
    assert {n: locked[n] for n in rset.pins} == rset.pins
    serve = lock(rset.serve_lock())
    assert {n: serve[n] for n in pins(SERVE_REQUIREMENTS, python)} == pins(SERVE_REQUIREMENTS, python)
    assert all(locked[n] == v for n, v in serve.items() if n in locked)  # one version per package on a board
    numpy = tuple(int(x) for x in rset.pins["numpy"].split(".")[:2])
    if backend == "acl" or python < (3, 11):
        assert numpy == ((1, 26) if python >= (3, 12) else (1, 24))


def test_the_newest_onnxruntime_for_each_python_is_locked():
    ort = {p: pins(REQUIREMENTS["onnxruntime"], p)["onnxruntime"] for p in PYTHONS}
    assert ort == {(3, 9): "1.19.2", (3, 10): "1.23.2", (3, 11): "1.32.0", (3, 12): "1.32.0"}
    assert sorted(p.name for p in LOCKS.glob("*.txt")) == sorted(
        f"{kind}-py{p[0]}.{p[1]}.txt" for kind in ("acl", "onnxruntime", "serve") for p in PYTHONS)


def test_the_running_python_has_its_set_installed():
    """What the tests run with is the set a board of this Python gets."""
    from importlib.metadata import version

    want = requirement_set("onnxruntime", sys.version_info, "x86_64").pins
    assert {n: version(n) for n in want} == want


def test_boards_no_set_fits_are_told_what_to_do():
    with pytest.raises(ValueError, match=r"^the board's Python 3.8 is older than 3.9, the oldest the board package "
                                         r"runs on: install Python 3.9-3.12 \(e.g. conda\)"):
        requirement_set("acl", (3, 8), "aarch64")
    with pytest.raises(ValueError, match=r"^the board's Python 3.13 has no locked requirement set \(locked: "
                                         r"3.9, 3.10, 3.11, 3.12\)"):
        requirement_set("onnxruntime", (3, 13), "aarch64")
    with pytest.raises(ValueError, match="^the board is armv7l: onnxruntime publishes wheels for aarch64 and x86_64 only"):
        requirement_set("onnxruntime", (3, 10), "armv7l")


def test_the_download_recipe_names_the_board_glibc_tags_and_its_locks():
    rset = requirement_set("acl", (3, 10), "aarch64")
    tags = " ".join(f"--platform manylinux_2_{m}_aarch64" for m in range(17, 36))
    assert download_command(rset, "2.35") == (
        f"pip download --no-deps --only-binary=:all: --python-version 3.10 {tags} "
        "-r board/locks/acl-py3.10.txt -r board/locks/serve-py3.10.txt -d wheels/")


@pytest.mark.parametrize("cann, python, numpy, verdict", [
    ("8.0.RC2", (3, 10), "1.24.4", (True, "CANN 8.0.RC2 asks Python 3.7-3.10 and numpy <1.25")),
    ("8.0.RC2.beta1", (3, 11), "1.24.4", (False, "CANN 8.0.RC2.beta1 asks Python 3.7-3.10 and numpy <1.25; "
                                                 "the board has Python 3.11")),
    ("8.0.0", (3, 11), "2.4.6", (False, "CANN 8.0.0 asks Python 3.7-3.11 and numpy <1.25; the board has numpy 2.4.6")),
    ("8.5.0", (3, 11), "1.26.4", (True, "CANN 8.5.0 asks Python 3.7-3.11 and numpy <2")),
    ("7.0.RC1", (3, 9), "1.24.4", (None, "CANN 7.0.RC1: no recorded Python/numpy rule")),
    (None, (3, 9), "1.24.4", (None, "no CANN")),
])
def test_cann_fit_compares_python_and_numpy_with_the_board_cann(cann, python, numpy, verdict):
    assert cann_fit(cann, python, numpy) == verdict

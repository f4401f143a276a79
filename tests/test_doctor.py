"""`fab doctor` against the real sshd "board": verdicts per check, exit status = can it run the bundle."""
from __future__ import annotations

import json
import platform
import subprocess
import sys

from pathlib import Path
from types import SimpleNamespace

import onnxruntime
import pytest

from board.manifest import run_bytes
from deploy.doctor import Needs, _memory_and_disk
from tests.support.compile_bundles import make_manifest
from tests.support.sshd import fab, free_port, synthetic_bundle, write_inventory

pytestmark = pytest.mark.ssh
ASCEND_DATA = Path(__file__).resolve().parent / "data" / "ascend"  # recorded formats, see its SOURCES.md
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)  # the interpreter under this venv
NO_CANN = ("no CANN set_env.sh (/usr/local/Ascend/ascend-toolkit/set_env.sh, ~/Ascend/ascend-toolkit/set_env.sh)")


def lines_of(stdout: str, board: str = "testboard") -> dict:
    """check name -> 'verdict detail' from doctor's lines."""
    out = {}
    for line in stdout.splitlines():
        verdict, name, detail = line[len(board) + 2:].split(maxsplit=2)
        out[name] = f"{verdict} {detail}"
    return out


def test_board_with_onnxruntime_is_ready_and_npu_cann_are_absent(sshd, tmp_path):
    inventory = write_inventory(tmp_path / "inv.yml", sshd.board(tmp_path / "b"))
    r = fab(inventory, "doctor")
    assert r.returncode == 0, r.stdout + r.stderr
    checks = lines_of(r.stdout)
    assert checks["ssh"] == f"ok reachable at 127.0.0.1:{sshd.port} as {sshd.user}"
    assert checks["onnxruntime"] == f"ok {onnxruntime.__version__}"
    assert checks["python"] == f"ok {'.'.join(map(str, sys.version_info[:3]))} ({sys.executable})"
    assert checks["acl"] == "absent pyACL (acl) not importable; not needed for backend onnxruntime"
    assert checks["cann"] == f"absent {NO_CANN}; not needed for backend onnxruntime"
    assert checks["npu"] == "absent npu-smi not found; not needed for backend onnxruntime"
    assert checks["toolkit"] == "absent no CANN toolkit version found (ascend_toolkit_install.info or version.cfg)"
    assert checks["plugin"].startswith("absent no custom op plugin (no CANN either)")
    machine = platform.machine()
    assert checks["arch"] == ("ok aarch64" if machine == "aarch64" else
                              f"warn {machine}, not aarch64: not an Orange Pi AIpro (fine for a test board)")
    assert r.stdout.splitlines()[-1] == "testboard: ready to run bundles with backend onnxruntime"


def test_board_whose_python_lacks_onnxruntime_fails_with_the_fix(sshd, tmp_path):
    if subprocess.run([BASE_PYTHON, "-c", "import onnxruntime"], capture_output=True).returncode == 0:
        pytest.skip(f"{BASE_PYTHON} has onnxruntime: no interpreter without it to play the bare board")
    inventory = write_inventory(tmp_path / "inv.yml", sshd.board(tmp_path / "b", python=BASE_PYTHON))
    r = fab(inventory, "doctor")
    assert r.returncode == 1
    assert ("testboard: fail   onnxruntime onnxruntime not importable (ModuleNotFoundError: No module named "
            "'onnxruntime') -> fix: fab setup --board testboard") in r.stdout.splitlines()
    assert r.stdout.splitlines()[-1].startswith("testboard: NOT ready (failed: ")
    assert "onnxruntime" in r.stdout.splitlines()[-1] and "Traceback" not in r.stdout + r.stderr


def test_acl_board_without_npu_or_cann_fails_those_checks_and_json_says_not_ready(sshd, tmp_path):
    inventory = write_inventory(tmp_path / "inv.yml", sshd.board(tmp_path / "b", backend="acl", soc="Ascend310B4"))
    r = fab(inventory, "doctor", "--json")
    assert r.returncode == 1
    report = json.loads(r.stdout)
    verdicts = {c["name"]: c["verdict"] for c in report["checks"]}
    assert report["board"] == "testboard" and report["ready"] is False
    assert (verdicts["acl"], verdicts["cann"], verdicts["npu"], verdicts["onnxruntime"]) == ("fail", "fail", "fail", "ok")
    npu = next(c for c in report["checks"] if c["name"] == "npu")
    assert npu["fix"] == "install the Ascend NPU driver and firmware"


def test_unreachable_board_is_a_failed_ssh_check(sshd, tmp_path):
    port = free_port()
    inventory = write_inventory(tmp_path / "inv.yml", sshd.board(tmp_path / "b", port=port))
    r = fab(inventory, "doctor")
    assert r.returncode == 1
    assert r.stdout.splitlines() == [
        f"testboard: fail   ssh         cannot reach 127.0.0.1:{port} (connection refused) -> fix: is sshd running on "
        f"the board, and are host/port right in the inventory?",
        "testboard: NOT ready (failed: ssh) to run bundles with backend onnxruntime"]


def test_memory_and_disk_are_compared_with_the_bundle(sshd, tmp_path):
    inventory = write_inventory(tmp_path / "inv.yml", sshd.board(tmp_path / "b"))
    bundle = synthetic_bundle(tmp_path / "bundle", weights=b"\0" * 300_000)
    r = fab(inventory, "doctor", "--bundle", str(bundle))
    assert r.returncode == 0, r.stdout
    checks = lines_of(r.stdout)
    assert checks["memory"].startswith("ok ") and checks["memory"].endswith(
        " available for 293.0 KB onnx weights + 128 B largest-gear outputs")  # logits [1, 1, 32] float32
    assert checks["disk"].startswith("ok ") and " for " in checks["disk"] and "of bundle synthetic" in checks["disk"]


def test_the_memory_check_counts_weights_kv_outputs_and_the_oms_load_copy():
    """TinyLlama shapes, fp32 KV at 1024 slots, chunks up to 64: the figures come from the manifest alone."""
    m = make_manifest(layers=22, kv_heads=4, head_dim=64, kv_len=1024, chunks=[1, 16, 64])
    run = run_bytes(m)
    assert run == {"kv": 44 * 4 * 1024 * 64 * 4, "outputs": 64 * 32000 * 4 + 44 * 4 * 64 * 64 * 4}
    om = 1_200_000_000
    needs = Needs("bundle t", om, {"onnx": 0, "om": om}, on_board=True, run_bytes=run)
    need = 2 * om + run["kv"] + run["outputs"]
    acl = SimpleNamespace(backend="acl")
    verdict = {mem: _memory_and_disk(acl, {"mem_available": mem, "free_disk": 1 << 40}, needs, "/opt")[0]
               for mem in (need - 1, need + 1, 2 * need)}
    assert [c.verdict for c in verdict.values()] == ["fail", "warn", "ok"]
    assert verdict[need - 1].detail == ("2.3 GB available < 1.1 GB om weights + 44.0 MB KV cache + "
                                        "10.6 MB largest-gear outputs + 1.1 GB load copy of bundle t")
    older = Needs("release r", om, {"onnx": 0, "om": om}, on_board=True)  # recorded before run_bytes: weights and copy
    assert _memory_and_disk(acl, {"mem_available": 2 * om - 1, "free_disk": 1 << 40}, older, "/opt")[0].verdict == "fail"


def make_fake_ascend(root: Path, npu_smi_output: str, toolkit_file: str, toolkit_at: str) -> Path:
    """A CANN-like set_env.sh, an npu-smi printing a recorded output, a toolkit version file."""
    (root / "bin").mkdir(parents=True)
    npu_smi = root / "bin" / "npu-smi"
    npu_smi.write_text(f"#!/bin/sh\ncat '{ASCEND_DATA / npu_smi_output}'\n")
    npu_smi.chmod(0o755)
    (root / toolkit_at).parent.mkdir(parents=True, exist_ok=True)
    (root / toolkit_at).write_text((ASCEND_DATA / toolkit_file).read_text())
    (root / "set_env.sh").write_text(f'export ASCEND_TOOLKIT_HOME={root}\nexport ASCEND_OPP_PATH={root}/opp\n'
                                     f'export PATH={root}/bin:$PATH\n')
    return root


@pytest.fixture
def fake_ascend(tmp_path):
    """An older driver's npu-smi naming a 310B4 (an 8T board), CANN 7.0.RC1 (version.cfg)."""
    return make_fake_ascend(tmp_path / "Ascend", "npu-smi-23.0.rc3.txt", "version.cfg", "version.cfg")


@pytest.mark.cann_double
def test_cann_and_npu_are_found_through_the_environment_script_and_soc_mismatch_warns(sshd, tmp_path, fake_ascend):
    board = tmp_path / "b"
    inventory = write_inventory(tmp_path / "inv.yml", sshd.board(board, soc="Ascend310B1",
                                                                  cann_env=str(fake_ascend / "set_env.sh")))
    checks = lines_of(fab(inventory, "doctor").stdout)
    assert checks["cann"] == (f"warn {fake_ascend / 'set_env.sh'}, sourced by fab commands directly (no env.sh yet) "
                              f"-> fix: fab setup --board testboard")
    assert checks["npu"] == ("warn Ascend310B4 (8T) but the inventory says soc Ascend310B1 -> fix: set soc: Ascend310B4 "
                             "in the inventory and compile the bundle with --soc Ascend310B4")
    assert checks["toolkit"] == f"ok CANN 7.0.RC1 ({fake_ascend / 'version.cfg'})"
    assert checks["plugin"].startswith("warn no custom op plugin registering MatMulInteger")
    plugin = fake_ascend / "opp" / "vendors" / "edge_llm" / "framework" / "onnx"
    plugin.mkdir(parents=True)
    (plugin / "libcust_onnx_parsers.so").write_bytes(b"\x7fELF")  # a plugin that does not register MatMulInteger
    assert lines_of(fab(inventory, "doctor").stdout)["plugin"].startswith("warn no custom op plugin registering")
    (plugin / "libcust_onnx_parsers.so").write_bytes(b"\x7fELF...ai.onnx::17::MatMulInteger")
    assert "is not in" in lines_of(fab(inventory, "doctor").stdout)["plugin"]  # vendors/config.ini does not list it
    (fake_ascend / "opp" / "vendors" / "config.ini").write_text("load_priority=edge_llm\n")
    assert fab(inventory, "setup").returncode == 0
    assert (board / "env.sh").read_text().splitlines()[1] == f". {fake_ascend / 'set_env.sh'}"
    r = fab(inventory, "doctor")
    checks = lines_of(r.stdout)
    assert checks["cann"] == f"ok {fake_ascend / 'set_env.sh'}, sourced by every fab command via {board}/env.sh"
    assert checks["plugin"] == f"ok custom op plugin {plugin / 'libcust_onnx_parsers.so'}"
    assert r.returncode == 0, r.stdout


@pytest.mark.cann_double
def test_bundle_compiled_for_the_other_chip_fails_the_npu_check(sshd, tmp_path, fake_ascend):
    bundle = synthetic_bundle(tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["graph"]["om_soc"] = "Ascend310B1"  # compiled for a 20T, deployed to an 8T
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    inventory = write_inventory(tmp_path / "inv.yml", sshd.board(tmp_path / "b", soc="Ascend310B4",
                                                                  cann_env=str(fake_ascend / "set_env.sh")))
    r = fab(inventory, "doctor", "--bundle", str(bundle))
    assert lines_of(r.stdout)["npu"] == (
        "warn Ascend310B4 (8T) but bundle synthetic's model.om was compiled for Ascend310B1 (20T): it will not load "
        "-> fix: recompile: python -m host compile --bundle DIR --soc Ascend310B4")


@pytest.mark.cann_double
def test_newer_driver_and_an_om_from_a_newer_cann_than_the_board_has(sshd, tmp_path):
    ascend_root = make_fake_ascend(tmp_path / "Ascend", "npu-smi-24.1.rc2.txt", "ascend_toolkit_install.info",
                                   "aarch64-linux/ascend_toolkit_install.info")
    bundle = synthetic_bundle(tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["graph"].update(om_soc="Ascend310B1", om_cann="8.0.0")  # built with CANN 8.0.0; the board has 8.0.RC1
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    inventory = write_inventory(tmp_path / "inv.yml", sshd.board(tmp_path / "b", soc="Ascend310B1",
                                                                  cann_env=str(ascend_root / "set_env.sh")))
    checks = lines_of(fab(inventory, "doctor", "--bundle", str(bundle)).stdout)
    assert checks["npu"] == "ok Ascend310B (npu-smi names no variant; the inventory says Ascend310B1, 20T)"
    assert checks["toolkit"] == (
        "warn bundle synthetic: model.om was built with CANN 8.0.0 but the board has CANN 8.0.RC1 (an .om runs on its "
        "own CANN or newer) -> fix: recompile with CANN 8.0.RC1 (python -m host compile --runner board, or a CANN "
        "8.0.RC1 image), or upgrade the board's toolkit to 8.0.0")

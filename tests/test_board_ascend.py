"""board/ascend.py: the one chip table, plugin finder, chip detection and CANN version rule,
on recorded-format outputs of both driver and toolkit generations (tests/data/ascend/SOURCES.md)."""
from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from board import ascend

DATA = Path(__file__).resolve().parent / "data" / "ascend"


@pytest.mark.parametrize("recorded, chip", [("npu-smi-23.0.rc3.txt", "Ascend310B4"), ("npu-smi-24.1.rc2.txt", "Ascend310B")])
@pytest.mark.cann_double
def test_npu_smi_of_both_driver_generations_names_the_chip(recorded, chip):
    assert ascend.chip_from_npu_smi((DATA / recorded).read_text()) == chip
    assert ascend.chip_from_npu_smi("| 0  Ascend310B4  | OK |") == "Ascend310B4"
    assert ascend.chip_from_npu_smi("| 0  910B3  | OK |") is None


def fake_npu_smi(tmp_path: Path, recorded: str) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "npu-smi").write_text(f"#!/bin/sh\ncat '{DATA / recorded}'\n")
    (bin_dir / "npu-smi").chmod(0o755)
    return str(bin_dir)


@pytest.mark.cann_double
def test_detect_chip_asks_pyacl_first_and_falls_back_to_npu_smi(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", fake_npu_smi(tmp_path, "npu-smi-24.1.rc2.txt") + ":/usr/bin:/bin")
    monkeypatch.setitem(sys.modules, "acl", types.SimpleNamespace(get_soc_name=lambda: "Ascend310B4"))
    assert ascend.detect_chip() == {"chip": "Ascend310B4", "source": "acl.get_soc_name", "error": None}
    monkeypatch.setitem(sys.modules, "acl", None)  # `import acl` raises ImportError
    assert ascend.detect_chip() == {"chip": "Ascend310B", "source": "npu-smi", "error": None}
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert ascend.detect_chip()["source"] is None


@pytest.mark.cann_double
def test_chip_verdicts_for_both_driver_generations():
    old, new = ({"chip": ascend.chip_from_npu_smi((DATA / f).read_text()), "source": "npu-smi", "error": None}
                for f in ("npu-smi-23.0.rc3.txt", "npu-smi-24.1.rc2.txt"))
    assert ascend.chip_verdict(old, "Ascend310B4", None, "", True, "acl") == ("ok", "Ascend310B4 (8T)", "")
    verdict, detail, fix = ascend.chip_verdict(old, None, "Ascend310B1", "bundle b", True, "acl")
    assert verdict == "fail" and "compiled for Ascend310B1 (20T): it will not load" in detail and "--soc Ascend310B4" in fix
    assert ascend.chip_verdict(new, "Ascend310B4", None, "", True, "acl") == (
        "ok", "Ascend310B (npu-smi names no variant; the inventory says Ascend310B4, 8T)", "")
    verdict, detail, fix = ascend.chip_verdict(new, None, None, "", True, "acl")
    assert verdict == "warn" and "20T boards are Ascend310B1" in detail and fix.startswith("set soc:")
    # the family alone still catches an .om for the other variant, through the inventory's soc
    assert ascend.chip_verdict(new, "Ascend310B4", "Ascend310B1", "bundle b", True, "acl") == (
        "fail", "Ascend310B (npu-smi names no variant; the inventory says Ascend310B4, 8T) but bundle b's model.om "
        "was compiled for Ascend310B1 (20T): it will not load", "recompile: python -m host compile --bundle DIR --soc Ascend310B4")
    assert ascend.chip_verdict(new, "Ascend310B1", "Ascend310B1", "bundle b", True, "acl")[0] == "ok"


@pytest.mark.parametrize("recorded, where, version", [
    ("ascend_toolkit_install.info", "aarch64-linux/ascend_toolkit_install.info", "8.0.RC1"),
    ("version.cfg", "version.cfg", "7.0.RC1"),
])
@pytest.mark.cann_double
def test_toolkit_version_from_both_file_formats(tmp_path, recorded, where, version):
    home = tmp_path / "ascend-toolkit" / "latest"
    (home / where).parent.mkdir(parents=True, exist_ok=True)
    (home / where).write_text((DATA / recorded).read_text())
    assert ascend.toolkit_version({"ASCEND_TOOLKIT_HOME": str(home)}) == {"version": version, "file": str(home / where)}


def test_an_om_runs_on_its_own_cann_or_newer():
    order = ["7.0.RC1", "7.0.0", "8.0.RC1.alpha003", "8.0.RC1", "8.0.RC2", "8.0.0", "8.1.RC1"]
    assert sorted(order, key=ascend.version_key) == order
    assert ascend.cann_mismatch("8.0.RC1", "8.0.0") is None and ascend.cann_mismatch("8.0.0", None) is None
    problem = ascend.cann_mismatch("8.0.RC1", "7.0.RC1")
    assert problem.startswith("model.om was built with CANN 8.0.RC1 but the board has CANN 7.0.RC1")
    assert "recompile with CANN 7.0.RC1" in problem and "upgrade the board's toolkit to 8.0.RC1" in problem
    verdict, detail, fix = ascend.cann_verdict({"version": "7.0.RC1", "file": "f"}, "8.0.RC1", "bundle b", True)
    assert verdict == "fail" and detail.startswith("bundle b: model.om was built with CANN 8.0.RC1") and "recompile" in fix


def plugin(root: Path, marker: bytes = b"MatMulInteger", vendor: str = "edge_llm") -> Path:
    lib = root / "vendors" / vendor / "framework" / "onnx" / "libcust_onnx_parsers.so"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"\x7fELF...ai.onnx::17::" + marker)
    return lib


def test_find_plugin_needs_the_marker_and_the_vendor_enabled_in_config_ini(tmp_path):
    opp = tmp_path / "opp"
    plugin(opp, marker=b"Other", vendor="aaa")
    lib = plugin(opp)
    found = ascend.find_plugin({"ASCEND_OPP_PATH": str(opp)})
    assert found.lib is None and "vendor 'edge_llm' is not in" in found.problem and "config.ini load_priority" in found.problem
    (opp / "vendors" / "config.ini").write_text("load_priority=customize,edge_llm\n")
    assert ascend.find_plugin({"ASCEND_OPP_PATH": str(opp)}).lib == str(lib)
    custom = plugin(tmp_path / "custom")  # ASCEND_CUSTOM_OPP_PATH needs no config.ini
    assert ascend.find_plugin({"ASCEND_CUSTOM_OPP_PATH": str(custom.parents[2])}).lib == str(custom)


def test_the_file_runs_standalone_and_prints_its_facts(tmp_path):
    home = tmp_path / "latest"
    home.mkdir()
    (home / "version.cfg").write_text((DATA / "version.cfg").read_text())
    p = subprocess.run(["python3", "-c", Path(ascend.__file__).read_text()], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "ASCEND_TOOLKIT_HOME": str(home)})
    facts = json.loads(p.stdout)
    assert facts["cann"]["version"] == "7.0.RC1" and facts["chip"]["source"] is None
    assert facts["plugin"] == {"lib": None, "looked": [], "problem": None}


def test_board_verify_compares_the_om_cann_with_this_machines_toolkit(tiny_bundle, tmp_path, monkeypatch, capsys):
    import dataclasses
    import shutil

    from board.__main__ import main
    from board.manifest import file_entries, load_manifest, write_manifest

    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / "model.om").write_bytes(b"an om")
    m = load_manifest(bundle)
    graph = dataclasses.replace(m.graph, om="model.om", om_soc="Ascend310B1", om_cann="8.0.RC1")
    write_manifest(bundle, dataclasses.replace(m, graph=graph, files={**m.files, **file_entries(bundle, ["model.om"])}))
    home = tmp_path / "latest"
    home.mkdir()
    (home / "version.cfg").write_text((DATA / "version.cfg").read_text())  # CANN 7.0.RC1: older
    monkeypatch.setenv("ASCEND_TOOLKIT_HOME", str(home))
    assert main(["verify", "--bundle", str(bundle)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: model.om was built with CANN 8.0.RC1 but the board has CANN 7.0.RC1")
    (home / "version.cfg").write_text((DATA / "version.cfg").read_text().replace("7.0.RC1", "8.0.RC2"))
    assert main(["verify", "--bundle", str(bundle)]) == 0
    assert "model.om built with CANN 8.0.RC1; this machine has CANN 8.0.RC2" in capsys.readouterr().out

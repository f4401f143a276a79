"""scripts/ascend-smoke.sh: one line and exit 2 where there is no NPU; on a stand-in board (npu-smi, CANN
toolkit, ATC and pyACL doubles) every step runs and lands in summary.json and the archive."""
from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.support.compile_bundles import FAKE_BIN, fake_toolkit, install_fake_plugin
from tests.support.paths import ROOT, STORIES_BIN, TINYSTORIES_TEXT, need

SCRIPT = ROOT / "scripts" / "ascend-smoke.sh"
NO_NPU = ("ascend-smoke: no NPU here (npu-smi not found, no CANN set_env.sh under /usr/local/Ascend/ascend-toolkit); "
          "run this on the Orange Pi AI Pro\n")

# `npu-smi info` on an Orange Pi AI Pro 20T (310B1, driver 23.0.rc3), as printed in a public README of a YOLO
# deployment on that board (found through code search); TEST DOUBLE, not Huawei's npu-smi.
NPU_SMI = r"""#!/bin/sh
[ "$1" = info ] || { echo "npu-smi (test double): only 'info'" >&2; exit 1; }
cat <<'EOF'
+--------------------------------------------------------------------------------------------------------+
| npu-smi 23.0.rc3                                 Version: 23.0.rc3                                     |
+-------------------------------+-----------------+------------------------------------------------------+
| NPU     Name                  | Health          | Power(W)     Temp(C)           Hugepages-Usage(page) |
| Chip    Device                | Bus-Id          | AICore(%)    Memory-Usage(MB)                        |
+===============================+=================+======================================================+
| 0       310B1                 | OK              | 10.7         58                15    / 15            |
| 0       0                     | NA              | 0            8983 / 11577                            |
+===============================+=================+======================================================+
EOF
"""

# pyACL for the script's subprocesses (TEST DOUBLE): tests/support/fake_acl.FakeAcl as the `acl` module. The
# stand-in ATC's .om holds its arguments, not the JSON FakeAcl reads, so each load from memory of that text
# writes the JSON into a copy of the bundle the command names (--bundle, write_fake_om) and loads that instead,
# from memory of the same kind; FakeAcl then runs the bundle's model.onnx.
ACL_SHIM = '''
import ctypes, shutil, sys, tempfile
from pathlib import Path
from tests.support.fake_acl import FakeAcl, write_fake_om

_fake = FakeAcl()
_load = _fake.mdl.load_from_mem


def _load_stand_in(ptr, size):
    if not ctypes.string_at(ptr, size).startswith(b"FAKE-OM (tests/fake_bin/atc)"):
        return _load(ptr, size)
    copy = Path(tempfile.mkdtemp(prefix="fake-acl-")) / "bundle"
    shutil.copytree(sys.argv[sys.argv.index("--bundle") + 1], copy)
    data = write_fake_om(copy).read_bytes()
    host = ptr not in _fake.memory
    buf, _ = _fake.rt.malloc_host(len(data)) if host else _fake.rt.malloc(len(data), 0)
    ctypes.memmove(buf, data, len(data))
    try:
        return _load(buf, len(data))
    finally:
        (_fake.rt.free_host if host else _fake.rt.free)(buf)


_fake.mdl.load_from_mem = _load_stand_in
sys.modules[__name__] = _fake
'''

STEPS = ["system", "npu-smi", "cann-version", "ascend-facts", "soc", "stories-build", "stories-compile",
         "stories-verify", "stories-generate-acl", "stories-generate-onnxruntime", "stories-compare-ids",
         "stories-bench-acl", "stories-bench-onnxruntime", "ascend-log"]
QUICK = ["--max-new-tokens", "8", "--prompt-tokens", "8", "--new-tokens", "8"]


def test_without_an_npu_it_says_so_in_one_line_and_exits_2(tmp_path):
    if shutil.which("npu-smi") or Path("/usr/local/Ascend/ascend-toolkit/set_env.sh").exists():
        pytest.skip("this machine has an NPU stack; the one-line refusal is for machines without one")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    p = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert (p.returncode, p.stderr, p.stdout) == (2, NO_NPU, "")
    assert list(tmp_path.iterdir()) == []  # no output directory either


def stand_in_board(root: Path) -> dict:
    """The environment of a board with the NPU doubles: npu-smi, CANN 8.0.RC1 toolkit, ATC with our plugin, pyACL."""
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "npu-smi").write_text(NPU_SMI)
    (root / "bin" / "npu-smi").chmod(0o755)
    (root / "pyacl").mkdir()
    (root / "pyacl" / "acl.py").write_text(ACL_SHIM)
    (root / "home").mkdir()
    (root / "tmp").mkdir()
    opp = root / "opp"
    install_fake_plugin(opp)
    return {"PATH": f"{root / 'bin'}:{FAKE_BIN}:{Path(sys.executable).parent}:/usr/bin:/bin",
            "ASCEND_TOOLKIT_HOME": str(fake_toolkit(root, "8.0.RC1")), "ASCEND_OPP_PATH": str(opp),
            "PYTHONPATH": str(root / "pyacl"), "HOME": str(root / "home"), "TMPDIR": str(root / "tmp")}


def run_smoke(env: dict, out: Path, *args: str) -> subprocess.CompletedProcess:
    argv = ["bash", str(SCRIPT), "--out", str(out), "--python", sys.executable, *QUICK, *args]
    return subprocess.run(argv, cwd=out.parent, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One full run on the stand-in board: stories260K built, compiled, run on acl and onnxruntime."""
    need(STORIES_BIN)
    need(TINYSTORIES_TEXT)
    root = tmp_path_factory.mktemp("board")
    env = stand_in_board(root)
    out = root / "smoke"
    p = run_smoke(env, out, "--build-args", "--calib-samples 2 --calib-seq-len 32 --eval-tokens 64 --smooth off")
    return env, out, p


@pytest.mark.cann_double
def test_every_step_runs_and_is_in_the_summary_and_the_archive(smoke):
    env, out, p = smoke
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip() == f"ascend-smoke: {len(STEPS)} ok, 0 failed, 0 skipped; {out}/summary.json; send back {out}.tar.gz"
    summary = json.loads((out / "summary.json").read_text())
    assert [s["step"] for s in summary["steps"]] == STEPS
    assert all(s["exit"] == 0 and s["seconds"] >= 0 and s["command"] for s in summary["steps"])
    assert (summary["soc"], summary["ok"], summary["failed"]) == ("Ascend310B1", len(STEPS), 0)
    assert "310B1" in (out / "npu-smi.txt").read_text()
    assert "version=8.0.RC1" in (out / "cann-version.txt").read_text()
    compare = next(s for s in summary["steps"] if s["step"] == "stories-compare-ids")
    assert compare["ids_equal"] is True and json.loads((out / "stories-compare-ids.txt").read_text())["equal"] is True
    assert json.loads((out / "stories-generate-acl.txt").read_text())["backend"] == "acl"
    compiled = json.loads((out / "stories-compile.txt").read_text())  # ATC on x86 is told the board's OS/CPU
    assert compiled["host_env"] == (None if platform.machine() == "aarch64" else "linux/aarch64")
    assert json.loads((out / "stories-manifest.json").read_text())["graph"]["om_soc"] == "Ascend310B1"
    with tarfile.open(f"{out}.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"smoke/summary.json", "smoke/npu-smi.txt", "smoke/stories-bench-acl.txt"} <= names
    assert not any(n.startswith("smoke/bundles") for n in names)  # the compiled bundles stay on the board


@pytest.mark.cann_double
def test_a_failing_step_is_recorded_and_the_rest_still_run(smoke, tmp_path):
    env, out, _ = smoke
    bundle = out / "bundles" / "stories"
    p = run_smoke({**env, "FAKE_ATC_FAIL": "E19010: No parser is registered for Op [x]"}, tmp_path / "again",
                  "--stories-bundle", str(bundle), "--skip-acl", "--soc", "20T")
    assert p.returncode == 1
    steps = {s["step"]: s for s in json.loads((tmp_path / "again" / "summary.json").read_text())["steps"]}
    assert steps["stories-compile"]["exit"] == 2 and "E19010" in (tmp_path / "again" / "stories-compile.err").read_text()
    assert steps["stories-generate-acl"]["skipped"] == "--skip-acl" and "soc" not in steps  # --soc given
    assert steps["stories-generate-onnxruntime"]["exit"] == 0 and steps["stories-bench-onnxruntime"]["exit"] == 0
    assert (bundle / "model.om").exists()  # --stories-bundle is copied, never compiled in place

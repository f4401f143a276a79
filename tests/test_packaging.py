"""The wheel built from this checkout installs and runs its CLIs from outside the checkout."""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.support.paths import ROOT


def _run(argv, cwd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=300, **kw)


def test_the_wheel_holds_every_package_and_its_clis_run_from_a_fresh_venv(tmp_path):
    source, wheels = tmp_path / "source", tmp_path / "wheels"  # a copy: setuptools writes build/ into the tree
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv*", ".git", "bundles", "build", "__pycache__",
                                                                "*.egg-info", ".pytest_cache"))
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, source],
                 cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("edge_llm-*.whl")
    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", venv], cwd=tmp_path).returncode == 0
    py = venv / "bin" / "python"
    # the dependencies come from this venv's site-packages as a plain path entry: its .pth files, the
    # editable install of the checkout among them, are not run
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = _run([py, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel], cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr
    where = _run([py, "-c", "import host.ascend, board.serve, deploy.onboard; print(host.ascend.__file__)"], cwd=tmp_path)
    assert where.returncode == 0 and where.stdout.startswith(str(site)), where.stdout + where.stderr
    for module, words in (("host", "build"), ("board", "chat")):
        r = _run([py, "-m", module, "--help"], cwd=tmp_path)
        assert r.returncode == 0 and words in r.stdout, r.stderr
    tasks = _run([venv / "bin" / "edge-llm-fab", "--list"], cwd=tmp_path)
    assert tasks.returncode == 0, tasks.stderr
    assert {"deploy", "chat", "setup", "doctor"} <= {line.split()[0] for line in tasks.stdout.splitlines()[1:] if line.strip()}

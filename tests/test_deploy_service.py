"""`fab service` and the deploy hook against the real sshd, on a board without systemd.

No systemd runs here, so the tasks use their fallback runner (a background process with a pid
file): the unit file is checked as written, and start/stop/status/logs, the restart on deploy and
the switch back from an unhealthy release run for real.
"""
from __future__ import annotations

import os
import stat
import sys

import pytest

from tests.support.serve import free_port, http
from tests.support.paths import ROOT
from tests.support.sshd import FAB, fab, synthetic_bundle, write_inventory
from tests.test_deploy_release import current_release

pytestmark = pytest.mark.ssh


@pytest.fixture
def board(sshd, tmp_path):
    """(inventory, install dir, port) of a board whose service is stopped after the test."""
    root, port = tmp_path / "board", free_port()
    inventory = write_inventory(tmp_path / "inventory.yml", sshd.board(root))
    yield inventory, root, port
    pid = root / "serve.pid"
    if pid.exists():
        fab(inventory, "service", "stop")


def test_install_on_an_ascend_board_writes_a_unit_with_a_dedicated_user_and_the_cann_env(sshd, tmp_path, tiny_bundle):
    root = tmp_path / "board"
    plain = write_inventory(tmp_path / "plain.yml", sshd.board(root))  # deploy checks that pyACL imports on acl boards
    assert fab(plain, "deploy", "--bundle", str(tiny_bundle)).returncode == 0
    inventory = write_inventory(tmp_path / "inventory.yml", sshd.board(root, backend="acl"))
    r = fab(inventory, "service", "install", "--port", "8099", "--host", "0.0.0.0")
    assert r.returncode == 0, r.stderr
    assert "no systemd on this board" in r.stdout and "fallback runner" in r.stdout
    unit = (root / "edge-llm.service").read_text()
    for line in ("User=edge-llm", "SupplementaryGroups=HwHiAiUser", f"WorkingDirectory={root}/current",
                 f"EnvironmentFile=-{root}/service.env", "Restart=on-failure", "WantedBy=multi-user.target",
                 f"ExecStart={sys.executable} -B -m board serve --bundle {root}/current --host 0.0.0.0 --port 8099"):
        assert line in unit.splitlines(), f"{line!r} not in the unit:\n{unit}"
    assert not (root / "venv").exists()  # no setup venv on this board: the unit runs the board's python
    assert (root / "service.env").read_text().startswith("# What env.sh sets (CANN)")


def test_service_starts_reports_logs_and_stops_with_the_fallback_runner(board, tiny_bundle, tmp_path):
    inventory, root, port = board
    assert fab(inventory, "service", "status").returncode == 1  # nothing installed yet
    assert fab(inventory, "deploy", "--bundle", str(tiny_bundle)).returncode == 0
    (tmp_path / "key").write_text("board-key\n")
    r = fab(inventory, "service", "install", "--port", str(port), "--api-key-file", str(tmp_path / "key"))
    assert r.returncode == 0, r.stderr
    assert (root / "api-key").read_text() == "board-key\n"
    assert stat.S_IMODE((root / "api-key").stat().st_mode) == 0o600
    assert f"--api-key-file {root}/api-key" in (root / "edge-llm.service").read_text()
    r = fab(inventory, "service", "start")
    assert r.returncode == 0 and "service start done (background)" in r.stdout, r.stderr
    r = fab(inventory, "service", "status")
    assert r.returncode == 0 and f"service active (background, port {port}); health: 200" in r.stdout, r.stdout
    assert fab(inventory, "status").stdout.rstrip().endswith(f"; service active (background, port {port})")
    assert http(f"http://127.0.0.1:{port}/v1/models")[0] == 401
    status, body = http(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer board-key"})
    assert status == 200 and body["data"][0]["id"] == "tiny-random-llama"
    assert "serving" in fab(inventory, "service", "logs").stdout
    pid = int((root / "serve.pid").read_text())
    assert fab(inventory, "service", "stop").returncode == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert "service inactive" in fab(inventory, "service", "status").stdout


def test_deploy_restarts_the_service_and_switches_back_from_an_unhealthy_release(board, tiny_bundle, tiny_w8a8_bundle, tmp_path):
    inventory, root, port = board
    assert fab(inventory, "deploy", "--bundle", str(tiny_bundle)).returncode == 0
    assert fab(inventory, "service", "install", "--port", str(port)).returncode == 0
    assert fab(inventory, "service", "start").returncode == 0
    r = fab(inventory, "deploy", "--bundle", str(tiny_w8a8_bundle))
    good = current_release(root).name
    assert r.returncode == 0, r.stderr
    assert f"service restarted on {good}, healthy at http://127.0.0.1:{port}/health" in r.stdout
    status, body = http(f"http://127.0.0.1:{port}/v1/models")
    assert status == 200 and body["data"][0]["quantization"] == "w8a8"  # the new release serves

    r = fab(inventory, "deploy", "--bundle", str(synthetic_bundle(tmp_path / "broken")))  # manifest fine, model not
    assert r.returncode == 1
    assert "did not come up healthy" in r.stderr and f"switched back to {good}, which is healthy" in r.stderr, r.stderr
    assert current_release(root).name == good
    status, body = http(f"http://127.0.0.1:{port}/v1/models")
    assert status == 200 and body["data"][0]["quantization"] == "w8a8"


def test_fab_serve_runs_the_server_in_the_foreground_and_forwards_its_port(board, tiny_bundle):
    import signal
    import subprocess
    import time

    inventory, root, port = board
    assert fab(inventory, "deploy", "--bundle", str(tiny_bundle)).returncode == 0
    local = free_port()
    env = {**os.environ, "EDGE_LLM_INVENTORY": str(inventory)}
    proc = subprocess.Popen([str(FAB), "serve", "--port", str(port), "--local-port", str(local)], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, answer = time.monotonic() + 60, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                answer = http(f"http://127.0.0.1:{local}/health")
                if answer[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        if answer is None or answer[0] != 200:
            proc.kill()
            raise AssertionError(f"no health through the forwarded port: {proc.communicate()[0]}")
        assert answer == (200, {"status": "ok", "model": "tiny-random-llama"})
        assert http(f"http://127.0.0.1:{port}/health")[0] == 200  # the board's own port: the same server
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the pty closes with fab: the board's server goes too
        try:
            http(f"http://127.0.0.1:{port}/health")
        except OSError:
            break
        time.sleep(0.3)
    else:
        raise AssertionError("the board's server outlived `fab serve`")

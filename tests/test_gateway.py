"""`fab gateway --run`: real nginx from the generated config in front of two real board servers on 127.0.0.1."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from http.client import HTTPConnection
from pathlib import Path

import pytest

from deploy.errors import DeployError
from deploy.gateway import address
from deploy.inventory import Board
from tests.support.paths import ROOT
from tests.support.serve import free_port, start_server
from tests.support.sshd import FAB, write_inventory

pytestmark = pytest.mark.ssh
NGINX = Path("/usr/sbin/nginx")
KEY = "gateway-test-key"
BOARD = dict(name="pi", host="192.168.1.20", user="u", key=None, path="/opt/edge-llm", backend="onnxruntime")


def ask(port: int, body: dict) -> tuple[int, str, dict]:
    """(status, X-Edge-LLM-Board, JSON body) of one chat completion sent to the gateway."""
    conn = HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    r = conn.getresponse()
    answer = (r.status, r.getheader("X-Edge-LLM-Board"), json.loads(r.read()))
    conn.close()
    return answer


def chat_requests(server) -> float:
    """Chat completions the board's own /metrics counted as answered (200)."""
    return sum(v for k, v in server.metrics().items()
               if k.startswith("edge_llm_requests_total") and "chat" in k and 'status="200"' in k)


def wait_listening(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail("nginx never listened")


def drained(conn: HTTPConnection, stream, quiet: float = 1.0) -> bytes:
    """What arrives on a streamed response until it has been quiet for `quiet` seconds."""
    conn.sock.settimeout(quiet)
    data = b""
    try:
        while chunk := stream.read1(65536):
            data += chunk
    except TimeoutError:
        pass
    return data


@pytest.fixture
def boards(sshd, tmp_path, slow_bundle):
    """Two boards' servers (the real `python -m board serve`, one key) and an inventory naming them.

    Each board gets the service.json `fab service install` writes: the gateway reads only that, and
    the service's own path is tests/test_deploy_service.py's."""
    if not NGINX.exists():
        pytest.skip(f"{NGINX} is absent: install nginx (apt-get install nginx) to run the gateway test")
    (tmp_path / "key").write_text(KEY + "\n")
    servers, entries = [], []
    for name in ("g1", "g2"):
        server = start_server(slow_bundle, tmp_path / f"{name}.log", "--api-key-file", str(tmp_path / "key"), api_key=KEY)
        servers.append(server)
        root = tmp_path / name
        root.mkdir()
        port = int(server.url.rsplit(":", 1)[1])
        (root / "service.json").write_text(json.dumps({"port": port, "host": "127.0.0.1", "api_key": True,
                                                       "runner": "background"}))
        entries.append(sshd.board(root, name=name))
    yield write_inventory(tmp_path / "inv.yml", *entries), servers
    for server in servers:
        server.stop()


def test_nginx_spreads_requests_over_both_boards_survives_one_stopping_and_streams_unbuffered(boards, sshd, tmp_path):
    inventory, (one, two) = boards
    port, conf = free_port(), tmp_path / "gateway.conf"
    env = {**os.environ, "EDGE_LLM_INVENTORY": str(inventory)}
    proc = subprocess.Popen([str(FAB), "gateway", "--run", "--out", str(conf), "--port", str(port)], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group: the test's Ctrl-C reaches fab and nginx only
    try:
        wait_listening(port, proc)
        text = conf.read_text()
        assert KEY not in text and str(sshd.client_key) not in text  # neither the API key nor the SSH key
        for line in ("least_conn;", "proxy_buffering off;", "proxy_read_timeout 600s;",
                     f"server {one.url[7:]} max_fails=2 fail_timeout=10s;  # g1",
                     f"server {two.url[7:]} max_fails=2 fail_timeout=10s;  # g2"):
            assert any(t.strip().startswith(line) for t in text.splitlines()), line

        short = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}
        answers = [ask(port, short) for _ in range(20)]
        assert all(status == 200 and body["choices"][0]["message"]["content"] is not None for status, _, body in answers)
        assert sorted({board for _, board, _ in answers}) == ["g1", "g2"]
        assert chat_requests(one) + chat_requests(two) == 20 and min(chat_requests(one), chat_requests(two)) >= 1

        two.stop()
        answers = [ask(port, short) for _ in range(20)]
        assert [(status, board) for status, board, _ in answers] == [(200, "g1")] * 20  # a refused board is skipped

        conn = HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/v1/chat/completions", json.dumps({**short, "max_tokens": 2000, "stream": True}),
                     {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
        stream = conn.getresponse()
        got = b"".join(stream.readline() for _ in range(4))  # two events: the role, then the first text
        os.kill(one.proc.pid, signal.SIGSTOP)  # freeze it mid-answer
        try:
            got += drained(conn, stream)
        finally:
            os.kill(one.proc.pid, signal.SIGCONT)
        # Everything the board sent before it froze is here, cut where the board cut it (between events):
        # nginx buffering the answer would hold back a part-filled buffer, cut anywhere in an event.
        assert stream.status == 200 and got.startswith(b"data: {") and b"[DONE]" not in got
        assert got.endswith(b"\n\n") and got.count(b"\n\ndata: {") >= 1 and b'"content": "' in got, got[-300:]
        conn.close()
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.startswith(f"gateway: http://127.0.0.1:{port}/ -> g1 ({one.url[7:]}), g2 ({two.url[7:]}); nginx logs in ")
    with pytest.raises(OSError):  # nginx went with it
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@pytest.mark.parametrize("board, listen, want", [
    (dict(host="192.168.1.20"), "0.0.0.0", "192.168.1.20:8080"),  # every interface: the inventory's address
    (dict(host="127.0.0.1"), "127.0.0.1", "127.0.0.1:8080"),  # loopback on a loopback board: reachable
    (dict(connection="local", host="localhost"), "127.0.0.1", "127.0.0.1:8080"),
    (dict(host="fe80::1"), "::", "[fe80::1]:8080"),
    (dict(host="192.168.1.20"), "10.0.0.5", "10.0.0.5:8080"),  # bound to one address: that one
])
def test_the_upstream_address_is_where_this_machine_reaches_the_board_s_server(board, listen, want):
    assert address(Board(**{**BOARD, **board}), listen, 8080) == want


@pytest.mark.parametrize("host, listen, why", [
    ("192.168.1.20", "127.0.0.1", "its server listens on 127.0.0.1 only, out of this machine's reach; left out; "
                                  "reinstall it with `fab service install --host 0.0.0.0 --api-key-file KEY`"),
    ("pi;include /etc/passwd", "0.0.0.0", "host 'pi;include /etc/passwd' is not a plain name or address; left out; "
                                          "fix 'host' in the inventory"),
])
def test_a_board_nginx_cannot_reach_or_a_host_nginx_would_parse_is_left_out_with_the_fix(host, listen, why):
    with pytest.raises(DeployError) as e:
        address(Board(**{**BOARD, "host": host}), listen, 8080)
    assert str(e.value) == f"pi: {why}"

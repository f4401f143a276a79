"""`fab gateway`: one address in front of many boards, as a config for nginx (Debian's package), not a proxy of ours.

Each board's server is found from `<path>/service.json` (`fab service install`): its port, and its
address (the inventory's host; a server bound to 127.0.0.1 is only reachable from this machine).
nginx spreads requests by least connections, marks a board down for a while after failed
connections (passive health checks: max_fails, fail_timeout) and retries a refused connection on
another board; answers stream through unbuffered, with read timeouts long enough for SSE. The
config holds no API key: clients send their own, nginx passes it through to the boards.
"""
from __future__ import annotations

import ipaddress
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from invoke.exceptions import Exit

from deploy.errors import DeployError
from deploy.inventory import Board
from deploy.remote import Remote
from deploy.service import load_options
from deploy.text import shown

NGINX = ("nginx", "/usr/sbin/nginx")  # on PATH, else Debian's place (not on a user's PATH there)
_HOST = re.compile(r"^[A-Za-z0-9._-]+$|^[0-9A-Fa-f:.]+$")  # a name or an address: nothing nginx would parse
MAX_FAILS, FAIL_TIMEOUT = 2, "10s"  # two failed connections: that board rests 10 s
READ_TIMEOUT = "600s"  # a streamed answer may pause between tokens; a whole one may take minutes


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hostport(host: str, port: int) -> str:
    """host:port as nginx reads it (an IPv6 address in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def address(board: Board, host: str, port: int) -> str:
    """host:port nginx reaches the board's server at; DeployError when it listens where this machine cannot reach."""
    here = "127.0.0.1" if board.local else board.host
    if host in ("0.0.0.0", "::", ""):
        host = here
    elif _loopback(host) and not (board.local or _loopback(here)):
        raise DeployError(board.name, f"its server listens on {host} only, out of this machine's reach; left out",
                          "reinstall it with `fab service install --host 0.0.0.0 --api-key-file KEY`")
    if not _HOST.match(host):
        raise DeployError(board.name, f"host {host!r} is not a plain name or address; left out", "fix 'host' in the inventory")
    return _hostport(host, port)


def upstream(remote: Remote) -> dict:
    """The board's entry in the upstream: {"board", "address"}; DeployError when it has no service."""
    opts = load_options(remote)
    if opts is None:
        raise DeployError(remote.board.name, "no service installed; left out of the gateway",
                          "run `fab service install` and `fab service start`")
    return {"board": remote.board.name, "address": address(remote.board, opts.host, opts.port)}


def servers(found) -> list[dict]:
    """The boards that made it into the upstream; one line on stderr for each that did not, Exit when none did."""
    for error in found.failed.values():
        print(shown(str(error)), file=sys.stderr)
    good = [value for value in found.values() if isinstance(value, dict)]
    if not good:
        raise Exit("gateway: no board has a server to put behind it", code=1)
    return good


def config(boards: list[dict], host: str, port: int) -> str:
    """A whole nginx config (`nginx -p DIR -c FILE`: pid, logs and temp files relative to DIR)."""
    members = "\n".join(f"        server {b['address']} max_fails={MAX_FAILS} fail_timeout={FAIL_TIMEOUT};  # {b['board']}"
                        for b in boards)
    # $upstream_addr lists every board tried ("a, b" after a retry): the last one answered
    names = "\n".join(f"        \"~(^|, ){re.escape(b['address'])}$\" {b['board']};" for b in boards)
    listen = _hostport(host, port)
    return f"""# Written by `fab gateway` (deploy/gateway.py) for {len(boards)} board(s); no API key in here:
# clients send theirs (Authorization: Bearer ...) and nginx passes it to the boards.
worker_processes 1;
pid logs/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    log_format edge_llm '$remote_addr [$time_local] "$request" $status $edge_llm_board $request_time';
    access_log logs/access.log edge_llm;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    map $upstream_addr $edge_llm_board {{  # which board answered, for the log and the X-Edge-LLM-Board header
        default $upstream_addr;
{names}
    }}
    upstream edge_llm_boards {{
        least_conn;  # a board busy with a long answer gets the next request last
{members}
        keepalive 16;
    }}
    server {{
        listen {listen};
        client_max_body_size 8m;
        location / {{
            proxy_pass http://edge_llm_boards;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;  # SSE: each event goes out as the board sends it, none held or spooled to disk
            proxy_cache off;
            proxy_request_buffering off;
            proxy_connect_timeout 5s;
            proxy_read_timeout {READ_TIMEOUT};
            proxy_send_timeout {READ_TIMEOUT};
            proxy_next_upstream error timeout http_502 http_504;  # a POST is retried only if never sent
            add_header X-Edge-LLM-Board $edge_llm_board always;
        }}
    }}
}}
"""


def write(text: str, out: Path | None) -> Path:
    """The config at `out`, or in a new temporary directory; its path."""
    path = out or Path(tempfile.mkdtemp(prefix="edge-llm-gateway-")) / "nginx.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def nginx() -> str:
    """The nginx binary; Exit with the install line when there is none."""
    found = shutil.which("nginx") or next((p for p in NGINX[1:] if Path(p).is_file()), None)
    if not found:
        raise Exit("gateway: nginx not found; install it (Debian: apt-get install nginx) or use --out FILE "
                   "with the load balancer you have", code=2)
    return found


def run_nginx(conf: Path, host: str, port: int, boards: list[dict]) -> int:
    """nginx in the foreground with the config, its pid, logs and temp files under a fresh prefix; its exit status."""
    binary = nginx()
    prefix = Path(tempfile.mkdtemp(prefix="edge-llm-nginx-"))
    for d in ("logs", "tmp"):
        (prefix / d).mkdir()
    argv = [binary, "-e", "stderr", "-p", str(prefix), "-c", str(conf.resolve())]
    checked = subprocess.run([*argv, "-t", "-q"], capture_output=True, text=True)
    if checked.returncode:
        raise Exit(f"gateway: nginx refused the config: {(checked.stderr.strip().splitlines() or ['?'])[-1]}", code=1)
    proc = subprocess.Popen([*argv, "-g", "daemon off;"])
    signal.signal(signal.SIGTERM, lambda *_: proc.terminate())  # a `kill` of fab stops nginx too
    shown_host = f"[{host}]" if ":" in host else host
    behind = ", ".join(f"{b['board']} ({b['address']})" for b in boards)
    print(f"gateway: http://{shown_host}:{port}/ -> {behind}; nginx logs in {prefix}/logs (Ctrl-C stops)", flush=True)
    try:
        return proc.wait()
    except KeyboardInterrupt:  # the terminal's Ctrl-C reached nginx too: it is shutting down
        try:
            proc.wait(10)
            return 0
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

"""`fab service ...`: the board's `python -m board serve` as a long-running service, kept healthy across deploys.

With systemd (`/run/systemd/system` exists) it is a unit, `edge-llm.service`: Restart=on-failure,
WorkingDirectory the `current` release, the CANN environment from an EnvironmentFile, and on Ascend
boards a dedicated user in the HwHiAiUser group. Without systemd (containers, minimal images) the
same command runs as a background process with a pid file and a log: the fallback runner, which
restarts nothing by itself and says so. `<path>/service.json` records how the service was installed,
so `fab deploy` can restart it, wait for /health and switch back to the previous release when the
new one does not come up.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from deploy.errors import DeployError
from deploy.release import rollback
from deploy.remote import Remote
from deploy.shell import quote as q

UNIT = "edge-llm.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT}"
SERVICE_USER = "edge-llm"  # the dedicated user on Ascend boards
ASCEND_GROUP = "HwHiAiUser"  # owns the NPU device nodes
HEALTH_TIMEOUT = 120  # seconds a (re)started server gets to load its model

# Run on the board with its python: poll /health until 200 or the deadline; print the last answer.
HEALTH_PY = """
import os, sys, time, urllib.request, urllib.error
url, deadline, pid_file, last = sys.argv[1], time.monotonic() + float(sys.argv[2]), sys.argv[3], "no answer"
def exited():
    try:
        os.kill(int(open(pid_file).read()), 0)
        return False
    except (OSError, ValueError):
        return True
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            print("200", r.read().decode()); sys.exit(0)
    except urllib.error.HTTPError as e:
        last = f"{e.code} {e.read().decode()}"
        if '"status":"error"' in last.replace(" ", ""):
            break  # the model failed to load: waiting longer changes nothing
    except OSError as e:
        last = f"no answer ({e})"
    if pid_file and exited():
        last = "the server exited"
        break
    time.sleep(0.5)
print(last); sys.exit(1)
"""


@dataclass(frozen=True)
class ServiceOptions:
    port: int = 8080
    host: str = "127.0.0.1"
    api_key: bool = False  # a key file was installed at <path>/api-key
    runner: str = "systemd"  # "systemd" | "background" (no systemd on the board)

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"


def serve_argv(root: str, opts: ServiceOptions) -> list[str]:
    """`python -m board serve` arguments for the current release (the service, and `fab serve` in the foreground)."""
    argv = ["-B", "-m", "board", "serve", "--bundle", f"{root}/current", "--host", opts.host, "--port", str(opts.port)]
    return argv + (["--api-key-file", f"{root}/api-key"] if opts.api_key else [])


def service_user(remote: Remote) -> str:
    """The dedicated user on Ascend (acl) boards, else the SSH user."""
    return SERVICE_USER if remote.board.backend == "acl" else remote.board.user


def unit_text(remote: Remote, opts: ServiceOptions, python: str) -> str:
    """The systemd unit for this board, running `python` (the setup venv's, or the board's own)."""
    root, ascend = remote.root, remote.board.backend == "acl"
    user = service_user(remote)
    lines = [
        "# Written by `fab service install` (deploy/service.py); `fab deploy` restarts it.",
        "[Unit]", f"Description=edge-llm OpenAI-compatible server ({remote.board.name})",
        "After=network-online.target", "Wants=network-online.target", "",
        "[Service]", "Type=simple", f"User={user}",
        *([f"SupplementaryGroups={ASCEND_GROUP}"] if ascend else []),
        f"WorkingDirectory={root}/current",
        f"EnvironmentFile=-{root}/service.env",  # the CANN environment env.sh sets up, as KEY=VALUE lines
        "ExecStart=" + " ".join(q(a) for a in [python, *serve_argv(root, opts)]),
        "Restart=on-failure", "RestartSec=3", "",
        "[Install]", "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


# --- on the board --------------------------------------------------------------------------------
def _sh(remote: Remote, script: str, sudo: bool = False):
    """Run a shell snippet (never interpolating unquoted values) as the SSH user, or root via sudo -n."""
    argv = ["bash", "-c", script]
    if sudo and remote.run(["id", "-u"], env=False).stdout.strip() != "0":
        argv = ["sudo", "-n", *argv]
    return remote.run(argv, env=False)


def _fail(remote: Remote, what: str, r) -> DeployError:
    why = (r.stderr.strip().splitlines() or r.stdout.strip().splitlines() or [f"exit status {r.exited}"])[-1]
    hint = "; this needs root or passwordless sudo on the board" if "sudo" in why or "password" in why else ""
    return DeployError(remote.board.name, f"{what} failed: {why}{hint}")


def _need_release(remote: Remote) -> None:
    if remote.run(["test", "-d", remote.path("current", "board")], env=False).exited != 0:
        raise DeployError(remote.board.name, f"no release deployed under {remote.root}", "run `fab deploy --bundle DIR` first")


def has_systemd(remote: Remote) -> bool:
    return remote.run(["test", "-d", "/run/systemd/system"], env=False).exited == 0


def load_options(remote: Remote) -> ServiceOptions | None:
    """How the service was installed, or None when it never was."""
    r = remote.run(["cat", remote.path("service.json")], env=False)
    return ServiceOptions(**json.loads(r.stdout)) if r.exited == 0 else None


def _need_options(remote: Remote) -> ServiceOptions:
    opts = load_options(remote)
    if opts is None:
        raise DeployError(remote.board.name, "no service installed", "run `fab service install` first")
    return opts


def _service_env(remote: Remote) -> str:
    """KEY=VALUE lines of what sourcing <path>/env.sh (the CANN set_env.sh) adds to the environment."""
    env_sh = q(remote.path("env.sh"))
    r = _sh(remote, f'before=$(env | sort); [ -f {env_sh} ] && . {env_sh} >/dev/null 2>&1; '
                    f'comm -13 <(printf "%s\\n" "$before") <(env | sort) | grep -v "^_="')
    return "# What env.sh sets (CANN), for systemd's EnvironmentFile; rewritten by `fab service install`.\n" + r.stdout


def _ensure_deps(remote: Remote) -> str:
    """Install board/requirements-serve.txt of the current release into the board's python when missing."""
    if remote.python(["-c", "import starlette, uvicorn"]).exited == 0:
        return "starlette and uvicorn already importable"
    wheels = remote.path("wheels")
    offline = ["--no-index", "--find-links", wheels] if remote.run(["test", "-d", wheels], env=False).exited == 0 else []
    r = remote.python(["-m", "pip", "install", "-q", "--disable-pip-version-check", *offline,
                       "-r", remote.path("current", "board", "requirements-serve.txt")])
    if r.exited != 0:
        raise _fail(remote, "installing board/requirements-serve.txt (offline boards: add its wheels to `fab setup --wheels`)", r)
    return "installed board/requirements-serve.txt"


def install(remote: Remote, opts: ServiceOptions, key_file: Path | None) -> list[str]:
    """Write the unit (or prepare the fallback runner), the env file and the key; lines to print."""
    name = remote.board.name
    _need_release(remote)
    lines = [f"{name}: {_ensure_deps(remote)}"]
    if key_file:
        remote.write_private(remote.path("api-key"), key_file.read_text().strip() + "\n")
    systemd = has_systemd(remote)
    opts = ServiceOptions(opts.port, opts.host, bool(key_file), "systemd" if systemd else "background")
    venv = remote.path("venv", "bin", "python")
    python = venv if remote.run(["test", "-x", venv], env=False).exited == 0 else remote.board.python
    unit = unit_text(remote, opts, python)
    for fname, text in ((UNIT, unit), ("service.env", _service_env(remote)), ("service.json", json.dumps(asdict(opts)) + "\n")):
        remote.onboard("write_text", path=remote.path(fname), text=text)  # the unit stays beside the releases either way
    if not systemd:
        return lines + [f"{name}: no systemd on this board (/run/systemd/system is missing): the server will run as a "
                        f"background process (fallback runner, no restart on failure or at boot); unit file left at "
                        f"{remote.path(UNIT)} for reference"]
    if remote.board.backend == "acl":
        r = _sh(remote, f"id -u {SERVICE_USER} >/dev/null 2>&1 || useradd --system --no-create-home "
                        f"--shell /usr/sbin/nologin --groups {ASCEND_GROUP} {SERVICE_USER}", sudo=True)
        if r.exited != 0:
            raise _fail(remote, f"creating the service user {SERVICE_USER}", r)
        if key_file:  # only the service reads the key
            r = _sh(remote, f"chown {SERVICE_USER} {q(remote.path('api-key'))}", sudo=True)
            if r.exited != 0:
                raise _fail(remote, f"handing the key file to {SERVICE_USER}", r)
    r = _sh(remote, f"install -m 644 {q(remote.path(UNIT))} {UNIT_PATH} && systemctl daemon-reload "
                    f"&& systemctl enable {UNIT}", sudo=True)
    if r.exited != 0:
        raise _fail(remote, f"installing {UNIT_PATH}", r)
    return lines + [f"{name}: installed {UNIT_PATH} (port {opts.port}); start it with `fab service start`"]


# --- start / stop / status ---------------------------------------------------------------------------
def _pid_file(remote: Remote) -> str:
    return remote.path("serve.pid")


def _background(remote: Remote, action: str, opts: ServiceOptions) -> str:
    """The fallback runner: start or stop `python -m board serve` as a detached process with a pid file."""
    pid, log = q(_pid_file(remote)), q(remote.path("serve.log"))
    # wait (up to 15 s) for the old server to let go of its port before a new one binds it
    stop = (f'if [ -f {pid} ]; then p=$(cat {pid}); kill "$p" 2>/dev/null; '
            f'for _ in $(seq 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; rm -f {pid}; fi; ')
    if action == "stop":
        return stop
    cmd = remote.command(serve_argv(remote.root, opts), python=True, cwd=remote.path("current"))
    return stop + f"setsid nohup bash -c {q(cmd)} >{log} 2>&1 </dev/null & echo $! >{pid}"


def control(remote: Remote, action: str) -> str:
    """start | stop | restart the installed service; the line to print."""
    opts = _need_options(remote)
    if opts.runner == "systemd":
        r = _sh(remote, f"systemctl {action} {UNIT}", sudo=True)
    else:
        r = _sh(remote, _background(remote, "stop" if action == "stop" else "start", opts))
    if r.exited != 0:
        raise _fail(remote, f"{action} of the service", r)
    return f"{remote.board.name}: service {action} done ({opts.runner})"


def health(remote: Remote, opts: ServiceOptions, timeout: float) -> tuple[bool, str]:
    """Whether /health answers 200 within timeout seconds, and its last answer."""
    pid_file = _pid_file(remote) if opts.runner == "background" else ""  # systemd restarts a dead one itself
    r = remote.python(["-c", HEALTH_PY, opts.health_url, str(timeout), pid_file], env=False)
    return r.exited == 0, (r.stdout.strip().splitlines() or ["no answer"])[-1]


def state(remote: Remote, opts: ServiceOptions) -> str:
    """active | inactive | what systemd says, for the installed service."""
    if opts.runner == "systemd":
        return _sh(remote, f"systemctl is-active {UNIT}").stdout.strip() or "unknown"
    pid = q(_pid_file(remote))
    alive = _sh(remote, f'[ -f {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null').exited == 0
    return "active" if alive else "inactive"


def status(remote: Remote) -> str:
    opts = _need_options(remote)
    now = state(remote, opts)
    ok, answer = health(remote, opts, 2) if now == "active" else (False, "not running")
    return f"{remote.board.name}: service {now} ({opts.runner}, port {opts.port}); health: {answer}"


def logs(remote: Remote, lines: int = 50) -> str:
    opts = _need_options(remote)
    if opts.runner == "systemd":
        return _sh(remote, f"journalctl -u {UNIT} -n {int(lines)} --no-pager", sudo=True).stdout
    return _sh(remote, f"tail -n {int(lines)} {q(remote.path('serve.log'))}").stdout


def after_deploy(remote: Remote, release_id: str, previous: str | None, timeout: float = HEALTH_TIMEOUT) -> str | None:
    """The deploy hook: restart an installed service on the new release and wait for /health.

    When it does not come up healthy, switch `current` back to the previous release, restart on it,
    and raise DeployError saying so. None when no service is installed."""
    opts = load_options(remote)
    if opts is None:
        return None
    control(remote, "restart")
    ok, answer = health(remote, opts, timeout)
    if ok:
        return f"{remote.board.name}: service restarted on {release_id}, healthy at {opts.health_url}"
    if not previous or previous == release_id:
        raise DeployError(remote.board.name, f"service on {release_id} is not healthy ({answer}) and there is no "
                                             f"previous release to switch back to; see `fab service logs`")
    rollback(remote)
    control(remote, "restart")
    back, _ = health(remote, opts, timeout)
    raise DeployError(remote.board.name, f"release {release_id} did not come up healthy ({answer}); switched back to "
                                         f"{previous}" + (", which is healthy" if back else ", which is not healthy either")
                      + "; see `fab service logs`")


def foreground(remote: Remote, port: int, local_port: int) -> int:
    """`fab serve`: the server in the foreground on the board (Ctrl-C stops it), its port forwarded here.

    The forward opens once /health answers: Fabric's tunnel thread dies on a refused connection."""
    _need_release(remote)
    _ensure_deps(remote)
    current = remote.path("current")
    opts, deadline = ServiceOptions(port=port, runner="foreground"), time.monotonic() + HEALTH_TIMEOUT
    running = remote.conn.run(remote.command(serve_argv(remote.root, opts), python=True, cwd=current), pty=True,
                              warn=True, asynchronous=True)
    ok, answer = health(remote, opts, 2)
    while not ok:
        if running.runner.process_is_finished or time.monotonic() > deadline:
            running.join()
            raise DeployError(remote.board.name, f"the server did not come up ({answer})", "see its output above")
        ok, answer = health(remote, opts, 2)
    with remote.forward(local_port, port):
        print(f"{remote.board.name}: the board's 127.0.0.1:{port} is here at http://127.0.0.1:{local_port}/ "
              "(Ctrl-C stops)", flush=True)
        try:
            return running.join().exited
        except KeyboardInterrupt:  # closing the connection hangs up the pty: the server ends with it
            return 130

"""The one place that talks to a board: SSH connection, host-key policy, remote commands.

Every command line sent to a board is built here from an argv list with each element
shell-quoted, so no inventory or user value is ever interpreted by the remote shell.
Commands that run board code pick `<path>/venv/bin/python` when present (else the
inventory's python) and source `<path>/env.sh` (written by `fab setup`: CANN environment)
or, without it, the CANN set_env.sh when one exists.
"""
from __future__ import annotations

import json
import shlex
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paramiko
from fabric import Config, Connection

from deploy import onboard
from deploy.errors import DeployError
from deploy.inventory import Board


class HomePath(str):
    """A path below the remote user's home, written without the `$HOME/` prefix."""


ONBOARD_SOURCE = Path(onboard.__file__).read_text()
# Where CANN's toolkit installs its environment script on Ascend boards (root or user install).
CANN_ENV_CANDIDATES = ("/usr/local/Ascend/ascend-toolkit/set_env.sh", HomePath("Ascend/ascend-toolkit/set_env.sh"))
# Failures of the transport itself: the board went away mid-task.
LINK_ERRORS = (paramiko.SSHException, EOFError, OSError)


@dataclass
class Result:
    exited: int
    stdout: str
    stderr: str


def home_relative(path: str) -> str:
    """An inventory path for the shell: `~/x` becomes a HomePath (the remote $HOME), others as is."""
    return HomePath(path[2:]) if path.startswith("~/") else path


def q(value: str) -> str:
    """Shell-quote one word; a HomePath becomes "$HOME"/'rest' so only $HOME expands."""
    if isinstance(value, HomePath):
        return '"$HOME"/' + shlex.quote(str(value))
    return shlex.quote(value)


class Remote:
    """An open SSH session to one board, with the board's install root resolved."""

    def __init__(self, board: Board, conn: Connection):
        self.board = board
        self.conn = conn
        self._root: str | None = None

    @property
    def root(self) -> str:
        """The absolute install path on the board (`~/` resolved against the remote home)."""
        if self._root is None:
            path = self.board.path
            if path.startswith("~/"):
                path = self.onboard("home")["home"].rstrip("/") + path[1:]
            self._root = path.rstrip("/") or "/"
        return self._root

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    # -- command lines -------------------------------------------------------------------
    def _env_prefix(self) -> str:
        """Source setup's env.sh, else the CANN script when present; silent and never fatal."""
        env_sh = q(self.path("env.sh"))
        cann = [home_relative(self.board.cann_env)] if self.board.cann_env else list(CANN_ENV_CANDIDATES)
        tests = " || ".join(f"{{ [ -f {q(p)} ] && . {q(p)} >/dev/null 2>&1; }}" for p in cann)
        return f"if [ -f {env_sh} ]; then . {env_sh} >/dev/null 2>&1; else {tests} || true; fi; "

    def command(self, argv: list[str], *, cwd: str | None = None, python: bool = False,
                venv: bool = True, env: bool = True) -> str:
        """One shell line: optional env, optional cd, then exec argv (argv[0] = the python when python=True)."""
        line = self._env_prefix() if env else ""
        if cwd:
            line += f"cd {q(cwd)} && "
        if python:
            base = q(self.board.python)
            if venv:
                line += f'PY={q(self.path("venv/bin/python"))}; [ -x "$PY" ] || PY={base}; exec "$PY" '
            else:
                line += f"exec {base} "
            return line + " ".join(q(a) for a in argv)
        return line + "exec " + " ".join(q(a) for a in argv)

    # -- running -------------------------------------------------------------------------
    def run(self, argv: list[str], *, pty: bool = False, hide: bool | str = True, **kw) -> Result:
        """Run argv on the board (see `command`); never raises on a non-zero exit."""
        r = self.conn.run(self.command(argv, **kw), pty=pty, hide=hide, warn=True, in_stream=False if not pty else None)
        return Result(r.exited, r.stdout, r.stderr)

    def python(self, args: list[str], **kw) -> Result:
        """Run the board's python (venv when present) with args."""
        return self.run(args, python=True, **kw)

    def board_cli(self, args: list[str], *, pty: bool = False, hide: bool | str = True) -> Result:
        """`python -m board ARGS` from the current release, so its `board/` package is imported."""
        current = self.path("current")
        return self.python(["-m", "board", *args], cwd=current, pty=pty, hide=hide)

    def onboard(self, op: str, runtime: bool = False, **args) -> dict:
        """Run one deploy.onboard operation on the board; DeployError with its message on refusal.

        runtime=True runs it as board code runs (venv python, CANN environment), e.g. to probe imports.
        """
        r = self.run(["-c", ONBOARD_SOURCE, op, json.dumps(args)], python=True, venv=runtime, env=runtime)
        last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
        try:
            reply = json.loads(last)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            why = (r.stderr.strip().splitlines() or [f"exit status {r.exited}"])[-1]
            raise DeployError(self.board.name, f"board-side step '{op}' failed with {self.board.python}: {why}; "
                                               f"check the inventory's python for this board")
        if "error" in reply:
            raise BoardRefused(self.board.name, reply["error"], reply.get("errno"))
        return reply["ok"]

    def alive(self) -> bool:
        """Whether the SSH transport is still up (fabric would silently reconnect otherwise)."""
        return self.conn.transport is not None and self.conn.transport.is_active()

    def put(self, local: Path, remote: str, callback=None) -> None:
        """Upload one file over SFTP (callback(bytes_done, total) for progress)."""
        self.sftp.put(str(local), remote, callback=callback, confirm=True)

    @property
    def sftp(self) -> paramiko.SFTPClient:
        return self.conn.sftp()


def env_script(cann_script: str | None, plugin_dir: str | None) -> str:
    """<root>/env.sh: what `fab setup` found, sourced before every board command."""
    lines = ["# Written by `fab setup`; sourced before every board command (deploy/remote.py)."]
    if cann_script:
        lines.append(f". {q(cann_script)}")
    else:
        lines.append("# No CANN set_env.sh was found on this board at setup time.")
    if plugin_dir:
        lines.append(f'export ASCEND_CUSTOM_OPP_PATH={q(plugin_dir)}${{ASCEND_CUSTOM_OPP_PATH:+:$ASCEND_CUSTOM_OPP_PATH}}')
    return "\n".join(lines) + "\n"


class BoardRefused(DeployError):
    """The board-side step refused or hit an OS error (errno kept: ENOSPC means a full disk)."""

    def __init__(self, board: str, message: str, errno: int | None = None):
        super().__init__(board, message)
        self.errno = errno


def _connection(board: Board) -> Connection:
    """A fabric Connection that authenticates with the inventory key only and checks host keys."""
    config = Config(overrides={"load_ssh_configs": False})
    conn = Connection(
        host=board.host, user=board.user, port=board.port, config=config,
        connect_timeout=board.connect_timeout,
        connect_kwargs={"key_filename": [str(board.key_file)], "look_for_keys": False, "allow_agent": False},
    )
    known = board.known_hosts_file
    if board.trust_new_host and not known.exists():
        known.parent.mkdir(parents=True, exist_ok=True)
        known.touch(mode=0o600)
    if known.exists():
        conn.client.load_host_keys(str(known))
    # fabric defaults to AutoAddPolicy; we trust a new host only when the inventory says so.
    policy = paramiko.AutoAddPolicy() if board.trust_new_host else paramiko.RejectPolicy()
    conn.client.set_missing_host_key_policy(policy)
    return conn


def _explain(board: Board, e: Exception) -> str:
    """One line for a failed SSH connection: what happened and what to do."""
    where = f"{board.host}:{board.port}"
    known = board.known_hosts_file
    if isinstance(e, paramiko.BadHostKeyException):
        return (f"host key of {where} does NOT match {known} (board reinstalled, or someone in between); "
                f"check it, then remove the old entry: ssh-keygen -R '[{board.host}]:{board.port}' -f {known}")
    if isinstance(e, paramiko.AuthenticationException):
        return f"SSH login as {board.user} with key {board.key_file} refused; add {board.key_file}.pub to the board's ~/.ssh/authorized_keys"
    if isinstance(e, paramiko.SSHException) and "not found in known_hosts" in str(e):
        return (f"host key of {where} is unknown (not in {known}); check the board's fingerprint and add it: "
                f"ssh-keyscan -p {board.port} {board.host} >> {known} (or set trust_new_host: true for first contact)")
    if isinstance(e, socket.gaierror):
        return f"unknown host name '{board.host}'; fix 'host' in the inventory"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return f"cannot reach {where} (timed out after {board.connect_timeout}s); is the board on and on this network?"
    if isinstance(e, (paramiko.ssh_exception.NoValidConnectionsError, ConnectionRefusedError)):
        return f"cannot reach {where} (connection refused); is sshd running on the board, and are host/port right in the inventory?"
    return f"cannot connect to {where} ({type(e).__name__}: {e}); check host, port and that sshd runs on the board"


@contextmanager
def connect(board: Board):
    """Open a Remote to the board; DeployError with one clear line when that fails."""
    if not board.key_file.is_file():
        raise DeployError(board.name, f"SSH key {board.key_file} not found; create one (ssh-keygen -t ed25519) "
                                      f"or fix 'key' in the inventory")
    if not board.trust_new_host and not board.known_hosts_file.is_file():
        raise DeployError(board.name, f"known_hosts file {board.known_hosts_file} does not exist; add the board's key "
                                      f"(ssh-keyscan -p {board.port} {board.host} >> {board.known_hosts_file}) "
                                      f"or set trust_new_host: true for first contact")
    conn = _connection(board)
    try:
        conn.open()
    except (paramiko.SSHException, OSError, EOFError) as e:
        conn.close()
        raise DeployError(board.name, _explain(board, e)) from None
    try:
        yield Remote(board, conn)
    finally:
        try:
            conn.close()
        except LINK_ERRORS:  # closing a dropped link must not hide what the task reported
            pass

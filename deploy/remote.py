"""The one place that runs things on a board: remote commands, board-side operations, uploads.

A board is reached over SSH (fabric), or is this machine (`connection: local`): then the same
command lines run as local processes.

Every command line sent to a board is built here from an argv list with each element
shell-quoted, so no inventory or user value is ever interpreted by the remote shell.
Commands that run board code pick `<path>/venv/bin/python` when present (else the
inventory's python) and source `<path>/env.sh` (written by `fab setup`: CANN environment)
or, without it, the CANN set_env.sh when one exists.
"""
from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import paramiko
from fabric import Connection
from invoke import Context

from deploy.boardenv import cann_scripts
from deploy.errors import BoardRefused, DeployError
from deploy.inventory import Board
from deploy.shell import quote
from deploy.ssh import LINK_ERRORS, open_connection

ONBOARD_MODULES = ("deploy.onboard", "deploy.onboard.files", "deploy.onboard.store", "deploy.onboard.probe",
                   "deploy.onboard.run")


def onboard_source() -> str:
    """deploy/onboard/ as one `python -c` script: each module exec'd into sys.modules under its name."""
    sources = [("deploy", "")] + [(m, Path(find_spec(m).origin).read_text()) for m in ONBOARD_MODULES]
    return ("import sys, types\n"
            f"for name, code in {sources!r}:\n"
            "    module = sys.modules[name] = types.ModuleType(name)\n"
            "    module.__path__ = []\n"
            "    exec(compile(code, name, 'exec'), module.__dict__)\n"
            "from deploy.onboard import files, run\n"
            "sys.exit(files.main(sys.argv, run.OPS))\n")


ONBOARD_SOURCE = onboard_source()


@dataclass
class Result:
    exited: int
    stdout: str
    stderr: str

    def last_line(self) -> str:
        """What a failed command said last (stderr, else stdout), for a one-line error."""
        return (self.stderr.strip().splitlines() or self.stdout.strip().splitlines() or [f"exit status {self.exited}"])[-1]


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
        env_sh = quote(self.path("env.sh"))
        cann = cann_scripts(self.board)
        tests = " || ".join(f"{{ [ -f {quote(script)} ] && . {quote(script)} >/dev/null 2>&1; }}" for script in cann)
        return f"if [ -f {env_sh} ]; then . {env_sh} >/dev/null 2>&1; else {tests} || true; fi; "

    def command(self, argv: list[str], *, cwd: str | None = None, python: bool = False,
                venv: bool = True, env: bool = True) -> str:
        """One shell line: optional env, optional cd, then exec argv (argv[0] = the python when python=True)."""
        line = self._env_prefix() if env else ""
        if cwd:
            line += f"cd {quote(cwd)} && "
        if python:
            base = quote(self.board.python)
            if venv:
                line += f'PY={quote(self.path("venv/bin/python"))}; [ -x "$PY" ] || PY={base}; exec "$PY" '
            else:
                line += f"exec {base} "
            return line + " ".join(quote(word) for word in argv)
        return line + "exec " + " ".join(quote(word) for word in argv)

    # -- running -------------------------------------------------------------------------
    def run(self, argv: list[str], *, pty: bool = False, hide: bool | str = True, in_stream=False, **kw) -> Result:
        """Run argv on the board (see `command`); never raises on a non-zero exit.

        in_stream: what feeds its stdin (False: nothing; None: this process's stdin).
        """
        done = self.conn.run(self.command(argv, **kw), pty=pty, hide=hide, warn=True,
                             in_stream=None if pty else in_stream)
        return Result(done.exited, done.stdout, done.stderr)

    def python(self, args: list[str], **kw) -> Result:
        """Run the board's python (venv when present) with args."""
        return self.run(args, python=True, **kw)

    def board_cli(self, args: list[str], release: str, **kw) -> Result:
        """`python -m board ARGS` in a release dir, so that release's `board/` package is the one imported.

        -B: no __pycache__ written into the release, which keeps exactly the files that were verified.
        """
        return self.python(["-B", "-m", "board", *args], cwd=release, **kw)

    def onboard(self, op: str, runtime: bool = False, **args) -> dict:
        """Run one deploy.onboard operation on the board; DeployError with its message on refusal.

        runtime=True runs it as board code runs (venv python, CANN environment), e.g. to probe imports.
        """
        result = self.run(["-c", ONBOARD_SOURCE, op, json.dumps(args)], python=True, venv=runtime, env=runtime)
        return self._reply(op, result.stdout, result.stderr, result.exited)

    def _reply(self, op: str, stdout: str, stderr: str, exited) -> dict:
        """The result of a board-side operation from its JSON line; DeployError/BoardRefused otherwise."""
        last = stdout.strip().splitlines()[-1] if stdout.strip() else ""
        try:
            reply = json.loads(last)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            if not self.alive():  # no answer because the link went: the caller reports a lost connection
                raise EOFError(f"the SSH link dropped during the board-side step '{op}'")
            why = (stderr.strip().splitlines() or [f"exit status {exited}"])[-1]
            raise DeployError(self.board.name, f"board-side step '{op}' failed with {self.board.python}: {why}",
                              "check the inventory's python for this board")
        if "error" in reply:
            raise BoardRefused(self.board.name, reply["error"], reply.get("errno"))
        return reply["ok"]

    @contextmanager
    def deploy_lock(self, what: str):
        """Hold the board's deploy lock (flock on <path>/.deploy.lock) while the block runs.

        A board-side process holds it until its stdin closes, so a deployer that dies frees it.
        DeployError naming the holder when another deploy has it.
        """
        holder = {"who": f"{getpass.getuser()}@{socket.gethostname()}", "pid": os.getpid(), "what": what}
        line = self.command(["-c", ONBOARD_SOURCE, "lock", json.dumps({"root": self.root, "holder": holder})],
                            python=True, venv=False, env=False)
        answer, release = self._hold(line)
        try:
            reply = self._reply("lock", answer.readline(), "", "no answer")
            if not reply["locked"]:
                raise DeployError(self.board.name, f"another deploy holds the board's lock ({_holder(reply['holder'])})",
                                  f"wait for it to finish, then run `fab {what.split()[0]}` again")
            yield
        finally:
            release()

    def _hold(self, line: str):
        """Start `line` on the board with its stdin kept open: (its stdout, a function that closes that stdin)."""
        channel = self.conn.client.get_transport().open_session()
        channel.exec_command(line)

        def release() -> None:
            try:
                channel.shutdown_write()  # EOF on the holder's stdin: it exits and the lock is free
                channel.status_event.wait(10)
                channel.close()
            except LINK_ERRORS:
                pass  # a dropped link: the board-side holder sees EOF and exits by itself

        return channel.makefile("r"), release

    def alive(self) -> bool:
        """Whether the SSH transport is still up (fabric would silently reconnect otherwise)."""
        return self.conn.transport is not None and self.conn.transport.is_active()

    def put(self, local: Path, remote: str, callback=None) -> None:
        """Upload one file over SFTP (callback(bytes_done, total) for progress)."""
        self.sftp.put(str(local), remote, callback=callback, confirm=True)

    def get(self, remote: str, local: Path) -> None:
        """Download one file from the board."""
        self.sftp.get(remote, str(local))

    def rename(self, src: str, dst: str) -> None:
        """Move a file on the board in one step (POSIX rename: a reader never sees half a file)."""
        self.sftp.posix_rename(src, dst)

    def write_private(self, path: str, text: str) -> None:
        """A file only its owner can read, from its first byte on (an existing one is replaced)."""
        if self.run(["test", "-e", path], env=False).exited == 0:
            self.sftp.remove(path)  # it may belong to the service user now
        with self.sftp.open(path, "w") as f:
            f.chmod(0o600)
            f.write(text)

    @contextmanager
    def forward(self, local_port: int, port: int):
        """The board's 127.0.0.1:port reachable here on local_port while the block runs."""
        with self.conn.forward_local(local_port, remote_port=port):
            yield

    @property
    def sftp(self) -> paramiko.SFTPClient:
        return self.conn.sftp()


class LocalRemote(Remote):
    """A board that is this machine: the same command lines and board-side operations, run as local processes.

    Releases, the deploy lock, sha256 checks, the board's own check and the atomic switch are the
    board-side code that runs over SSH too; only the transport differs (invoke instead of fabric).
    """

    def __init__(self, board: Board):
        super().__init__(board, Context())

    def _hold(self, line: str):
        proc = subprocess.Popen(["/bin/sh", "-c", line], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

        def release() -> None:
            proc.stdin.close()  # EOF: the holder exits and the lock is free
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
            proc.stdout.close()

        return proc.stdout, release

    def alive(self) -> bool:
        return True

    def put(self, local: Path, remote: str, callback=None) -> None:
        total, done = local.stat().st_size, 0
        with open(local, "rb") as src, open(remote, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
                done += len(chunk)
                if callback:
                    callback(done, total)

    def get(self, remote: str, local: Path) -> None:
        shutil.copyfile(remote, local)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def write_private(self, path: str, text: str) -> None:
        if os.path.lexists(path):
            os.remove(path)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(text)

    @contextmanager
    def forward(self, local_port: int, port: int):
        if local_port != port:
            raise DeployError(self.board.name, f"a board on this machine serves on its own port ({port})",
                              f"use --port {local_port} without --local-port")
        yield


def _holder(holder: dict) -> str:
    """Who holds the deploy lock, for the user: who, process, what, since when."""
    since = holder.get("since")
    when = time.strftime(", since %H:%M:%S UTC", time.gmtime(since)) if isinstance(since, (int, float)) else ""
    return f"{holder.get('who', 'unknown')}, pid {holder.get('pid', '?')}: {holder.get('what', '?')}{when}"


@contextmanager
def connect(board: Board, conn: Connection | None = None):
    """Open a Remote to the board (over `conn` when given); DeployError with one clear line when that fails."""
    if board.local:
        yield LocalRemote(board)
        return
    conn = open_connection(board, conn)
    try:
        yield Remote(board, conn)
    finally:
        try:
            conn.close()
        except LINK_ERRORS:  # closing a dropped link must not hide what the task reported
            pass

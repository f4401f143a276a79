"""A real OpenSSH server on 127.0.0.1 for the deployment tests, and helpers around it.

`start_sshd(dir)` runs `/usr/sbin/sshd -D -f <config>` on a free port: key-only login for the
current user, a temporary host key and authorized_keys, no PAM, stopped by its PID. It writes
the client key and a known_hosts line; `write_inventory` makes an inventory for it, and
`fab(...)` runs the real `fab` CLI against that inventory. `synthetic_bundle` writes a small
bundle (real files, real manifest) for deploy tests that do not need a model.
"""
from __future__ import annotations

import getpass
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from board.manifest import (Arch, Graph, Manifest, Quantization, TensorSpec, Tokens, builtin_chat_template,
                            file_entries, write_manifest)
from tests.support.paths import ROOT

SSHD = Path("/usr/sbin/sshd")
FAB = Path(sys.executable).parent / "fab"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


@dataclass
class SshServer:
    dir: Path
    port: int
    user: str
    client_key: Path
    known_hosts: Path  # holds exactly this server's host key
    proc: subprocess.Popen

    def board(self, path: Path, **fields) -> dict:
        """An inventory entry for this server; fields override the defaults."""
        entry = {"name": "testboard", "host": "127.0.0.1", "port": self.port, "user": self.user,
                 "key": str(self.client_key), "known_hosts": str(self.known_hosts), "path": str(path),
                 "python": sys.executable, "backend": "onnxruntime"}
        entry.update(fields)
        return entry

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_sshd(workdir: Path) -> SshServer:
    """Start sshd in the foreground on a free 127.0.0.1 port; skip when OpenSSH is absent."""
    if not SSHD.exists():
        pytest.skip(f"{SSHD} is absent: install openssh-server to run the deployment tests")
    workdir.mkdir(parents=True, exist_ok=True)
    host_pub = _keygen(workdir / "host_ed25519")
    client_pub = _keygen(workdir / "client_ed25519")
    (workdir / "authorized_keys").write_text(client_pub + "\n")
    port = free_port()
    known = workdir / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_pub.split()[0]} {host_pub.split()[1]}\n")
    config = workdir / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {workdir / 'host_ed25519'}",
        f"AuthorizedKeysFile {workdir / 'authorized_keys'}", f"PidFile {workdir / 'sshd.pid'}",
        "UsePAM no", "StrictModes no", "PubkeyAuthentication yes", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
        "Subsystem sftp internal-sftp", "LogLevel ERROR", "",
    ]))
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    log = open(workdir / "sshd.log", "wb")
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {(workdir / 'sshd.log').read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-"):
                    break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError("sshd did not answer within 15 s")
    return SshServer(workdir, port, getpass.getuser(), workdir / "client_ed25519", known, proc)


def write_inventory(path: Path, *boards: dict) -> Path:
    path.write_text(yaml.safe_dump({"boards": list(boards)}, sort_keys=False))
    return path


@dataclass
class FabResult:
    returncode: int
    stdout: str
    stderr: str


def fab(inventory: Path, *args: str, timeout: float = 120, env: dict | None = None) -> FabResult:
    """Run the real `fab` CLI from the project root against an inventory."""
    full_env = {**os.environ, "EDGE_LLM_INVENTORY": str(inventory), **(env or {})}
    p = subprocess.run([str(FAB), *args], cwd=ROOT, env=full_env, capture_output=True, text=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    return FabResult(p.returncode, p.stdout, p.stderr)


def synthetic_bundle(out: Path, model: str = "synthetic", weights: bytes = b"\0" * 4096,
                     tokenizer: bytes = b'{"model": "synthetic"}') -> Path:
    """A bundle with real files and a valid manifest (not a runnable model)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(weights)
    (out / "tokenizer.json").write_bytes(tokenizer)
    arch = Arch(num_layers=1, num_heads=2, num_kv_heads=1, head_dim=4, hidden_size=8, intermediate_size=16,
                vocab_size=32, rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=64)
    graph = Graph(kv_len=16, kv_dtype="float32", prefill_chunks=[1],
                  inputs=[TensorSpec("input_ids", "int64", [1, "S"])],
                  outputs=[TensorSpec("logits", "float32", [1, "S", 32])])
    manifest = Manifest(model={"name": model, "source": "tests"}, arch=arch, graph=graph,
                        quantization=Quantization(), tokens=Tokens(bos_id=1, eos_id=2, pad_id=0),
                        chat_template=builtin_chat_template("none"),
                        files=file_entries(out, ["model.onnx", "tokenizer.json"]))
    write_manifest(out, manifest)
    return out

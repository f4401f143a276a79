"""SSH connections to boards: the inventory key (or ssh-agent), host keys checked, one-line failures."""
from __future__ import annotations

import socket

import paramiko
from fabric import Config, Connection

from deploy.errors import DeployError, InventoryError
from deploy.inventory import Board

# Failures of the transport itself: the board went away mid-task.
LINK_ERRORS = (paramiko.SSHException, EOFError, OSError)


def key_encrypted(board: Board) -> bool:
    """Whether the inventory's key file needs a passphrase (paramiko says so with a TypeError)."""
    try:
        paramiko.PKey.from_path(board.key_file)
    except TypeError:
        return True
    except (ValueError, paramiko.SSHException, OSError):
        return False
    return False


def check_key(board: Board) -> None:
    """InventoryError when the key file exists but is no SSH private key (a binary or a public key)."""
    if not board.key_file.is_file():
        return  # said per board when connecting, with how to make one
    try:
        paramiko.PKey.from_path(board.key_file)
    except TypeError:
        return  # a passphrase-protected key: used through ssh-agent
    except (ValueError, paramiko.SSHException, UnicodeDecodeError) as e:
        raise InventoryError(f"board '{board.name}': key {board.key_file} is not an SSH private key "
                             f"({str(e).splitlines()[0][:80] or type(e).__name__}); fix 'key' in the inventory") from None
    except OSError as e:
        raise InventoryError(f"board '{board.name}': key {board.key_file} cannot be read ({e.strerror}); "
                             f"fix its permissions or 'key' in the inventory") from None


def connection(board: Board) -> Connection:
    """A fabric Connection that offers the inventory key and ssh-agent's keys, and checks host keys."""
    config = Config(overrides={"load_ssh_configs": False})
    conn = Connection(
        host=board.host, user=board.user, port=board.port, config=config,
        connect_timeout=board.connect_timeout,
        # the agent as `ssh` uses it: a passphrase-protected key is loaded there, not typed here
        connect_kwargs={"key_filename": [str(board.key_file)], "look_for_keys": False, "allow_agent": True},
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


def _explain(board: Board, e: Exception) -> tuple:
    """(detail, fix) for a failed SSH connection."""
    where = f"{board.host}:{board.port}"
    known, key = board.known_hosts_file, board.key_file
    if isinstance(e, paramiko.BadHostKeyException):
        return (f"host key of {where} does NOT match {known} (board reinstalled, or someone in between)",
                f"check it, then remove the old entry: ssh-keygen -R '[{board.host}]:{board.port}' -f {known}")
    if isinstance(e, paramiko.AuthenticationException) and key_encrypted(board):
        return (f"SSH key {key} needs a passphrase and ssh-agent offered no key the board accepts",
                f"load it into ssh-agent: eval $(ssh-agent) && ssh-add {key}")
    if isinstance(e, paramiko.AuthenticationException):
        return (f"SSH login as {board.user} with key {key} refused", f"add {key}.pub to the board's ~/.ssh/authorized_keys")
    if isinstance(e, paramiko.SSHException) and "not found in known_hosts" in str(e):
        return (f"host key of {where} is unknown (not in {known})",
                f"check the board's fingerprint and add it: ssh-keyscan -p {board.port} {board.host} >> {known} "
                f"(or set trust_new_host: true for first contact)")
    if isinstance(e, socket.gaierror):
        return f"unknown host name '{board.host}'", "fix 'host' in the inventory"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return f"cannot reach {where} (timed out after {board.connect_timeout}s)", "is the board on and on this network?"
    if isinstance(e, (paramiko.ssh_exception.NoValidConnectionsError, ConnectionRefusedError)):
        return (f"cannot reach {where} (connection refused)",
                "is sshd running on the board, and are host/port right in the inventory?")
    return (f"cannot connect to {where} ({type(e).__name__}: {e})", "check host, port and that sshd runs on the board")


def open_connection(board: Board, conn: Connection | None = None) -> Connection:
    """Open `conn` (default: a new one) to the board; DeployError (detail, fix) when that fails."""
    if not board.key_file.is_file():
        raise DeployError(board.name, f"SSH key {board.key_file} not found",
                          "create one (ssh-keygen -t ed25519) or fix 'key' in the inventory")
    if not board.trust_new_host and not board.known_hosts_file.is_file():
        raise DeployError(board.name, f"known_hosts file {board.known_hosts_file} does not exist",
                          f"add the board's key (ssh-keyscan -p {board.port} {board.host} >> {board.known_hosts_file}) "
                          f"or set trust_new_host: true for first contact")
    conn = conn or connection(board)
    try:
        conn.open()
    except (paramiko.SSHException, OSError, EOFError) as e:
        conn.close()
        raise DeployError(board.name, *_explain(board, e)) from None
    return conn

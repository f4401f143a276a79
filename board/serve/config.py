"""What `python -m board serve` was asked for, checked: bundle, address, key, queue, engine options."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from board.engine import DEFAULT_SINK
from board.errors import BoardError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeConfig:
    bundle: Path
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None  # None: no key needed
    queue_size: int = 8  # requests waiting for the engine beyond the one being answered
    max_tokens: int = 256  # a request's default answer length
    model_id: str | None = None  # the name /v1/models shows (default: the manifest's model name)
    backend: str = "auto"
    threads: int | None = None
    spin: bool = True
    device: int = 0
    sink: int = DEFAULT_SINK
    verify: bool = True

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise BoardError(f"--port {self.port} must be in 0..65535")
        if self.queue_size < 1:
            raise BoardError(f"--queue-size {self.queue_size} must be >= 1")
        if self.max_tokens < 1:
            raise BoardError(f"--max-tokens {self.max_tokens} must be >= 1")
        if self.api_key is not None and not self.api_key:
            raise BoardError("--api-key is empty; pass a non-empty key or leave it out")

    @property
    def exposed_without_key(self) -> bool:
        """Listening beyond this machine with nobody asked for a key."""
        return self.api_key is None and self.host not in LOOPBACK


def read_api_key(path: Path) -> str:
    """The key in a file (first line, whitespace stripped), so it stays out of `ps` and unit files."""
    try:
        lines = path.read_text(encoding="utf-8").strip().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BoardError(f"--api-key-file {path}: cannot read it ({e}); pass a readable file holding the key") from None
    key = lines[0].strip() if lines else ""
    if not key:
        raise BoardError(f"--api-key-file {path}: the file is empty; write the key on its first line")
    return key

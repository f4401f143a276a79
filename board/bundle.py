"""Open a bundle directory: validated manifest (format version + every sha256) and its tokenizer."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from board.manifest import BundleError, Manifest, load_manifest
from board.tokenizer import Tokenizer


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest
    tokenizer: Tokenizer

    def file(self, name: str) -> Path:
        return self.path / name


def open_bundle(path: Path | str, verify: bool = True) -> Bundle:
    """Load and check a bundle; BundleError names the bad file and what to do."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: not a directory; pass --bundle DIR (a directory with manifest.json)")
    manifest = load_manifest(path, verify=verify)
    tok_path = path / manifest.tokenizer
    if not tok_path.is_file():
        raise BundleError(f"{tok_path}: tokenizer missing; rebuild the bundle")
    return Bundle(path=path, manifest=manifest, tokenizer=Tokenizer(tok_path, manifest.tokens))

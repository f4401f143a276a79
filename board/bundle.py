"""Open a bundle directory: validated manifest (format version + every sha256) and its tokenizer.

Also the integrity rule that the board and the deployer both enforce: every file the board opens
is a plain relative name listed in the manifest's `files`, inside the bundle, reached through no
symlink, and exactly as large as declared (so nothing is hashed or read beyond the real file).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from board.manifest import MANIFEST_NAME, BundleError, Manifest, load_manifest

if TYPE_CHECKING:
    from board.tokenizer import Tokenizer


def name_problem(name) -> str | None:
    """Why `name` is not a plain bundle-relative file name, or None when it is (pure: no file access)."""
    if not isinstance(name, str) or not name:
        return "is not a non-empty string"
    if "\\" in name or "\0" in name or any(ord(c) < 32 for c in name):
        return "holds a backslash or control character"
    if PurePosixPath(name).is_absolute():
        return "is an absolute path"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "has an empty, '.' or '..' component (it could escape the bundle)"
    return None


def member_path(root: Path, name: str, size: int | None = None) -> Path:
    """`root/name` after the integrity rule: plain name, no symlink on the way, regular file of `size` bytes.

    A missing file is returned as is (callers decide); everything else that breaks the rule is a
    BundleError naming the file, raised before the file is read.
    """
    root = Path(root)
    problem = name_problem(name)
    if problem:
        raise BundleError(f"{root / MANIFEST_NAME}: file name {name!r} {problem}; rebuild the bundle")
    path = root
    for part in name.split("/"):
        path = path / part
        if path.is_symlink():
            raise BundleError(f"{path}: a symlink inside the bundle (a bundle holds files, never links); "
                              "put the file itself there (cp --dereference) or rebuild the bundle")
    if path.exists() and not path.is_file():
        raise BundleError(f"{path}: not a regular file; rebuild the bundle")
    if size is not None and path.is_file() and path.stat().st_size != size:
        raise BundleError(
            f"{path}: {path.stat().st_size} bytes but the manifest declares {size} (corrupt or partial copy); "
            "redeploy or rebuild the bundle"
        )
    return path


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest
    tokenizer: Tokenizer

    def file(self, name: str) -> Path:
        return listed_file(self.path, self.manifest, name)


def listed_file(root: Path, manifest: Manifest, name: str) -> Path:
    """A file the board is about to open: listed in the manifest and inside the bundle, or BundleError."""
    if name not in manifest.files:
        raise BundleError(f"{Path(root) / MANIFEST_NAME}: {name!r} is not listed in `files`; rebuild the bundle")
    return member_path(root, name, manifest.files[name].size)


def open_bundle(path: Path | str, verify: bool = True) -> Bundle:
    """Load and check a bundle; BundleError names the bad file and what to do."""
    from board.tokenizer import Tokenizer  # tokenizers only when a bundle is opened (the deployer needs the rule alone)

    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path}: not a directory; pass --bundle DIR (a directory with manifest.json)")
    manifest = load_manifest(path, verify=verify)
    tok_path = listed_file(path, manifest, manifest.tokenizer)
    if not tok_path.is_file():
        raise BundleError(f"{tok_path}: tokenizer missing; rebuild the bundle")
    return Bundle(path=path, manifest=manifest, tokenizer=Tokenizer(tok_path, manifest.tokens))

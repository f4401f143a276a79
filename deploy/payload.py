"""What one release holds: a local bundle checked against the integrity rule, plus the board/ code.

The rule (shared with the board, docs/design.md §2): every file the board opens is a plain relative
name listed in the manifest's `files`, inside the bundle, and no symlink. The deployer checks
it before anything is uploaded, so a bundle that breaks it never reaches a board.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from board.bundle import member_path, name_problem
from board.manifest import MANIFEST_NAME, BundleError, Manifest, load_manifest, read_manifest, run_bytes, sha256_file

BOARD_PACKAGE = Path(__file__).resolve().parents[1] / "board"
RELEASE_RECORD = ".release.json"  # the board writes its own record under this name (deploy/onboard/store.py)
RESERVED = ("board", MANIFEST_NAME, RELEASE_RECORD)  # first path parts a bundle file may not have in a release
ID_LENGTH = 16  # hex digits of the content hash: collisions are not a practical concern


@dataclass(frozen=True)
class Payload:
    """Everything one release holds: release-relative name -> local file and its sha256."""

    files: dict  # {name: Path}
    sha256: dict  # {name: hex}
    manifest: Manifest
    release_id: str

    def size(self, name: str) -> int:
        return self.files[name].stat().st_size

    def record(self) -> dict:
        """What the board remembers about the release (files for reuse, bundle for status)."""
        manifest = self.manifest
        return {
            "files": self.sha256,
            "bundle": {
                "model": manifest.model.get("name"),
                "source": manifest.model.get("source"),
                "quantization": manifest.quantization.scheme,
                "dialect": manifest.quantization.dialect,
                "kv_len": manifest.graph.kv_len,
                "om": manifest.graph.om,
                "om_soc": manifest.graph.om_soc,
                "om_cann": manifest.graph.om_cann,
                "min_onnxruntime": manifest.graph.min_onnxruntime,
                "onnxruntime_ops": manifest.graph.onnxruntime_ops,
                "bytes": sum(self.size(n) for n in self.files),
                "graph_bytes": graph_bytes(manifest),
                "run_bytes": run_bytes(manifest),  # KV cache and largest-gear outputs, for fab doctor's memory check
            },
        }


def graph_bytes(manifest: Manifest) -> dict:
    """Bytes of the weights each backend loads: onnx (+ external data) and om."""
    graph, files = manifest.graph, manifest.files
    onnx = sum(files[name].size for name in (graph.onnx, graph.onnx + ".data") if name in files)
    return {"onnx": onnx, "om": files[graph.om].size if graph.om in files else 0}


def _board_code() -> dict:
    """The board/ package as release files (no caches)."""
    return {
        f"board/{p.relative_to(BOARD_PACKAGE).as_posix()}": p
        for p in sorted(BOARD_PACKAGE.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def check_rule(bundle_dir: Path, manifest: Manifest) -> None:
    """BundleError for the first file that breaks the integrity rule (board.bundle) or would clash in a release.

    That every file the board opens is listed in `files` is checked by reading the manifest.
    """
    where = bundle_dir / MANIFEST_NAME
    for name in manifest.files:
        problem = name_problem(name) or (PurePosixPath(name).parts[0] in RESERVED and "is reserved in a release")
        if problem:
            raise BundleError(f"{where}: file name {name!r} would escape or clash in a release ({problem}); rebuild")
    for name in (MANIFEST_NAME, *manifest.files):
        member_path(bundle_dir, name)  # no symlink on the way: deploy sends files, never links


def collect(bundle_dir: Path, verify: bool = True) -> Payload:
    """Check the local bundle (rule, then every sha256) and gather it with board/; BundleError when it is bad."""
    bundle_dir = Path(bundle_dir)
    check_rule(bundle_dir, read_manifest(bundle_dir))
    manifest = load_manifest(bundle_dir, verify=verify)
    files = {MANIFEST_NAME: bundle_dir / MANIFEST_NAME, **{name: bundle_dir / name for name in manifest.files}}
    sha = {name: entry.sha256 for name, entry in manifest.files.items()}
    files.update(_board_code())
    for name, path in files.items():
        sha.setdefault(name, sha256_file(path))
    listing = "".join(f"{n} {sha[n]}\n" for n in sorted(files))
    release_id = hashlib.sha256(listing.encode()).hexdigest()[:ID_LENGTH]
    return Payload(files=files, sha256=sha, manifest=manifest, release_id=release_id)

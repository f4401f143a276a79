"""Releases on a board (DESIGN.md §5): upload a bundle + board/ code, verify, switch, roll back.

A release's id is derived from its content, so deploying the same bundle twice uploads
nothing. Files whose sha256 already exists in an earlier release are hard-linked on the
board instead of uploaded. `current` only moves after every sha256 checks out on the board.
"""
from __future__ import annotations

import errno
import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from board.manifest import MANIFEST_NAME, BundleError, Manifest, load_manifest, sha256_file
from deploy.errors import DeployError
from deploy.progress import Progress, human_bytes
from deploy.remote import LINK_ERRORS, BoardRefused, Remote

BOARD_PACKAGE = Path(__file__).resolve().parents[1] / "board"
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
        m = self.manifest
        return {
            "files": self.sha256,
            "bundle": {
                "model": m.model.get("name"),
                "source": m.model.get("source"),
                "quantization": m.quantization.scheme,
                "dialect": m.quantization.dialect,
                "kv_len": m.graph.kv_len,
                "om": m.graph.om,
                "om_soc": m.graph.om_soc,
                "om_cann": m.graph.om_cann,
                "bytes": sum(self.size(n) for n in self.files),
                "graph_bytes": graph_bytes(m),
            },
        }


def graph_bytes(m: Manifest) -> dict:
    """Bytes of the weights each backend loads: onnx (+ external data) and om."""
    onnx = sum(m.files[n].size for n in (m.graph.onnx, m.graph.onnx + ".data") if n in m.files)
    return {"onnx": onnx, "om": m.files[m.graph.om].size if m.graph.om in m.files else 0}


@dataclass(frozen=True)
class DeployReport:
    release_id: str
    uploaded_files: int
    uploaded_bytes: int
    reused_files: int
    previous: str | None
    pruned: list

    def line(self, board: str) -> str:
        was = f" (was {self.previous})" if self.previous and self.previous != self.release_id else ""
        return (f"{board}: release {self.release_id}: {self.uploaded_files} file(s) uploaded "
                f"({human_bytes(self.uploaded_bytes)}), {self.reused_files} already on the board; "
                f"current -> {self.release_id}{was}")


def _board_code() -> dict:
    """The board/ package as release files (no caches)."""
    return {
        f"board/{p.relative_to(BOARD_PACKAGE).as_posix()}": p
        for p in sorted(BOARD_PACKAGE.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def collect(bundle_dir: Path, verify: bool = True) -> Payload:
    """Verify the local bundle and gather it with board/; BundleError when it is corrupt."""
    bundle_dir = Path(bundle_dir)
    manifest = load_manifest(bundle_dir, verify=verify)
    files, sha = {MANIFEST_NAME: bundle_dir / MANIFEST_NAME}, {}
    for name, entry in manifest.files.items():
        parts = PurePosixPath(name).parts
        if PurePosixPath(name).is_absolute() or ".." in parts or parts[0] in ("board", MANIFEST_NAME):
            raise BundleError(f"{bundle_dir / MANIFEST_NAME}: file name {name!r} would escape or clash in a release; rebuild")
        files[name], sha[name] = bundle_dir / name, entry.sha256
    files.update(_board_code())
    for name, path in files.items():
        sha.setdefault(name, sha256_file(path))
    listing = "".join(f"{n} {sha[n]}\n" for n in sorted(files))
    release_id = hashlib.sha256(listing.encode()).hexdigest()[:ID_LENGTH]
    return Payload(files=files, sha256=sha, manifest=manifest, release_id=release_id)


def _reusable(index: dict, root: str, skip: set) -> dict:
    """sha256 -> path of a file with that content already in a finished release on the board."""
    found = {}
    for record in index["releases"]:
        if record["id"] in skip:
            continue
        for name, digest in record.get("files", {}).items():
            found[digest] = f"{root}/releases/{record['id']}/{name}"
    return found


def _redeploy(remote: Remote, payload: Payload, index: dict) -> DeployReport | None:
    """Same content already on the board: re-verify it there and switch; None when it is damaged."""
    rid = payload.release_id
    if rid not in {r["id"] for r in index["releases"]}:
        return None
    bad = remote.onboard("verify", dir=remote.path("releases", rid), files=payload.sha256)["bad"]
    if bad:
        return None
    done = remote.onboard("activate", root=remote.root, id=rid, incoming=None,
                          record=payload.record(), keep=remote.board.keep_releases)
    return DeployReport(rid, 0, 0, len(payload.files), done["previous"], done["pruned"])


def _upload_failed(remote: Remote, incoming: str, name: str, size: int, e: Exception, current: str | None) -> DeployError:
    """Turn an upload error into one line: dropped link, full disk, or the raw reason."""
    keep = f"current unchanged ({current or 'no release yet'})"
    why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    lost = DeployError(remote.board.name, f"connection lost while uploading {name} ({why}); {keep}; "
                                          f"run `fab deploy` again once the board is reachable")
    dropped = not remote.alive()
    try:  # fabric reconnects when it can: then the partial upload is removed now
        free = remote.onboard("index", root=remote.root)["free_disk"]
        remote.onboard("discard", dir=incoming)
    except (DeployError, *LINK_ERRORS):
        return lost
    if dropped:
        return lost
    # OpenSSH's sftp reports ENOSPC as a bare "Failure": look at the disk to tell.
    if getattr(e, "errno", None) == errno.ENOSPC or free < size:
        return DeployError(remote.board.name, f"the board's disk is full ({human_bytes(free)} free) while uploading "
                                              f"{name}; {keep}; free space under {remote.root} or lower keep_releases")
    return DeployError(remote.board.name, f"uploading {name} failed ({why}); {keep}")


def deploy(remote: Remote, payload: Payload, progress: Progress, reuse: bool = True) -> DeployReport:
    """Upload to a temporary release dir, verify every sha256 on the board, then switch `current`."""
    name = remote.board.name
    index = remote.onboard("index", root=remote.root)
    current = index["current"]
    done = _redeploy(remote, payload, index)
    if done:
        return done
    found = _reusable(index, remote.root, skip={payload.release_id}) if reuse else {}
    links = {n: found[d] for n, d in payload.sha256.items() if d in found}
    todo = [n for n in sorted(payload.files) if n not in links]
    need = sum(payload.size(n) for n in todo)
    if need > index["free_disk"]:
        raise DeployError(name, f"not enough disk on the board: the upload needs {human_bytes(need)}, "
                                f"{human_bytes(index['free_disk'])} free under {remote.root}; free space or lower keep_releases")
    dirs = sorted({str(PurePosixPath(n).parent) for n in payload.files} - {"."})
    try:
        incoming = remote.onboard("stage", root=remote.root, id=payload.release_id, dirs=dirs, reuse=links)["incoming"]
    except BoardRefused as e:
        raise DeployError(name, f"cannot create the release directory ({e.message}); check that {remote.board.user} "
                                f"can write {remote.root}; current unchanged") from None
    for i, n in enumerate(todo, 1):
        progress.start(n, i, len(todo))
        try:
            remote.put(payload.files[n], f"{incoming}/{n}", callback=progress)
        except LINK_ERRORS as e:
            raise _upload_failed(remote, incoming, n, payload.size(n), e, current) from None
        progress.finish(payload.size(n))
    try:
        bad = remote.onboard("verify", dir=incoming, files=payload.sha256)["bad"]
    except LINK_ERRORS as e:  # the last bytes went out before the link dropped: nothing switched yet
        raise DeployError(name, f"connection lost while verifying the upload on the board ({type(e).__name__}); "
                                f"current unchanged ({current or 'no release yet'}); "
                                f"run `fab deploy` again once the board is reachable") from None
    if bad:
        remote.onboard("discard", dir=incoming)
        what = ", ".join(f"{n} ({why}{', linked from an earlier release' if n in links else ''})" for n, why in bad)
        raise DeployError(name, f"verification on the board failed: {what}; current unchanged "
                                f"({current or 'no release yet'}); run `fab deploy --no-reuse` to upload every file")
    done = remote.onboard("activate", root=remote.root, id=payload.release_id, incoming=incoming,
                          record=payload.record(), keep=remote.board.keep_releases)
    return DeployReport(payload.release_id, len(todo), need, len(links), done["previous"], done["pruned"])


def rollback(remote: Remote) -> str:
    """Make the previous release current; returns the line to print."""
    try:
        done = remote.onboard("rollback", root=remote.root)
    except BoardRefused as e:
        raise DeployError(remote.board.name, e.message) from None
    return f"{remote.board.name}: current -> {done['current']} (was {done['previous']})"

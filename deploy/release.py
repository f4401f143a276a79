"""Releases on a board (docs/design.md §5): upload a payload, verify it there, switch `current`, roll back.

A release's id is derived from its content, so deploying the same bundle twice uploads
nothing. Files whose sha256 already exists in an earlier release are hard-linked on the
board instead of uploaded. One deploy at a time holds the board's lock; `current` only moves
after every sha256 checks out on the board and the board's own `board verify` passes.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass, replace
from pathlib import PurePosixPath

from board.ortneeds import onnxruntime_shortfall
from deploy import board_cli
from deploy.boardenv import runtime_modules
from deploy.errors import BoardRefused, DeployError, Interrupted
from deploy import interrupts as ctrl_c
from deploy.interrupts import Interrupts
from deploy.payload import Payload
from deploy.progress import Progress
from deploy.remote import Remote
from deploy.ssh import LINK_ERRORS
from deploy.text import human_bytes

AGAIN = "run `fab deploy` again"


@dataclass(frozen=True)
class DeployReport:
    release_id: str
    uploaded_files: int
    uploaded_bytes: int
    reused_files: int
    previous: str | None
    pruned: list

    def line(self, board: str) -> str:
        return (f"{board}: release {self.release_id}: {self.uploaded_files} file(s) uploaded "
                f"({human_bytes(self.uploaded_bytes)}), {self.reused_files} already on the board; "
                f"{switched(self.release_id, self.previous)}")


def switched(release_id: str, previous: str | None) -> str:
    was = f" (was {previous})" if previous and previous != release_id else ""
    return f"current -> {release_id}{was}"


def check_onnxruntime(remote: Remote, manifest) -> None:
    """DeployError before anything is sent when the board's onnxruntime is older than the bundle's graph needs
    (board/ortneeds.py). Not for an acl board given a compiled .om: pyACL runs that, not onnxruntime."""
    graph = manifest.graph
    if graph.min_onnxruntime is None or (remote.board.backend == "acl" and graph.om):
        return
    found = remote.onboard("imports", runtime=True, modules=["onnxruntime"])
    installed = found.get("versions", {}).get("onnxruntime")  # not importable: the board's check says so later
    shortfall = onnxruntime_shortfall(graph.min_onnxruntime, graph.onnxruntime_ops, installed, found["python"])
    if shortfall:
        raise DeployError(remote.board.name, f"the bundle's graph needs {shortfall.needs}, the board has "
                                             f"{shortfall.have}; nothing uploaded, current unchanged", shortfall.fix)


def _reusable(index: dict, root: str, skip: set) -> dict:
    """sha256 -> path of a file with that content already in a finished release on the board."""
    found = {}
    for record in index["releases"]:
        if record["id"] in skip:
            continue
        for name, digest in record.get("files", {}).items():
            found[digest] = f"{root}/releases/{record['id']}/{name}"
    return found


class _Deploy:
    """One deploy to one board, under its lock and with Ctrl-C deferred to step boundaries."""

    def __init__(self, remote: Remote, payload: Payload, progress: Progress, interrupts: Interrupts):
        self.remote, self.payload, self.progress, self.interrupts = remote, payload, progress, interrupts
        self.name = remote.board.name
        self.current = None
        self.incoming = None

    @property
    def unchanged(self) -> str:
        return f"current unchanged ({self.current or 'no release yet'})"

    def checkpoint(self, step: str) -> None:
        """Stop here (nothing switched yet) when Ctrl-C came during the last step."""
        if self.interrupts.pending:
            self.discard()
            raise Interrupted(self.name, f"interrupted {step}, before the switch; {self.unchanged}", AGAIN)

    def discard(self) -> None:
        """Remove our incoming dir, if the board is still there (else the next deploy does)."""
        if self.incoming:
            try:
                self.remote.onboard("discard", dir=self.incoming)
            except (DeployError, *LINK_ERRORS):
                pass

    def run(self, reuse: bool) -> DeployReport:
        remote, payload = self.remote, self.payload
        index = remote.onboard("index", root=remote.root)
        self.current = index["current"]
        check_onnxruntime(remote, payload.manifest)
        if payload.release_id in {r["id"] for r in index["releases"]}:
            done = self.redeploy()
            if done:
                return done
        found = _reusable(index, remote.root, skip={payload.release_id}) if reuse else {}
        links = {n: found[d] for n, d in payload.sha256.items() if d in found}
        todo = [n for n in sorted(payload.files) if n not in links]
        need = sum(payload.size(n) for n in todo)
        if need > index["free_disk"]:
            raise DeployError(self.name, f"not enough disk on the board: the upload needs {human_bytes(need)}, "
                                         f"{human_bytes(index['free_disk'])} free under {remote.root}",
                              "free space or lower keep_releases")
        self.stage(links)
        self.checkpoint("while preparing the upload")
        self.upload(todo)
        self.check_upload(links)
        return self.activate(self.incoming, DeployReport(payload.release_id, len(todo), need, len(links), None, []))

    def redeploy(self) -> DeployReport | None:
        """Same content already on the board: re-verify it there and switch; None when it is damaged."""
        rid, release = self.payload.release_id, self.remote.path("releases", self.payload.release_id)
        if self.remote.onboard("verify", dir=release, files=self.payload.sha256)["bad"]:
            return None
        self.checkpoint("while verifying the release on the board")
        return self.activate(None, DeployReport(rid, 0, 0, len(self.payload.files), None, []), release)

    def stage(self, links: dict) -> None:
        dirs = sorted({str(PurePosixPath(n).parent) for n in self.payload.files} - {"."})
        try:
            self.incoming = self.remote.onboard("stage", root=self.remote.root, id=self.payload.release_id,
                                                dirs=dirs, reuse=links)["incoming"]
        except BoardRefused as e:
            raise DeployError(self.name, f"cannot create the release directory ({e.detail})",
                              f"check that {self.remote.board.user} can write {self.remote.root}; "
                              f"{self.unchanged}") from None

    def upload(self, todo: list) -> None:
        """Send the files into the incoming dir; Ctrl-C stops it after the chunk in flight (nothing switches)."""
        name = None
        try:
            with self.progress.upload(sum(self.payload.size(n) for n in todo)):
                for name in todo:
                    try:
                        self.remote.put(self.payload.files[name], f"{self.incoming}/{name}", callback=self.sent(name))
                    except LINK_ERRORS as e:
                        if self.interrupts.pending:  # the link failed while the interrupted file was closed
                            raise KeyboardInterrupt from None
                        raise self.upload_failed(name, e) from None
        except KeyboardInterrupt:
            self.discard()
            raise Interrupted(self.name, f"interrupted while uploading {name}; {self.unchanged}", AGAIN) from None

    def sent(self, name: str):
        """paramiko's per-chunk callback: advances the bar, and ends the upload there after a Ctrl-C."""
        advance = self.progress.file(name)

        def callback(done: int, total: int) -> None:
            advance(done, total)
            if self.interrupts.pending:
                raise KeyboardInterrupt  # between chunks: paramiko still closes the remote file in order

        return callback

    def upload_failed(self, name: str, e: Exception) -> DeployError:
        """Turn an upload error into one line: dropped link, full disk, or the raw reason."""
        why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        lost = DeployError(self.name, f"connection lost while uploading {name} ({why}); {self.unchanged}",
                           f"{AGAIN} once the board is reachable")
        dropped = not self.remote.alive()
        try:  # fabric reconnects when it can: then the partial upload is removed now
            free = self.remote.onboard("index", root=self.remote.root)["free_disk"]
            self.remote.onboard("discard", dir=self.incoming)
        except (DeployError, *LINK_ERRORS):
            return lost
        if dropped:
            return lost
        # OpenSSH's sftp reports ENOSPC as a bare "Failure": look at the disk to tell.
        if getattr(e, "errno", None) == errno.ENOSPC or free < self.payload.size(name):
            return DeployError(self.name, f"the board's disk is full ({human_bytes(free)} free) while uploading "
                                          f"{name}; {self.unchanged}", f"free space under {self.remote.root} or lower keep_releases")
        return DeployError(self.name, f"uploading {name} failed ({why}); {self.unchanged}")

    def check_upload(self, links: dict) -> None:
        """Every sha256 on the board, then Ctrl-C's checkpoint; DeployError (incoming removed) when one differs."""
        try:
            bad = self.remote.onboard("verify", dir=self.incoming, files=self.payload.sha256)["bad"]
        except LINK_ERRORS as e:  # the last bytes went out before the link dropped: nothing switched yet
            raise DeployError(self.name, f"connection lost while verifying the upload on the board "
                                         f"({type(e).__name__}); {self.unchanged}", f"{AGAIN} once the board is reachable") from None
        if bad:
            self.discard()
            what = ", ".join(f"{n} ({why}{', linked from an earlier release' if n in links else ''})" for n, why in bad)
            raise DeployError(self.name, f"verification on the board failed: {what}; {self.unchanged}",
                              "run `fab deploy --no-reuse` to upload every file")
        self.checkpoint("while verifying the upload on the board")

    def activate(self, incoming: str | None, report: DeployReport, release: str | None = None) -> DeployReport:
        """The board's own check of the release, then the switch; a Ctrl-C during the switch is reported after it."""
        try:
            board_cli.verify(self.remote, release or incoming, runtime_modules(self.remote.board.backend))
        except DeployError as e:
            self.discard()
            raise DeployError(self.name, f"{e.detail}; {self.unchanged}", e.fix) from None
        self.checkpoint("during the board's check of the release")
        done = self.remote.onboard("activate", root=self.remote.root, id=self.payload.release_id, incoming=incoming,
                                   record=self.payload.record(), keep=self.remote.board.keep_releases)
        report = replace(report, previous=done["previous"], pruned=done["pruned"])
        if self.interrupts.pending:
            raise Interrupted(self.name, f"interrupted during the switch, which completed: "
                                         f"{switched(report.release_id, report.previous)}")
        return report


def deploy(remote: Remote, payload: Payload, progress: Progress, reuse: bool = True) -> DeployReport:
    """Upload to a temporary release dir, verify every sha256 and the board's own check, then switch `current`."""
    interrupts = ctrl_c.for_board()
    with interrupts.deferred(), remote.deploy_lock(f"deploy {payload.release_id}"):
        return _Deploy(remote, payload, progress, interrupts).run(reuse)


def rollback(remote: Remote) -> str:
    """Make the previous release current; returns the line to print."""
    with remote.deploy_lock("rollback"):
        try:
            done = remote.onboard("rollback", root=remote.root)
        except BoardRefused as e:
            raise DeployError(remote.board.name, e.detail) from None
    return f"{remote.board.name}: {switched(done['current'], done['previous'])}"

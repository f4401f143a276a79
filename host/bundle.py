"""Bundle directory writing (docs/design.md §2): stage in a sibling temp dir, swap into place at the end.

A build writes every file into `.<name>.build-XXXX` beside the target; only when all of it
succeeded (manifest last, with the sha256 of every other file) is the previous bundle moved
aside and the new one renamed into place. A failed or interrupted build leaves the previous
bundle byte-identical and removes its staging directory; one killed outright (SIGKILL, OOM)
leaves it behind, and the next build into the same --out removes it.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from board.manifest import (
    MANIFEST_NAME,
    Arch,
    ChatTemplate,
    Graph,
    Manifest,
    Quantization,
    Sampling,
    Tokens,
    file_entries,
    write_manifest,
)
from host.errors import InputError

REPORT_NAME = "report.json"
TOKENIZER_NAME = "tokenizer.json"


# Errors of writing the bundle that the user fixes by freeing space or choosing another --out
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR}


def _out_error(out: Path, e: OSError) -> InputError:
    return InputError(f"--out {out}: cannot write the bundle there ({os.strerror(e.errno)}); "
                      "free space or choose another --out (a previous bundle there is untouched)")


def check_out(out: Path) -> Path:
    """InputError now, before any work, when `out` cannot become a bundle directory; its absolute path."""
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory; choose another path")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise InputError(f"--out {out} is a non-empty directory without a bundle; choose an empty or new path")
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise InputError(f"--out {out}: {blocker} is a file, not a directory; choose another --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.probe-"))  # can we create a sibling?
    except OSError as e:
        raise _out_error(out, e) from None
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale(out: Path) -> list[Path]:
    """Remove staging dirs of builds into `out` whose process is gone (killed builds); the removed paths.

    A swap killed between its two renames leaves the previous bundle as `.NAME.old-*` with `out`
    missing: it is put back instead of deleted.
    """
    removed = []
    for path in sorted(out.parent.glob(f".{out.name}.build-*")):
        pid = path.name.rsplit(".", 1)[1].split("-")[1]
        if pid.isdigit() and _alive(int(pid)):
            continue  # a build running now (names from before the pid was recorded count as stale)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    for path in sorted(out.parent.glob(f".{out.name}.old-*")):
        if os.path.lexists(out):
            _remove(path)
            removed.append(path)
        else:
            os.replace(path, out)
    return removed


@contextlib.contextmanager
def staging(out: Path):
    """Yield an empty staging directory; on normal exit it replaces `out`, on error it is deleted."""
    out = check_out(out)
    clean_stale(out)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.build-{os.getpid()}-"))
    try:
        yield stage
        swap_into_place(stage, out)
    except OSError as e:
        shutil.rmtree(stage, ignore_errors=True)
        if e.errno in WRITE_ERRORS:
            raise _out_error(out, e) from None
        raise
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def swapped(new: Path, target: Path):
    """Rename `new` (file or directory) to `target`, the previous one moved aside, for the block.

    When the block raises, the previous `target` is put back (or the new one removed when there
    was none); when it succeeds, the previous one is deleted. Readers see a missing `target`
    only for the instant between the two renames.
    """
    new, target = Path(new), Path(target)
    backup = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    had_old = os.path.lexists(target)
    if had_old:
        os.replace(target, backup)
    try:
        os.replace(new, target)
        yield target
    except BaseException:
        if os.path.lexists(target) and not os.path.lexists(new):
            _remove(target)
        if had_old:
            os.replace(backup, target)
        raise
    if had_old:
        _remove(backup)


def swap_into_place(stage: Path, out: Path) -> None:
    """Rename `stage` to `out`, moving a previous bundle aside first and deleting it afterwards."""
    os.chmod(stage, 0o755)  # mkdtemp makes it 0700, and onnx writes external data 0600:
    for path in stage.rglob("*"):  # a bundle is read by other users (the board's, a container's)
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    with swapped(stage, out):
        pass


def bundle_files(stage: Path) -> list[str]:
    """Every regular file of a staged bundle (relative paths), manifest excluded, sorted."""
    return sorted(
        str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file() and p.name != MANIFEST_NAME
    )


def write_bundle_manifest(
    stage: Path,
    model: dict,
    arch: Arch,
    graph: Graph,
    quantization: Quantization,
    tokens: Tokens,
    chat_template: ChatTemplate,
    sampling: Sampling = Sampling(),
) -> Manifest:
    """The manifest over every file now in `stage`, with their sizes and sha256, written last."""
    manifest = Manifest(
        model=model,
        arch=arch,
        graph=graph,
        quantization=quantization,
        tokens=tokens,
        chat_template=chat_template,
        sampling=sampling,
        files=file_entries(stage, bundle_files(stage)),
        tokenizer=TOKENIZER_NAME,
    )
    write_manifest(stage, manifest)
    return manifest

"""Putting a compiled `model.om` into a bundle: the file and its manifest record change together.

The .om is staged beside its final name, swapped in with host.bundle.swapped, and the manifest
(graph.om, om_soc, om_cann, size, sha256) is written inside the swap: if that write fails, the
previous model.om comes back, so the bundle stays as it was.
"""
from __future__ import annotations

import dataclasses
import shutil
import uuid
from pathlib import Path

from board.manifest import FileEntry, Manifest, sha256_file, write_manifest
from host.bundle import swapped

OM_NAME = "model.om"


def install_om(bundle: Path, manifest: Manifest, om: Path, soc: str, cann: str | None) -> Manifest:
    """Copy `om` into the bundle as model.om and record it in the manifest; returns the new manifest."""
    bundle = Path(bundle)
    staged = bundle / f".{OM_NAME}.{uuid.uuid4().hex[:8]}.new"
    try:
        shutil.copyfile(om, staged)
        files = {k: v for k, v in manifest.files.items() if k != OM_NAME}
        files[OM_NAME] = FileEntry(size=staged.stat().st_size, sha256=sha256_file(staged))
        graph = dataclasses.replace(manifest.graph, om=OM_NAME, om_soc=soc, om_cann=cann)
        updated = dataclasses.replace(manifest, graph=graph, files=files)
        with swapped(staged, bundle / OM_NAME):
            write_manifest(bundle, updated)
    finally:
        staged.unlink(missing_ok=True)
    return updated

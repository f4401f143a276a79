"""Backends behind one `forward`: onnxruntime (CPU) and acl (Ascend pyACL), imported lazily."""
from __future__ import annotations

import importlib

from board.backends.base import Backend
from board.bundle import Bundle
from board.errors import BoardError
from board.manifest import BundleError

BACKENDS = ("auto", "onnxruntime", "acl")
CANN_HINT = (
    "pyACL (python module `acl`) is not importable: install the CANN toolkit on the board and "
    "`source /usr/local/Ascend/ascend-toolkit/set_env.sh` (or your CANN path) before running"
)


def acl_importable() -> bool:
    """True when pyACL imports (it needs CANN's libraries on the path, not just the module)."""
    try:
        importlib.import_module("acl")
    except ImportError:
        return False
    return True


def choose_backend(bundle: Bundle, requested: str = "auto") -> str:
    """'acl' when asked, or on auto when the bundle has model.om and pyACL imports; else 'onnxruntime'."""
    if requested not in BACKENDS:
        raise BoardError(f"unknown backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    om = bundle.manifest.graph.om
    if requested == "acl":
        if not om or not bundle.file(om).is_file():
            raise BundleError(
                f"{bundle.path}: no compiled model.om in this bundle; compile it with "
                f"`python -m host compile --bundle {bundle.path}` or use --backend onnxruntime"
            )
        if not acl_importable():
            raise BoardError(CANN_HINT)
        return "acl"
    if requested == "auto" and om and bundle.file(om).is_file() and acl_importable():
        return "acl"
    return "onnxruntime"


def open_backend(
    bundle: Bundle, requested: str = "auto", threads: int | None = None, device_id: int = 0, spin: bool = True
) -> Backend:
    """Construct the chosen backend for a bundle (the caller closes it, e.g. in a `with` block)."""
    name = choose_backend(bundle, requested)
    if name == "acl":
        from board.backends.acl import AclBackend

        return AclBackend(bundle.file(bundle.manifest.graph.om), bundle.manifest.graph, device_id=device_id)
    from board.backends.ort import OrtBackend

    m = bundle.manifest
    return OrtBackend(bundle.file(m.graph.onnx), m.graph, m.arch.vocab_size, threads=threads, spin=spin)

"""Backends behind one `forward`: onnxruntime (CPU) and acl (Ascend pyACL), imported lazily."""
from __future__ import annotations

import importlib
import sys

from board.backends.base import Backend
from board.bundle import Bundle
from board.errors import BoardError
from board.manifest import BundleError

BACKENDS = ("auto", "onnxruntime", "acl")
CANN_HINT = (
    "pyACL (python module `acl`) is not importable: install the CANN toolkit on the board and "
    "`source /usr/local/Ascend/ascend-toolkit/set_env.sh` (or your CANN path) before running"
)


def acl_import_error() -> str | None:
    """None when pyACL imports; else why not, with the fix (`acl_fix`)."""
    try:
        importlib.import_module("acl")
    except ModuleNotFoundError as e:
        if e.name == "acl":
            return CANN_HINT
        error = e
    except Exception as e:  # noqa: BLE001 - a pyACL built for numpy 1 may fail with any error under numpy 2
        error = e
    else:
        return None
    text = f"{type(error).__name__}: {error}"
    return f"pyACL (python module `acl`) is installed but does not import ({text}): {acl_fix(text)}"


def acl_fix(text: str) -> str:
    """The fix for a pyACL that exists but fails to import with `text` (also what `fab doctor` tells a board)."""
    if "numpy" in text.lower() or "_ARRAY_API" in text:
        return ("pyACL is built against numpy 1: install numpy<2 in the board's python (`fab setup` installs "
                "board/requirements-acl.txt on boards with backend acl)")
    if ".so" in text:
        return "CANN's libraries are not on the library path: source set_env.sh first (`fab setup` writes env.sh for it)"
    return "check the CANN installation (its set_env.sh, and the Python it supports)"


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
        problem = acl_import_error()
        if problem:
            raise BoardError(problem)
        return "acl"
    if requested == "auto" and om and bundle.file(om).is_file():
        problem = acl_import_error()
        if problem is None:
            return "acl"
        if problem != CANN_HINT:  # a pyACL that is there but broken is worth a word before the CPU takes over
            print(f"--backend auto: {problem}; running on onnxruntime (CPU) instead", file=sys.stderr)
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

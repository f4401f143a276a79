"""Board side: what the board offers to board code (arch, python, modules, CANN, memory, disk)."""
from __future__ import annotations

import os
import platform
import sys

from deploy.onboard.files import free_disk, mem_available
from deploy.onboard.store import current_id, records


def _module(name):
    """Version of an importable module, or the reason it does not import."""
    try:
        module = __import__(name)
    except Exception as e:  # noqa: BLE001 - any import failure is the answer
        return {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
    return {"ok": True, "version": getattr(module, "__version__", None)}


def op_probe(args):
    """What the board offers to board code: arch, python, modules, CANN, memory, disk (chip, plugin
    and CANN version: board/ascend.py)."""
    root = args["root"]
    candidates = [os.path.expanduser(p) for p in args["cann_candidates"]]
    return {
        "machine": platform.machine(),
        "python": list(sys.version_info[:3]),
        "glibc": platform.libc_ver()[1] or None,  # picks the manylinux wheels a board can install
        "executable": sys.executable,
        "modules": {m: _module(m) for m in args["modules"]},
        "cann_scripts": [p for p in candidates if os.path.isfile(p)],
        "cann_env": {k: os.environ.get(k) for k in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH", "ASCEND_OPP_PATH")},
        "env_sh": os.path.isfile(os.path.join(root, "env.sh")),
        "mem_available": mem_available(),
        "free_disk": free_disk(root),
        "current": current_id(root),
        "releases": records(root),
    }


def op_imports(args):
    """Which of the modules the board code needs do not import, and why; the versions of those that do, and
    the python's (run as board code runs)."""
    failed, versions = {}, {}
    for name in args["modules"]:
        found = _module(name)
        if found["ok"]:
            versions[name] = found["version"]
        else:
            failed[name] = found["error"]
    return {"failed": failed, "versions": versions, "python": list(sys.version_info[:3]), "executable": sys.executable}


def op_pins(args):
    """Installed version of each pinned distribution (None when not installed)."""
    from importlib import metadata

    out = {}
    for name in args["pins"]:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return {"installed": out, "executable": sys.executable}

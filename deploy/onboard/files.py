"""Board side: file helpers shared by the release store and the probe, and the JSON entry point."""
from __future__ import annotations

import hashlib
import json
import os
import uuid


class Refused(Exception):
    """An operation the board refuses; the message is shown to the user."""


def sha256(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        block = f.read(chunk)
        while block:
            digest.update(block)
            block = f.read(chunk)
    return digest.hexdigest()


def free_disk(path):
    """Free bytes on the filesystem holding `path` (or its nearest existing parent)."""
    while not os.path.exists(path):
        path = os.path.dirname(path) or "/"
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def mem_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def write_json(path, data):
    tmp = path + ".tmp-" + uuid.uuid4().hex[:8]
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def op_home(args):
    return {"home": os.path.expanduser("~")}


def op_mkdirs(args):
    """Create directories; report which were new."""
    made = [d for d in args["dirs"] if not os.path.isdir(d)]
    for d in args["dirs"]:
        os.makedirs(d, exist_ok=True)
    return {"made": made}


def op_hashes(args):
    """sha256 of each named file under dir (None when absent)."""
    out = {}
    for name in args["names"]:
        path = os.path.join(args["dir"], name)
        out[name] = sha256(path) if os.path.isfile(path) else None
    return out


def op_write_text(args):
    """Write a text file atomically unless it already holds exactly that text."""
    path = args["path"]
    if os.path.isfile(path):
        with open(path) as f:
            if f.read() == args["text"]:
                return {"changed": False}
    tmp = path + ".tmp-" + uuid.uuid4().hex[:8]
    with open(tmp, "w") as f:
        f.write(args["text"])
    os.replace(tmp, path)
    return {"changed": True}


def operations(*modules) -> dict:
    """op name -> function, from every `op_*` of the given modules."""
    return {name[3:]: fn for module in modules for name, fn in vars(module).items() if name.startswith("op_")}


def main(argv, ops):
    """Run ops[argv[1]] on the JSON argv[2]; print {"ok": result} or {"error": ..., "errno": ...}."""
    try:
        result = ops[argv[1]](json.loads(argv[2]))
    except Refused as e:
        print(json.dumps({"error": str(e)}))
        return 3
    except OSError as e:
        print(json.dumps({"error": "%s: %s" % (e.filename or "", e.strerror or e), "errno": e.errno}))
        return 4
    print(json.dumps({"ok": result}))
    return 0

"""Board-side half of the deployer: runs ON THE BOARD as `python3 -c <this file> OP JSON`.

Standard library only (Python >= 3.8), no shell: every path arrives inside one JSON argument,
so nothing from the inventory or the user is ever interpreted by a shell. Prints one JSON line.
Release layout (DESIGN.md §5): <root>/releases/<id>/ and <root>/current -> releases/<id>.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import uuid

RELEASE_RECORD = ".release.json"  # inside each finished release: id, files, deploy time
INCOMING = ".incoming-"  # prefix of a release being uploaded; never pointed at by current


class Refused(Exception):
    """An operation the board refuses; the message is shown to the user."""


def _sha256(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        block = f.read(chunk)
        while block:
            digest.update(block)
            block = f.read(chunk)
    return digest.hexdigest()


def _releases_dir(root):
    return os.path.join(root, "releases")


def _current_id(root):
    link = os.path.join(root, "current")
    if not os.path.islink(link):
        return None
    return os.path.basename(os.readlink(link).rstrip("/"))


def _records(root):
    """Finished releases' records, oldest deploy first."""
    rel, out = _releases_dir(root), []
    if not os.path.isdir(rel):
        return out
    for name in os.listdir(rel):
        path = os.path.join(rel, name, RELEASE_RECORD)
        if name.startswith(".") or not os.path.isfile(path):
            continue
        try:
            with open(path) as f:
                out.append(json.load(f))
        except (OSError, ValueError):
            continue  # a damaged record: the release is not offered for reuse or rollback
    return sorted(out, key=lambda r: r.get("deployed_at", 0))


def _free(path):
    """Free bytes on the filesystem holding `path` (or its nearest existing parent)."""
    while not os.path.exists(path):
        path = os.path.dirname(path) or "/"
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _mem_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _write_json(path, data):
    tmp = path + ".tmp-" + uuid.uuid4().hex[:8]
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def _switch(root, release_id):
    """Point `current` at releases/<id> atomically: new link under a temp name, rename(2) over."""
    tmp = os.path.join(root, ".current-" + uuid.uuid4().hex[:8])
    os.symlink(os.path.join("releases", release_id), tmp)
    os.replace(tmp, os.path.join(root, "current"))


def op_home(args):
    return {"home": os.path.expanduser("~")}


def op_index(args):
    """What is on the board: current release, finished releases and their files, free space."""
    root = args["root"]
    return {
        "current": _current_id(root),
        "releases": _records(root),
        "free_disk": _free(root),
    }


def op_stage(args):
    """Fresh incoming dir for a release; stale ones from interrupted deploys are removed first."""
    root, release_id = args["root"], args["id"]
    rel = _releases_dir(root)
    os.makedirs(rel, exist_ok=True)
    for name in os.listdir(rel):
        if name.startswith(INCOMING):
            shutil.rmtree(os.path.join(rel, name), ignore_errors=True)
    incoming = os.path.join(rel, INCOMING + release_id + "-" + uuid.uuid4().hex[:8])
    os.mkdir(incoming)
    for d in args["dirs"]:
        os.makedirs(os.path.join(incoming, d), exist_ok=True)
    for name, source in args["reuse"].items():
        target = os.path.join(incoming, name)
        try:
            os.link(source, target)  # same filesystem: no copy, no extra space
        except OSError:
            shutil.copyfile(source, target)
    return {"incoming": incoming}


def op_verify(args):
    """Hash every listed file under `dir`; report missing files and mismatches."""
    bad = []
    for name, want in sorted(args["files"].items()):
        path = os.path.join(args["dir"], name)
        if not os.path.isfile(path):
            bad.append([name, "missing"])
        elif _sha256(path) != want:
            bad.append([name, "checksum mismatch"])
    return {"bad": bad}


def op_discard(args):
    shutil.rmtree(args["dir"], ignore_errors=True)
    return {}


def op_activate(args):
    """Move a verified release into place, switch `current` to it, prune old releases."""
    root, release_id = args["root"], args["id"]
    final = os.path.join(_releases_dir(root), release_id)
    if args.get("incoming"):
        damaged = None
        if os.path.isdir(final):  # a damaged copy of the same content: swap it out, then delete it
            damaged = final + ".damaged-" + uuid.uuid4().hex[:8]
            os.rename(final, damaged)
        os.rename(args["incoming"], final)
        if damaged:
            shutil.rmtree(damaged, ignore_errors=True)
    record = dict(args["record"], id=release_id, deployed_at=time.time())
    _write_json(os.path.join(final, RELEASE_RECORD), record)
    previous = _current_id(root)
    _switch(root, release_id)
    return {"previous": previous, "current": release_id, "pruned": _prune(root, args["keep"])}


def _prune(root, keep):
    """Delete all but the `keep` most recently deployed releases; never the current one."""
    current = _current_id(root)
    old = [r["id"] for r in _records(root) if r["id"] != current]
    doomed = old[: max(0, len(old) - (keep - 1))]
    for release_id in doomed:
        shutil.rmtree(os.path.join(_releases_dir(root), release_id), ignore_errors=True)
    return doomed


def op_rollback(args):
    """Make the release deployed before the current one current again."""
    root = args["root"]
    current = _current_id(root)
    records = _records(root)
    ids = [r["id"] for r in records]
    if current not in ids:
        raise Refused("no current release to roll back from; deploy one with `fab deploy --bundle DIR`")
    earlier = ids[: ids.index(current)]
    if not earlier:
        raise Refused("no earlier release on the board to roll back to (releases: %s)" % ", ".join(ids))
    _switch(root, earlier[-1])
    return {"previous": current, "current": earlier[-1]}


def op_status(args):
    """Current release and its bundle summary, release count, free memory and disk."""
    root = args["root"]
    current = _current_id(root)
    out = {
        "current": current,
        "releases": [r["id"] for r in _records(root)],
        "free_disk": _free(root),
        "mem_available": _mem_available(),
        "bundle": None,
    }
    if current:
        for r in _records(root):
            if r["id"] == current:
                out["bundle"] = r.get("bundle")
                out["deployed_at"] = r.get("deployed_at")
    return out


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
    import platform

    root = args["root"]
    candidates = [os.path.expanduser(p) for p in args["cann_candidates"]]
    return {
        "machine": platform.machine(),
        "python": list(sys.version_info[:3]),
        "executable": sys.executable,
        "modules": {m: _module(m) for m in args["modules"]},
        "cann_scripts": [p for p in candidates if os.path.isfile(p)],
        "cann_env": {k: os.environ.get(k) for k in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH", "ASCEND_OPP_PATH")},
        "env_sh": os.path.isfile(os.path.join(root, "env.sh")),
        "mem_available": _mem_available(),
        "free_disk": _free(root),
        "current": _current_id(root),
        "releases": _records(root),
    }


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
        out[name] = _sha256(path) if os.path.isfile(path) else None
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


OPS = {name[3:]: fn for name, fn in globals().items() if name.startswith("op_")}


def main(argv):
    try:
        result = OPS[argv[1]](json.loads(argv[2]))
    except Refused as e:
        print(json.dumps({"error": str(e)}))
        return 3
    except OSError as e:
        print(json.dumps({"error": "%s: %s" % (e.filename or "", e.strerror or e), "errno": e.errno}))
        return 4
    print(json.dumps({"ok": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""Board side: the release store (docs/design.md §5) and the deploy lock.

Layout: <root>/releases/<id>/ and <root>/current -> releases/<id>; a release being uploaded
lives in releases/.incoming-<id>-<random> until it is verified. One deploy at a time holds
<root>/.deploy.lock (flock), so an incoming dir that is not ours belongs to a dead deploy.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
import uuid

from deploy.onboard.files import Refused, free_disk, mem_available, sha256, write_json

RELEASE_RECORD = ".release.json"  # inside each finished release: id, files, deploy time
INCOMING = ".incoming-"  # prefix of a release being uploaded; never pointed at by current
LOCK_NAME = ".deploy.lock"  # flock'ed by the deploy in progress; holds who that is


def _releases_dir(root):
    return os.path.join(root, "releases")


def current_id(root):
    link = os.path.join(root, "current")
    if not os.path.islink(link):
        return None
    return os.path.basename(os.readlink(link).rstrip("/"))


def records(root):
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


def _switch(root, release_id):
    """Point `current` at releases/<id> atomically: new link under a temp name, rename(2) over."""
    tmp = os.path.join(root, ".current-" + uuid.uuid4().hex[:8])
    os.symlink(os.path.join("releases", release_id), tmp)
    os.replace(tmp, os.path.join(root, "current"))


def op_index(args):
    """What is on the board: current release, finished releases and their files, free space."""
    root = args["root"]
    return {
        "current": current_id(root),
        "releases": records(root),
        "free_disk": free_disk(root),
    }


def op_stage(args):
    """Fresh incoming dir for a release; stale ones from dead deploys are removed first (lock held)."""
    root, release_id = args["root"], args["id"]
    if not _locked_by_another_process(root):
        raise Refused("staging a release needs the deploy lock (%s); deploy with `fab deploy`" % LOCK_NAME)
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
        elif sha256(path) != want:
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
        if os.path.lexists(os.path.join(args["incoming"], RELEASE_RECORD)):
            raise Refused("the bundle carries a file named %s, which the board keeps for itself; rebuild it" % RELEASE_RECORD)
        damaged = None
        if os.path.isdir(final):  # a damaged copy of the same content: swap it out, then delete it
            damaged = final + ".damaged-" + uuid.uuid4().hex[:8]
            os.rename(final, damaged)
        os.rename(args["incoming"], final)
        if damaged:
            shutil.rmtree(damaged, ignore_errors=True)
    record = dict(args["record"], id=release_id, deployed_at=time.time())
    write_json(os.path.join(final, RELEASE_RECORD), record)
    previous = current_id(root)
    _switch(root, release_id)
    return {"previous": previous, "current": release_id, "pruned": _prune(root, args["keep"])}


def _prune(root, keep):
    """Delete all but the `keep` most recently deployed releases; never the current one."""
    current = current_id(root)
    old = [r["id"] for r in records(root) if r["id"] != current]
    doomed = old[: max(0, len(old) - (keep - 1))]
    for release_id in doomed:
        shutil.rmtree(os.path.join(_releases_dir(root), release_id), ignore_errors=True)
    return doomed


def op_rollback(args):
    """Make the release deployed before the current one current again."""
    root = args["root"]
    current = current_id(root)
    ids = [r["id"] for r in records(root)]
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
    current = current_id(root)
    out = {
        "current": current,
        "releases": [r["id"] for r in records(root)],
        "free_disk": free_disk(root),
        "mem_available": mem_available(),
        "bundle": None,
        "service": _json_file(os.path.join(root, "service.json")),  # how `fab service install` set it up
        "bench": _json_file(os.path.join(root, "bench.json")),  # the last `fab bench` on this board
    }
    if current:
        for r in records(root):
            if r["id"] == current:
                out["bundle"] = r.get("bundle")
                out["deployed_at"] = r.get("deployed_at")
    return out


def _json_file(path):
    """A JSON object the deployer wrote on the board, or None when absent or damaged."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None




def _lock_file(root):
    os.makedirs(root, exist_ok=True)
    return os.open(os.path.join(root, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)


def _locked_by_another_process(root):
    """Whether some process (the deploy's lock holder) has the deploy lock now."""
    import fcntl

    fd = _lock_file(root)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we took ourselves
    return False


def op_lock(args):
    """Take the deploy lock and hold it until stdin closes (the deployer is done or gone).

    Prints {"ok": {"locked": true}} as soon as it holds the lock, or {"locked": false, "holder": ...}
    naming the deploy that holds it; the lock dies with this process, so a dead deployer frees it.
    """
    import fcntl

    fd = _lock_file(args["root"])
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        text = os.read(fd, 4096).decode("utf-8", "replace")
        try:
            holder = json.loads(text)
        except ValueError:
            holder = {"who": text.strip() or "unknown"}
        return {"locked": False, "holder": holder}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(dict(args["holder"], since=time.time())).encode())
    print(json.dumps({"ok": {"locked": True}}))
    sys.stdout.flush()
    sys.stdin.read()  # until EOF: the deployer closed the channel, or the link dropped
    return {"released": True}

"""`fab status`: what a board runs now (release, bundle, model) and what it has left (memory, disk)."""
from __future__ import annotations

import time

from deploy.remote import Remote
from deploy.text import human_bytes, shown


def board_status(remote: Remote) -> dict:
    """The board's status as data (see deploy.onboard.op_status), plus its name."""
    return {"board": remote.board.name, **remote.onboard("status", root=remote.root)}


def status_line(status: dict) -> str:
    """One line: release, bundle, releases kept, free memory and disk."""
    mem = human_bytes(status["mem_available"]) if status.get("mem_available") is not None else "unknown"
    tail = f"{len(status['releases'])} release(s) kept; memory free {mem}; disk free {human_bytes(status['free_disk'])}"
    if not status["current"]:
        return shown(f"{status['board']}: no release deployed (run `fab deploy --bundle DIR`); {tail}")
    bundle = status.get("bundle") or {}
    quant = bundle.get("quantization") or "?"
    if bundle.get("dialect"):
        quant += f"/{bundle['dialect']}"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(status["deployed_at"])) if status.get("deployed_at") else "?"
    return shown(f"{status['board']}: release {status['current']} (deployed {when}); model {bundle.get('model') or '?'}, "
                 f"quantization {quant}, kv {bundle.get('kv_len', '?')}, {'om' if bundle.get('om') else 'onnx'}, "
                 f"{human_bytes(bundle.get('bytes') or 0)}; {tail}")

"""`fab status`: what a board runs now (release, bundle, model) and what it has left (memory, disk)."""
from __future__ import annotations

import time

from deploy.remote import Remote
from deploy.text import human_bytes, shown


def board_status(remote: Remote) -> dict:
    """The board's status as data (see deploy.onboard.op_status), plus its name."""
    return {"board": remote.board.name, **remote.onboard("status", root=remote.root)}


def status_line(s: dict) -> str:
    """One line: release, bundle, releases kept, free memory and disk."""
    mem = human_bytes(s["mem_available"]) if s.get("mem_available") is not None else "unknown"
    tail = f"{len(s['releases'])} release(s) kept; memory free {mem}; disk free {human_bytes(s['free_disk'])}"
    if not s["current"]:
        return shown(f"{s['board']}: no release deployed (run `fab deploy --bundle DIR`); {tail}")
    b = s.get("bundle") or {}
    quant = b.get("quantization") or "?"
    if b.get("dialect"):
        quant += f"/{b['dialect']}"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(s["deployed_at"])) if s.get("deployed_at") else "?"
    return shown(f"{s['board']}: release {s['current']} (deployed {when}); model {b.get('model') or '?'}, "
                 f"quantization {quant}, kv {b.get('kv_len', '?')}, {'om' if b.get('om') else 'onnx'}, "
                 f"{human_bytes(b.get('bytes') or 0)}; {tail}")

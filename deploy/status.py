"""`fab status`: what a board runs now (release, bundle, model) and what it has left (memory, disk).

One board: one line. Several: one aligned table, a row per board (`--json`: a list of objects).
"""
from __future__ import annotations

import time

from deploy.remote import Remote
from deploy.service import ServiceOptions, state
from deploy.text import human_bytes, shown

COLUMNS = ("board", "release", "model", "backend", "service", "tok/s", "memory", "disk")


def board_status(remote: Remote) -> dict:
    """The board's status as data (see deploy.onboard.op_status), plus its name, backend and service state."""
    found = remote.onboard("status", root=remote.root)
    service = found.get("service")
    if service:
        try:
            service = {**service, "state": state(remote, ServiceOptions(**service))}
        except TypeError:  # a service.json this deployer did not write
            service = {**service, "state": "unknown"}
    return {"board": remote.board.name, "backend": remote.board.backend, **found, "service": service}


def status_line(status: dict) -> str:
    """One line: release, bundle, releases kept, free memory and disk, the service and the last bench."""
    mem = human_bytes(status["mem_available"]) if status.get("mem_available") is not None else "unknown"
    tail = f"{len(status['releases'])} release(s) kept; memory free {mem}; disk free {human_bytes(status['free_disk'])}"
    service = status.get("service")
    if service:
        tail += f"; service {service['state']} ({service.get('runner', '?')}, port {service.get('port', '?')})"
    if tokens_per_second(status) != "-":
        tail += f"; last bench {tokens_per_second(status)} tok/s"
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


def tokens_per_second(status: dict) -> str:
    """Decode tok/s of the last `fab bench`, when it ran on the current release."""
    bench = status.get("bench") or {}
    rate = bench.get("decode_tok_s_median")
    if not isinstance(rate, (int, float)) or bench.get("release") != status.get("current"):
        return "-"
    return f"{rate:.1f}"


def row(status: dict) -> list[str]:
    """The table's cells for one board that answered."""
    service = status.get("service")
    mem = status.get("mem_available")
    return [status["board"], status["current"] or "(none)", (status.get("bundle") or {}).get("model") or "-",
            status.get("backend") or "-", f"{service['state']}:{service.get('port', '?')}" if service else "none",
            tokens_per_second(status), human_bytes(mem) if mem is not None else "?", human_bytes(status["free_disk"])]


def table(rows: list[list[str]]) -> list[str]:
    """Aligned lines: a header, then one line per row (cells escaped)."""
    cells = [list(COLUMNS)] + [[shown(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]

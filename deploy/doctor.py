"""`fab doctor`: a read-only report on whether a board can run a bundle, one check per line.

Verdicts: ok, warn (works, but look), fail (cannot run the bundle), absent (not there and
not needed for this board's backend), skip (nothing to compare against). Each non-ok check
says how to fix it. The board-side facts come from deploy/onboard/probe.py and board/ascend.py
(chip, plugin, CANN version: the same code the compiler and the board use), run the way board
code runs (venv python, CANN environment), so "importable" means importable for `fab chat`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from board import ascend
from board.backends import acl_fix
from board.ortneeds import OP_MIN_ORT, ORT_TARGET_OPS, onnxruntime_shortfall, recommended_options
from deploy.boardenv import PYTHONS, cann_candidates, cann_fit, download_command, requirement_set, runtime_modules
from deploy.errors import DeployError
from deploy.inventory import Board
from deploy.remote import Remote
from deploy.text import human_bytes, shown

MIN_PYTHON = PYTHONS[0]  # the oldest the requirement sets cover: pyproject.toml's requires-python
ASCEND_SOURCE = Path(ascend.__file__).read_text()  # run on the board, prints its Ascend facts
MODULES = tuple(dict.fromkeys(runtime_modules("onnxruntime") + ["acl"]))  # what either backend imports
MEMORY_HEADROOM = 1.25  # below this many times the bundle's needs, memory is tight
SETUP = "fab setup --board {board}"


@dataclass(frozen=True)
class Check:
    name: str
    verdict: str  # ok | warn | fail | absent | skip
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Needs:
    """What the bundle to run asks of the board (from a local bundle or the current release)."""

    what: str  # "bundle DIR" or "release ID"
    bytes: int
    graph_bytes: dict  # {"onnx": n, "om": n}
    on_board: bool  # already deployed there: no disk needed
    om_soc: str | None = None  # chip the bundle's .om was compiled for
    om_cann: str | None = None  # CANN version the bundle's .om was compiled with
    min_onnxruntime: str | None = None  # lowest onnxruntime that runs the graph (None: unknown, format < 6)
    onnxruntime_ops: dict | None = None  # operator form -> lowest onnxruntime release that runs it
    run_bytes: dict | None = None  # {"kv", "outputs"} (board.manifest.run_bytes); None: a release recorded before them


def _modules(board: Board, probe: dict, rset) -> list:
    pinned = rset.pins if rset else {}
    required = set(runtime_modules(board.backend))
    checks = []
    for name in MODULES:
        found = probe["modules"][name]
        label = "pyACL (acl)" if name == "acl" else name
        if found["ok"]:
            version = (f"{label} " if name == "acl" else "") + (found.get("version") or "version unknown")
            if name in pinned and found.get("version") and found["version"] != pinned[name]:
                checks.append(Check(name, "warn", f"{version} ({rset.name} pins {pinned[name]})",
                                    SETUP.format(board=board.name)))
            else:
                checks.append(Check(name, "ok", version))
        elif name in required:
            fix = SETUP.format(board=board.name)
            if name == "acl" and "No module named 'acl'" in found["error"]:
                fix = "install CANN (pyACL comes with it) and make sure set_env.sh is sourced"
            elif name == "acl":
                fix = acl_fix(found["error"])
            checks.append(Check(name, "fail", f"{label} not importable ({found['error']})", fix))
        else:
            checks.append(Check(name, "absent", f"{label} not importable; not needed for backend {board.backend}"))
    return checks


def _requirements(board: Board, probe: dict, facts: dict, rset, problem: str | None) -> list:
    """Which requirement set fits the board, whether it is installed, and whether it fits the board's CANN."""
    if rset is None:
        return [Check("packages", "fail", problem)]
    versions = {n: probe["modules"].get(n, {}).get("version") for n in rset.pins}
    stale = [n for n, v in rset.pins.items() if n in probe["modules"] and versions[n] != v]
    checks = [Check("packages", "warn" if stale else "ok", f"{rset.name}: {rset.summary()}"
                    + (f" (differs: {', '.join(stale)})" if stale else " installed"),
                    f"{SETUP.format(board=board.name)} (offline: --wheels DIR, filled with: "
                    f"{download_command(rset, probe.get('glibc'))})" if stale else "")]
    ok, detail = cann_fit(facts["cann"]["version"], probe["python"], versions.get("numpy"))
    if ok is None:
        checks.append(Check("cann-python", "absent" if board.backend != "acl" else "skip", detail))
    else:
        fix = "" if ok else ("use a Python and numpy in that range for pyACL (board/requirements-acl.txt pins them; "
                             "conda can provide the Python), or a CANN release that accepts these")
        checks.append(Check("cann-python", "ok" if ok else ("fail" if board.backend == "acl" else "warn"), detail, fix))
    return checks


def _cann(board: Board, probe: dict, root: str) -> Check:
    scripts, env = probe["cann_scripts"], probe["cann_env"]
    needed = board.backend == "acl"
    if not scripts:
        detail = f"no CANN set_env.sh ({', '.join(cann_candidates(board))})"
        if needed:
            return Check("cann", "fail", detail, "install the CANN toolkit on the board (or set cann_env in the inventory)")
        return Check("cann", "absent", detail + f"; not needed for backend {board.backend}")
    if not (env.get("ASCEND_TOOLKIT_HOME") or env.get("ASCEND_HOME_PATH")):
        return Check("cann", "fail" if needed else "warn", f"{scripts[0]} found, but sourcing it set no ASCEND_* variable",
                     "check the CANN installation (re-run its installer)")
    how = f"sourced by every fab command via {root}/env.sh" if probe["env_sh"] else \
        "sourced by fab commands directly (no env.sh yet)"
    fix = "" if probe["env_sh"] else SETUP.format(board=board.name)
    return Check("cann", "ok" if probe["env_sh"] else "warn", f"{scripts[0]}, {how}", fix)


def _ascend(board: Board, probe: dict, needs: "Needs | None", facts: dict) -> list:
    """npu, toolkit and plugin checks from board/ascend.py's facts (see its *_verdict functions)."""
    needed, what = board.backend == "acl", needs.what if needs else ""
    return [Check("npu", *ascend.chip_verdict(facts["chip"], board.soc, needs and needs.om_soc, what, needed, board.backend)),
            Check("toolkit", *ascend.cann_verdict(facts["cann"], needs and needs.om_cann, what, needed)),
            Check("plugin", *ascend.plugin_verdict(facts["plugin"], bool(probe["cann_scripts"]),
                                                   f"fab setup --board {board.name} --with-plugin"))]


def _memory_and_disk(board: Board, probe: dict, needs: Needs | None, root: str) -> list:
    mem, free = probe["mem_available"], probe["free_disk"]
    if needs is None:
        detail = "no bundle to compare with (pass --bundle DIR, or deploy one)"
        return [Check("memory", "skip", f"{human_bytes(mem or 0)} available; {detail}"),
                Check("disk", "skip", f"{human_bytes(free)} free under {root}; {detail}")]
    kind = "om" if board.backend == "acl" and needs.graph_bytes.get("om") else "onnx"
    parts = memory_parts(kind, needs.graph_bytes.get(kind, 0), needs.run_bytes)
    need = sum(parts.values())
    what = " + ".join(f"{human_bytes(n)} {name}" for name, n in parts.items() if n or name.endswith("weights"))
    checks = []
    if mem is None:
        checks.append(Check("memory", "warn", "MemAvailable unknown (no /proc/meminfo)"))
    elif mem < need:
        checks.append(Check("memory", "fail", f"{human_bytes(mem)} available < {what} of {needs.what}",
                            "stop other programs or use a smaller/quantized bundle (or a smaller --kv-len)"))
    elif mem < MEMORY_HEADROOM * need:  # Python, the tokenizer and the runtime's own buffers come on top
        checks.append(Check("memory", "warn", f"{human_bytes(mem)} available, {what} of {needs.what}: tight",
                            "stop other programs"))
    else:
        checks.append(Check("memory", "ok", f"{human_bytes(mem)} available for {what}"))
    if needs.on_board:
        checks.append(Check("disk", "ok", f"{human_bytes(free)} free under {root}; {needs.what} is already there"))
    elif free < needs.bytes:
        checks.append(Check("disk", "fail", f"{human_bytes(free)} free under {root} < {human_bytes(needs.bytes)} of {needs.what}",
                            "free space on the board or lower keep_releases"))
    else:
        checks.append(Check("disk", "ok", f"{human_bytes(free)} free under {root} for {human_bytes(needs.bytes)} of {needs.what}"))
    return checks


def memory_parts(kind: str, weights: int, run: dict | None) -> dict:
    """What loading and running the bundle holds at its peak, by part: the weights, the KV cache, the outputs of
    the largest gear and, for an .om, the copy acl.mdl.load_from_mem reads it from until ACL has its own."""
    run = run or {}
    return {f"{kind} weights": weights, "KV cache": run.get("kv", 0), "largest-gear outputs": run.get("outputs", 0),
            "load copy": weights if kind == "om" else 0}


def _onnxruntime(board: Board, probe: dict, needs: Needs | None) -> Check:
    """Whether the board's onnxruntime runs the bundle's graph (board/ortneeds.py), and which build it runs."""
    found = probe["modules"].get("onnxruntime", {})
    installed = found.get("version") if found.get("ok") else None
    if installed is None:
        return Check("graph-ort", "skip", "onnxruntime not importable: nothing to compare the graph's requirement with")
    best = recommended_options(installed)
    runs = f"onnxruntime {installed} runs `python -m host build ... {best}`" if best else \
        f"onnxruntime {installed} runs no --target ort graph (the oldest such needs {OP_MIN_ORT[ORT_TARGET_OPS[0]]})"
    if needs is None or needs.min_onnxruntime is None:
        why = "no bundle to compare with (pass --bundle DIR, or deploy one)" if needs is None else \
            f"{needs.what} records no onnxruntime requirement (built before manifest format 6)"
        return Check("graph-ort", "skip", f"{runs}; {why}")
    if board.backend == "acl" and needs.graph_bytes.get("om"):
        return Check("graph-ort", "skip", f"backend acl runs the .om of {needs.what}, not its onnx graph; {runs}")
    shortfall = onnxruntime_shortfall(needs.min_onnxruntime, needs.onnxruntime_ops or {}, installed, probe["python"])
    if shortfall:
        return Check("graph-ort", "fail", f"{needs.what} needs {shortfall.needs}, the board has {shortfall.have}",
                     shortfall.fix)
    return Check("graph-ort", "ok", f"onnxruntime {installed} runs {needs.what} (needs >= {needs.min_onnxruntime})")


def _needs(probe: dict, bundle) -> Needs | None:
    """From a local bundle (deploy.release.Payload) or else the board's current release."""
    if bundle is not None:
        record = bundle.record()["bundle"]
        on_board = bundle.release_id in {r["id"] for r in probe["releases"]}
        return Needs(f"bundle {bundle.manifest.model.get('name')}", record["bytes"], record["graph_bytes"], on_board,
                     record.get("om_soc"), record.get("om_cann"), record.get("min_onnxruntime"), record.get("onnxruntime_ops"),
                     record.get("run_bytes"))
    for release in probe["releases"]:
        if release["id"] == probe["current"]:
            facts = release.get("bundle") or {}
            return Needs(f"release {release['id']}", facts.get("bytes", 0), facts.get("graph_bytes") or {}, True,
                         facts.get("om_soc"), facts.get("om_cann"), facts.get("min_onnxruntime"), facts.get("onnxruntime_ops"),
                         facts.get("run_bytes"))
    return None


def _ascend_facts(remote: Remote) -> dict:
    result = remote.python(["-c", ASCEND_SOURCE])
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise DeployError(remote.board.name, f"board/ascend.py failed on the board: {result.last_line()}") from None


def examine(remote: Remote, bundle=None) -> list:
    """All checks for one connected board."""
    board = remote.board
    probe = remote.onboard("probe", runtime=True, root=remote.root, modules=list(MODULES),
                           cann_candidates=cann_candidates(board))
    arch = probe["machine"]
    needs = _needs(probe, bundle)
    facts = _ascend_facts(remote)
    py = ".".join(map(str, probe["python"]))
    try:
        rset, problem = requirement_set(board.backend, probe["python"], probe["machine"]), None
    except ValueError as e:
        rset, problem = None, str(e)
    return [
        Check("ssh", "ok", f"this machine (connection: local) as {board.user}" if board.local
              else f"reachable at {board.host}:{board.port} as {board.user}"),
        Check("arch", "ok", arch) if arch == "aarch64" else
        Check("arch", "warn", f"{arch}, not aarch64: not an Orange Pi AIpro (fine for a test board)"),
        Check("python", "ok", f"{py} ({probe['executable']})") if tuple(probe["python"]) >= MIN_PYTHON else
        Check("python", "fail", f"{py} ({probe['executable']}) is older than {'.'.join(map(str, MIN_PYTHON))}",
              "install a newer python3 and set 'python' in the inventory"),
        *_modules(board, probe, rset),
        *_requirements(board, probe, facts, rset, problem),
        _cann(board, probe, remote.root),
        *_ascend(board, probe, needs, facts),
        *_memory_and_disk(board, probe, needs, remote.root),
        _onnxruntime(board, probe, needs),
    ]


def unreachable(error: DeployError) -> list:
    """The checks of a board that could not be examined: one failed `ssh` check, with the error's fix."""
    return [Check("ssh", "fail", error.detail, error.fix)]


def ready(checks: list) -> bool:
    return all(c.verdict != "fail" for c in checks)


def report_lines(board: Board, checks: list) -> list:
    lines = [shown(f"{board.name}: {c.verdict:<6} {c.name:<11} {c.detail}" + (f" -> fix: {c.fix}" if c.fix else ""))
             for c in checks]
    failed = [c.name for c in checks if c.verdict == "fail"]
    verdict = "ready" if not failed else f"NOT ready (failed: {', '.join(failed)})"
    lines.append(f"{board.name}: {verdict} to run bundles with backend {board.backend}")
    return lines


def report_json(board: Board, checks: list) -> dict:
    return {"board": board.name, "ready": ready(checks), "checks": [asdict(c) for c in checks]}

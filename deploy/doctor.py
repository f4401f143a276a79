"""`fab doctor`: a read-only report on whether a board can run a bundle, one check per line.

Verdicts: ok, warn (works, but look), fail (cannot run the bundle), absent (not there and
not needed for this board's backend), skip (nothing to compare against). Each non-ok check
says how to fix it. The board-side facts come from deploy.onboard.op_probe, run the way board
code runs (venv python, CANN environment), so "importable" means importable for `fab chat`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from deploy.errors import DeployError
from deploy.inventory import Board
from deploy.progress import human_bytes
from deploy.remote import CANN_ENV_CANDIDATES, Remote, connect

MIN_PYTHON = (3, 10)  # pyproject.toml's requires-python
BOARD_MODEL = {"Ascend310B1": "20T", "Ascend310B4": "8T"}
PLUGIN_VENDOR = "edge_llm"  # docker/plugin installs into <opp>/vendors/edge_llm
REQUIREMENTS = Path(__file__).resolve().parents[1] / "board" / "requirements.txt"
MODULES = ("numpy", "tokenizers", "onnxruntime", "acl")
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


def pins(path: Path = REQUIREMENTS) -> dict:
    """name -> pinned version from a requirements file of `name==version` lines."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[name.strip().lower()] = version.strip()
    return out


def _modules(board: Board, probe: dict) -> list:
    required = {"numpy", "tokenizers", "onnxruntime" if board.backend == "onnxruntime" else "acl"}
    pinned, checks = pins(), []
    for name in MODULES:
        m = probe["modules"][name]
        label = "pyACL (acl)" if name == "acl" else name
        if m["ok"]:
            version = (f"{label} " if name == "acl" else "") + (m.get("version") or "version unknown")
            if name in pinned and m.get("version") and m["version"] != pinned[name]:
                checks.append(Check(name, "warn", f"{version} (board/requirements.txt pins {pinned[name]})",
                                    SETUP.format(board=board.name)))
            else:
                checks.append(Check(name, "ok", version))
        elif name in required:
            fix = ("install CANN (pyACL comes with it) and make sure set_env.sh is sourced" if name == "acl"
                   else SETUP.format(board=board.name))
            checks.append(Check(name, "fail", f"{label} not importable ({m['error']})", fix))
        else:
            checks.append(Check(name, "absent", f"{label} not importable; not needed for backend {board.backend}"))
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


def _npu(board: Board, probe: dict, needs: "Needs | None") -> Check:
    npu, needed = probe["npu"], board.backend == "acl"
    if not npu["found"]:
        if needed:
            return Check("npu", "fail", "npu-smi not found: no NPU driver", "install the Ascend NPU driver and firmware")
        return Check("npu", "absent", f"npu-smi not found; not needed for backend {board.backend}")
    if not npu.get("ok"):
        return Check("npu", "fail" if needed else "warn", f"npu-smi info failed ({npu.get('error')})",
                     "check the NPU driver (dmesg, npu-smi info as root)")
    chip = npu.get("chip")
    if not chip:
        return Check("npu", "warn", "npu-smi info names no 310B chip", "check the board model")
    model = BOARD_MODEL.get(chip, "?")
    if board.soc and board.soc != chip:
        return Check("npu", "warn", f"{chip} ({model}) but the inventory says soc {board.soc}",
                     f"set soc: {chip} in the inventory and compile the bundle with --soc {chip}")
    if needs is not None and needs.om_soc and needs.om_soc != chip:
        return Check("npu", "fail" if board.backend == "acl" else "warn",
                     f"{chip} ({model}) but {needs.what}'s model.om was compiled for {needs.om_soc} "
                     f"({BOARD_MODEL.get(needs.om_soc, '?')}): it will not load",
                     f"recompile: python -m host compile --bundle DIR --soc {chip}")
    return Check("npu", "ok", f"{chip} ({model})")


def _memory_and_disk(board: Board, probe: dict, needs: Needs | None, root: str) -> list:
    mem, free = probe["mem_available"], probe["free_disk"]
    if needs is None:
        detail = "no bundle to compare with (pass --bundle DIR, or deploy one)"
        return [Check("memory", "skip", f"{human_bytes(mem or 0)} available; {detail}"),
                Check("disk", "skip", f"{human_bytes(free)} free under {root}; {detail}")]
    kind = "om" if board.backend == "acl" and needs.graph_bytes.get("om") else "onnx"
    weights = needs.graph_bytes.get(kind, 0)
    checks = []
    if mem is None:
        checks.append(Check("memory", "warn", "MemAvailable unknown (no /proc/meminfo)"))
    elif mem < weights:
        checks.append(Check("memory", "fail", f"{human_bytes(mem)} available < {human_bytes(weights)} of {kind} weights "
                                              f"of {needs.what}", "stop other programs or use a smaller/quantized bundle"))
    elif mem < 1.5 * weights:  # activations, KV cache and the runtime need room beyond the weights
        checks.append(Check("memory", "warn", f"{human_bytes(mem)} available, {human_bytes(weights)} of {kind} weights "
                                              f"of {needs.what}: tight", "stop other programs"))
    else:
        checks.append(Check("memory", "ok", f"{human_bytes(mem)} available for {human_bytes(weights)} of {kind} weights"))
    if needs.on_board:
        checks.append(Check("disk", "ok", f"{human_bytes(free)} free under {root}; {needs.what} is already there"))
    elif free < needs.bytes:
        checks.append(Check("disk", "fail", f"{human_bytes(free)} free under {root} < {human_bytes(needs.bytes)} of {needs.what}",
                            f"free space on the board or lower keep_releases"))
    else:
        checks.append(Check("disk", "ok", f"{human_bytes(free)} free under {root} for {human_bytes(needs.bytes)} of {needs.what}"))
    return checks


def _plugin(board: Board, probe: dict) -> Check:
    plugin = probe["plugin"]
    if plugin["found"]:
        return Check("plugin", "ok", f"custom op plugin in {plugin['path']}")
    if not probe["cann_scripts"]:
        return Check("plugin", "absent", "no custom op plugin (no CANN either); needed only to compile with ATC on the board")
    return Check("plugin", "warn", f"no custom op plugin under ASCEND_CUSTOM_OPP_PATH or $ASCEND_OPP_PATH/vendors/{PLUGIN_VENDOR}; "
                                   f"needed only to compile W8A8 graphs with ATC on the board",
                 f"fab setup --board {board.name} --with-plugin")


def cann_candidates(board: Board) -> list:
    return [board.cann_env] if board.cann_env else ["~/" + p if not p.startswith("/") else p for p in CANN_ENV_CANDIDATES]


def _needs(probe: dict, bundle) -> Needs | None:
    """From a local bundle (deploy.release.Payload) or else the board's current release."""
    if bundle is not None:
        record = bundle.record()["bundle"]
        on_board = bundle.release_id in {r["id"] for r in probe["releases"]}
        return Needs(f"bundle {bundle.manifest.model.get('name')}", record["bytes"], record["graph_bytes"], on_board,
                     record.get("om_soc"))
    for r in probe["releases"]:
        if r["id"] == probe["current"]:
            b = r.get("bundle") or {}
            return Needs(f"release {r['id']}", b.get("bytes", 0), b.get("graph_bytes") or {}, True, b.get("om_soc"))
    return None


def examine(remote: Remote, bundle=None) -> list:
    """All checks for one connected board."""
    board = remote.board
    probe = remote.onboard("probe", runtime=True, root=remote.root, modules=list(MODULES),
                           cann_candidates=cann_candidates(board), vendor=PLUGIN_VENDOR)
    arch = probe["machine"]
    needs = _needs(probe, bundle)
    py = ".".join(map(str, probe["python"]))
    return [
        Check("ssh", "ok", f"reachable at {board.host}:{board.port} as {board.user}"),
        Check("arch", "ok", arch) if arch == "aarch64" else
        Check("arch", "warn", f"{arch}, not aarch64: not an Orange Pi AIpro (fine for a test board)"),
        Check("python", "ok", f"{py} ({probe['executable']})") if tuple(probe["python"]) >= MIN_PYTHON else
        Check("python", "fail", f"{py} ({probe['executable']}) is older than {'.'.join(map(str, MIN_PYTHON))}",
              "install a newer python3 and set 'python' in the inventory"),
        *_modules(board, probe),
        _cann(board, probe, remote.root),
        _npu(board, probe, needs),
        *_memory_and_disk(board, probe, needs, remote.root),
        _plugin(board, probe),
    ]


def doctor(board: Board, bundle=None) -> list:
    """Connect and examine; an unreachable board is one failed `ssh` check."""
    try:
        with connect(board) as remote:
            return examine(remote, bundle)
    except DeployError as e:
        return [Check("ssh", "fail", e.message.split("; ")[0], "; ".join(e.message.split("; ")[1:]))]


def ready(checks: list) -> bool:
    return all(c.verdict != "fail" for c in checks)


def report_lines(board: Board, checks: list) -> list:
    lines = [f"{board.name}: {c.verdict:<6} {c.name:<11} {c.detail}" + (f" -> fix: {c.fix}" if c.fix else "")
             for c in checks]
    failed = [c.name for c in checks if c.verdict == "fail"]
    verdict = "ready" if not failed else f"NOT ready (failed: {', '.join(failed)})"
    lines.append(f"{board.name}: {verdict} to run bundles with backend {board.backend}")
    return lines


def report_json(board: Board, checks: list) -> dict:
    return {"board": board.name, "ready": ready(checks), "checks": [asdict(c) for c in checks]}

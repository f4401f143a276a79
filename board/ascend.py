"""Facts about an Ascend installation, shared by the board, the compiler (host) and the doctor (deploy).

One table of chips (SoC names and the board models they are), one plugin finder (where ATC looks
for our MatMulInteger parser plugin, and whether that vendor is enabled), chip detection (pyACL,
else `npu-smi info`), and the CANN toolkit version with the rule an .om obeys: it runs on the
CANN it was built with or a newer one. Standard library only (Python >= 3.8), so the doctor can
run this file on a board that has no venv yet: `python3 -c "$(cat board/ascend.py)"` prints the
board's facts as one JSON line.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

# --- chips -----------------------------------------------------------------------------------
# ATC's soc_version values of the Ascend 310B family, and the board models they are. Orange Pi
# AIpro: the 20 TOPS part is Ascend310B1, the 8 TOPS part Ascend310B4; an .om built for one is
# rejected by the other at load time.
SOCS = ("Ascend310B1", "Ascend310B2", "Ascend310B3", "Ascend310B4")
SOC_BY_BOARD = {"20T": "Ascend310B1", "8T": "Ascend310B4"}
BOARD_BY_SOC = {soc: board for board, soc in SOC_BY_BOARD.items()}
FAMILY = "Ascend310B"  # what newer npu-smi versions print without the variant digit


def resolve_soc(value: str) -> str | None:
    """A SoC name (any case) or board model (20T/8T) -> ATC soc_version; None when unknown."""
    if value in SOC_BY_BOARD:
        return SOC_BY_BOARD[value]
    return next((soc for soc in SOCS if value.lower() == soc.lower()), None)


def soc_hint() -> str:
    """One phrase that untangles the 20T/8T confusion."""
    return ", ".join(f"{board} boards are {soc}" for board, soc in SOC_BY_BOARD.items())


def board_model(soc: str | None) -> str:
    return BOARD_BY_SOC.get(soc or "", "?")


def chip_from_npu_smi(text: str) -> str | None:
    """The chip `npu-smi info` names: "Ascend310B1" (older drivers), "Ascend310B" (newer: no digit), or None."""
    match = re.search(r"\b(?:Ascend)?(310B)(\d?)\b", text)
    return None if match is None else "Ascend" + match.group(1) + match.group(2)


def detect_chip(timeout: float = 15) -> dict:
    """{"chip", "source", "error"}: pyACL's acl.get_soc_name() when acl imports, else `npu-smi info`."""
    try:
        import acl  # noqa: PLC0415 - only boards with CANN have it

        name = acl.get_soc_name()  # needs no acl.init; None when it cannot tell
        if name:
            return {"chip": name, "source": "acl.get_soc_name", "error": None}
    except Exception:  # noqa: BLE001 - ImportError, or CANN libraries missing: fall back to npu-smi
        pass
    path = shutil.which("npu-smi")
    if not path:
        return {"chip": None, "source": None, "error": None}  # neither pyACL nor npu-smi: no NPU stack
    try:
        p = subprocess.run([path, "info"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"chip": None, "source": "npu-smi", "error": str(e)}
    text = p.stdout.decode("utf-8", "replace")
    if p.returncode != 0:
        return {"chip": None, "source": "npu-smi", "error": (text.strip().splitlines() or ["exit %d" % p.returncode])[-1]}
    return {"chip": chip_from_npu_smi(text), "source": "npu-smi", "error": None}


# --- the ATC plugin --------------------------------------------------------------------------
PLUGIN_VENDOR = "edge_llm"  # docker/plugin installs into <opp>/vendors/edge_llm
PLUGIN_MARKER = b"MatMulInteger"  # the plugin's OriginOpType strings are literals in its .so


@dataclass
class PluginSearch:
    lib: str | None = None  # the .so that registers MatMulInteger
    looked: list = field(default_factory=list)  # framework/onnx directories searched
    problem: str | None = None  # why a plugin that is there would not be loaded


def enabled_vendors(opp: Path) -> list:
    """Vendor names in <opp>/vendors/config.ini's load_priority (ATC loads only those)."""
    try:
        text = (Path(opp) / "vendors" / "config.ini").read_text()
    except OSError:
        return []
    match = re.search(r"^\s*load_priority\s*=\s*(.*)$", text, re.M)
    return [v.strip() for v in match.group(1).split(",") if v.strip()] if match else []


def find_plugin(env: dict) -> PluginSearch:
    """The installed ONNX parser plugin registering MatMulInteger where ATC looks for it.

    ATC reads ASCEND_CUSTOM_OPP_PATH directories, then $ASCEND_OPP_PATH/vendors/<name> for the
    names listed in vendors/config.ini's load_priority; a vendor directory not listed is ignored.
    """
    search = PluginSearch()
    dirs = [(Path(p), True) for p in env.get("ASCEND_CUSTOM_OPP_PATH", "").split(":") if p]
    opp = env.get("ASCEND_OPP_PATH")
    if opp:
        enabled = enabled_vendors(Path(opp))
        dirs += [(d, d.name in enabled) for d in sorted((Path(opp) / "vendors").glob("*")) if d.is_dir()]
    for directory, enabled in dirs:
        onnx_dir = directory / "framework" / "onnx"
        search.looked.append(str(onnx_dir))
        for lib in sorted(onnx_dir.glob("*.so")):
            if PLUGIN_MARKER not in lib.read_bytes():
                continue
            if enabled:
                search.lib, search.problem = str(lib), None
                return search
            search.problem = (f"{lib} registers MatMulInteger but vendor {directory.name!r} is not in "
                              f"{Path(opp) / 'vendors' / 'config.ini'} load_priority, so ATC ignores it; "
                              f"add it there (docker/plugin/build.sh does)")
    return search


# --- CANN version ----------------------------------------------------------------------------
TOOLKIT_HOMES = ("/usr/local/Ascend/ascend-toolkit/latest", "~/Ascend/ascend-toolkit/latest")
_VERSION_LINE = re.compile(r"^\s*(?:version|Version)\s*=\s*(\S+)\s*$", re.M)
# version.cfg (older toolkits): name=[inner_version:version], e.g. runtime_running_version=[7.0.0.5.242:7.0.RC1]
_CFG_LINE = re.compile(r"^\s*\w*(?:installed|running)_version\s*=\s*\[[^:\]]*:([^\]]+)\]", re.M)


def parse_toolkit_version(text: str) -> str | None:
    """The CANN version in ascend_toolkit_install.info (version=8.0.RC1) or version.cfg text."""
    match = _VERSION_LINE.search(text) or _CFG_LINE.search(text)
    return match.group(1) if match else None


def toolkit_version(env: dict | None = None) -> dict:
    """{"version", "file"} of the CANN toolkit ($ASCEND_TOOLKIT_HOME, else the usual places)."""
    env = os.environ if env is None else env
    homes = [h for h in (env.get("ASCEND_TOOLKIT_HOME"), *TOOLKIT_HOMES) if h]
    for home in homes:
        home = os.path.expanduser(home)
        for pattern in ("*/ascend_toolkit_install.info", "version.cfg", "*/version.cfg"):
            for path in sorted(glob.glob(os.path.join(home, pattern))):
                try:
                    version = parse_toolkit_version(Path(path).read_text(errors="replace"))
                except OSError:
                    continue
                if version:
                    return {"version": version, "file": path}
    return {"version": None, "file": None}


def version_key(version: str) -> tuple:
    """Sortable key: 7.0.RC1 < 7.0.0 < 8.0.RC1.alpha003 < 8.0.RC1 = 8.0.RC1.beta1 < 8.0.RC2 < 8.0.0 < 8.1.RC1.

    A betaN is the release it names (Ascend ships betas of a release to boards as that release)."""
    key = []
    for part in version.split("."):
        rc, alpha, num = re.fullmatch(r"RC(\d+)", part, re.I), re.fullmatch(r"alpha(\d+)", part, re.I), part.isdigit()
        if re.fullmatch(r"beta\d*", part, re.I):
            continue
        key.append(int(part) if num else int(rc.group(1)) - 1000 if rc else int(alpha.group(1)) - 10**6 if alpha else -10**7)
    return tuple(key + [0] * (4 - len(key)))


# What each CANN release asks of the Python that imports pyACL (its installation guide's dependency
# list): (first release the row applies to, lowest Python, highest Python, numpy). A board's CANN
# uses the last row at or below its version; releases before the first row are not checked.
CANN_PYTHON = (
    ("8.0.RC1", (3, 7), (3, 10), "<1.25"),  # the guides write "<=1.24": any 1.24.x
    ("8.0.0", (3, 7), (3, 11), "<1.25"),
    ("8.5.RC1", (3, 7), (3, 11), "<2"),
)


def cann_mismatch(om_cann: str | None, board_cann: str | None) -> str | None:
    """Why an .om built with CANN `om_cann` will not load on a board with `board_cann`, or None."""
    if not om_cann or not board_cann or version_key(board_cann) >= version_key(om_cann):
        return None
    return (f"model.om was built with CANN {om_cann} but the board has CANN {board_cann} (an .om runs on its own "
            f"CANN or newer): recompile with CANN {board_cann} (python -m host compile --runner board, or a "
            f"CANN {board_cann} image), or upgrade the board's toolkit to {om_cann}")


# --- verdicts (the doctor's checks; deploy/doctor.py words them as its Check lines) ------------
def chip_verdict(found: dict, inventory_soc: str | None, om_soc: str | None, om_what: str, needed: bool,
                 backend: str) -> tuple:
    """(verdict, detail, fix) for the board's chip against the inventory and the bundle's .om."""
    soft = "fail" if needed else "warn"
    if found["source"] is None:
        if needed:
            return "fail", "npu-smi not found: no NPU driver", "install the Ascend NPU driver and firmware"
        return "absent", f"npu-smi not found; not needed for backend {backend}", ""
    if found["error"]:
        return soft, f"npu-smi info failed ({found['error']})", "check the NPU driver (dmesg, npu-smi info as root)"
    chip, by = found["chip"], found["source"]
    if not chip:
        return "warn", f"{by} names no 310B chip", "check the board model"
    if chip == FAMILY:  # newer npu-smi: the family without its variant digit; the inventory's soc names it
        if not inventory_soc:
            return "warn", f"{chip}: {by} does not say which variant ({soc_hint()})", \
                "set soc: in the inventory to the board's model (20T: Ascend310B1, 8T: Ascend310B4)"
        chip, seen = inventory_soc, f"{chip} ({by} names no variant; the inventory says {inventory_soc}, {board_model(inventory_soc)})"
    else:
        seen = f"{chip} ({board_model(chip)})"
        if inventory_soc and inventory_soc != chip:
            return "warn", f"{seen} but the inventory says soc {inventory_soc}", \
                f"set soc: {chip} in the inventory and compile the bundle with --soc {chip}"
    if om_soc and om_soc != chip:
        return ("fail" if backend == "acl" else "warn",
                f"{seen} but {om_what}'s model.om was compiled for {om_soc} ({board_model(om_soc)}): it will not load",
                f"recompile: python -m host compile --bundle DIR --soc {chip}")
    return "ok", seen, ""


def plugin_verdict(found: dict, has_cann: bool, fix: str) -> tuple:
    """(verdict, detail, fix) for the MatMulInteger plugin, found by `find_plugin` on the board."""
    if found["lib"]:
        return "ok", f"custom op plugin {found['lib']}", ""
    if found["problem"]:
        return "warn", found["problem"], fix
    if not has_cann:
        return "absent", "no custom op plugin (no CANN either); needed only to compile with ATC on the board", ""
    looked = ", ".join(found["looked"]) or "nowhere (ASCEND_CUSTOM_OPP_PATH and ASCEND_OPP_PATH unset)"
    return "warn", (f"no custom op plugin registering MatMulInteger (looked in {looked}); needed only to compile "
                    "W8A8 graphs with ATC on the board"), fix


def cann_verdict(found: dict, om_cann: str | None, om_what: str, needed: bool) -> tuple:
    """(verdict, detail, fix) for the board's CANN toolkit version against the one the .om was built with."""
    version = found["version"]
    if not version:
        detail = "no CANN toolkit version found (ascend_toolkit_install.info or version.cfg)"
        if om_cann:
            return ("fail" if needed else "warn"), f"{detail}; {om_what}'s model.om needs CANN {om_cann} or newer",                 f"install CANN {om_cann} or newer on the board"
        return "absent", detail, ""
    problem = cann_mismatch(om_cann, version)
    if problem:
        return ("fail" if needed else "warn"), f"{om_what}: {problem.split(': ')[0]}", problem.split(": ", 1)[1]
    built = f"; {om_what}'s model.om was built with CANN {om_cann}" if om_cann else ""
    return "ok", f"CANN {version} ({found['file']}){built}", ""


def facts(env: dict | None = None) -> dict:
    """Everything the doctor asks about Ascend on this machine, as JSON-ready data."""
    env = dict(os.environ if env is None else env)
    return {"chip": detect_chip(), "plugin": asdict(find_plugin(env)), "cann": toolkit_version(env)}


if __name__ == "__main__":
    print(json.dumps(facts()))

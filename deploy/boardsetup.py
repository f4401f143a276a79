"""`fab setup`: make a board ready to run bundles, idempotently (the lab manual's step 1).

Steps: install path; the board's requirement set (board/requirements.txt, or requirements-acl.txt
for backend acl, read for the board's Python; from uploaded wheels on offline boards) into a venv
under the install path unless the board's python already has those versions;
`<path>/env.sh` sourcing CANN's set_env.sh when present (every remote command sources it);
with --with-plugin, the custom op plugin built from docker/plugin/ on the board. Each step
first looks, and only acts when something differs, so a second run changes nothing.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from board.manifest import sha256_file
from deploy.boardenv import RequirementSet, cann_candidates, download_command, env_script, plugin_dir, requirement_set
from deploy.errors import DeployError
from deploy.progress import Progress
from deploy.remote import Remote

PLUGIN_SOURCE = Path(__file__).resolve().parents[1] / "docker" / "plugin"


@dataclass(frozen=True)
class Step:
    name: str
    changed: bool
    detail: str


def _upload_changed(remote: Remote, files: dict, dest: str, progress: Progress) -> list:
    """Upload the files (remote name -> local path) whose sha256 differs on the board; their names."""
    have = remote.onboard("hashes", dir=dest, names=sorted(files))
    todo = [n for n in sorted(files) if have[n] != sha256_file(files[n])]
    with progress.upload(sum(files[n].stat().st_size for n in todo)):
        for name in todo:
            part = f"{dest}/.{Path(name).name}.part"
            remote.put(files[name], part, callback=progress.file(name))
            remote.rename(part, f"{dest}/{name}")
    return todo


def _python_deps(remote: Remote, rset: RequirementSet, glibc: str | None, wheels: Path | None, system_site: bool,
                 progress: Progress) -> list:
    """The board's requirement set importable by board code: venv + pip only when it is not already."""
    steps, root, want = [], remote.root, rset.pins
    recipe = download_command(rset, glibc)
    if wheels:
        found = {p.name: p for p in sorted(Path(wheels).glob("*.whl"))}
        if not found:
            raise DeployError(remote.board.name, f"no *.whl files in {wheels}", f"fill it with: {recipe}")
        remote.onboard("mkdirs", dirs=[f"{root}/wheels"])
        sent = _upload_changed(remote, found, f"{root}/wheels", progress)
        steps.append(Step("wheels", bool(sent), f"{len(sent)} of {len(found)} wheel(s) uploaded to {root}/wheels"))
    sent = _upload_changed(remote, {"requirements.txt": rset.lock}, root, progress)
    steps.append(Step("requirements", bool(sent), f"{root}/requirements.txt "
                      + ("uploaded" if sent else "up to date") + f" ({rset.name})"))
    installed = remote.onboard("pins", runtime=True, pins=sorted(want))
    if all(installed["installed"][n] == v for n, v in want.items()):
        steps.append(Step("python deps", False, f"{rset.summary()} already in {installed['executable']}"))
        return steps
    venv = f"{root}/venv"
    if remote.run(["test", "-x", f"{venv}/bin/python"], env=False).exited != 0:
        args = ["-m", "venv", *(["--system-site-packages"] if system_site else []), venv]
        made = remote.python(args, venv=False)
        if made.exited != 0:
            raise DeployError(remote.board.name, f"creating {venv} failed ({made.last_line()})",
                              "on Debian/Ubuntu boards: sudo apt-get install python3-venv")
        steps.append(Step("venv", True, f"created {venv}"))
    offline = ["--no-index", "--find-links", f"{root}/wheels"] if wheels else []
    pip = remote.python(["-m", "pip", "install", "--disable-pip-version-check", "-q", *offline,
                         "-r", f"{root}/requirements.txt"])
    if pip.exited != 0:
        fix = (f"the wheels must be for {rset.name}: {recipe}" if wheels
               else f"offline board? pass --wheels DIR, filled with: {recipe}")
        raise DeployError(remote.board.name, f"pip install in {venv} failed ({pip.last_line()})", fix)
    steps.append(Step("python deps", True, f"installed {rset.summary()} into {venv}"
                                           + (" from uploaded wheels" if wheels else "")))
    return steps


def _plugin(remote: Remote, cann: str | None, progress: Progress) -> Step:
    """Build docker/plugin/ on the board into <path>/opp (skipped when that source is already built)."""
    if not cann:
        raise DeployError(remote.board.name, "--with-plugin needs the CANN toolkit on the board (no set_env.sh found)",
                          "install CANN first, then run `fab setup --with-plugin` again")
    files = {p.relative_to(PLUGIN_SOURCE).as_posix(): p for p in sorted(PLUGIN_SOURCE.rglob("*")) if p.is_file()}
    digest = hashlib.sha256("".join(f"{n} {sha256_file(p)}\n"
                                    for n, p in files.items()).encode()).hexdigest()[:16]
    root, opp, installed = remote.root, f"{remote.root}/opp", plugin_dir(remote.root)
    stamp = f"{installed}/.built-from-{digest}"
    if remote.run(["test", "-f", stamp], env=False).exited == 0:
        return Step("plugin", False, f"built from this docker/plugin/ already ({installed})")
    remote.onboard("mkdirs", dirs=[f"{root}/plugin"])
    _upload_changed(remote, files, f"{root}/plugin", progress)
    build = remote.run(["bash", f"{root}/plugin/build.sh", "--prefix", opp])
    if build.exited != 0:
        raise DeployError(remote.board.name, f"building the plugin on the board failed ({build.last_line()})")
    remote.onboard("write_text", path=stamp, text=digest + "\n")
    return Step("plugin", True, f"built and installed into {installed}")


def setup(remote: Remote, wheels: Path | None = None, with_plugin: bool = False, system_site: bool = False,
          progress: Progress | None = None) -> list:
    """Run every step on one board; the list of what each did."""
    progress = progress or Progress(remote.board.name)
    root = remote.root
    made = remote.onboard("mkdirs", dirs=[root, f"{root}/releases"])["made"]
    steps = [Step("install path", bool(made), f"{root} " + ("created" if made else "exists"))]
    probe = remote.onboard("probe", root=root, modules=[], cann_candidates=cann_candidates(remote.board))
    rset = board_requirements(remote, probe)  # before installing anything: a board no set fits is refused
    cann = probe["cann_scripts"][0] if probe["cann_scripts"] else None
    plugin = None
    if with_plugin:
        steps.append(_plugin(remote, cann, progress))
        plugin = plugin_dir(root)
    elif remote.run(["test", "-d", plugin_dir(root)], env=False).exited == 0:
        plugin = plugin_dir(root)  # built by an earlier --with-plugin: keep it on
    changed = remote.onboard("write_text", path=f"{root}/env.sh", text=env_script(cann, plugin))["changed"]
    steps.append(Step("env.sh", changed, f"{root}/env.sh " + ("written" if changed else "up to date") +
                      (f" (sources {cann})" if cann else " (no CANN found: nothing to source)")))
    steps += _python_deps(remote, rset, probe.get("glibc"), wheels, system_site, progress)
    return steps


def board_requirements(remote: Remote, probe: dict) -> RequirementSet:
    """The requirement set for the probed board (its backend, Python and machine); DeployError when none fits."""
    try:
        return requirement_set(remote.board.backend, probe["python"], probe["machine"])
    except ValueError as e:
        raise DeployError(remote.board.name, str(e)) from None


def setup_lines(board: str, steps: list) -> list:
    lines = [f"{board}: {'changed' if s.changed else 'ok':<7} {s.name:<12} {s.detail}" for s in steps]
    changes = sum(s.changed for s in steps)
    lines.append(f"{board}: setup done, {changes} change(s)" if changes else f"{board}: setup done, nothing to change")
    return lines

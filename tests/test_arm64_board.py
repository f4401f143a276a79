"""The emulated aarch64 board (scripts/arm64-board.sh): `fab setup --wheels`, `fab deploy` and the board's
answers over real SSH, against the x86 run of the same bundles.

Opt in (20-30 minutes per board under emulation; the Ascend graph's perplexity takes 10 of them):
`sudo make arm64-board test-arm64`. Each board that answers is tested: bullseye (Python 3.9, the oldest
set: numpy 1.24, onnxruntime 1.19.2) and, when made, bookworm (Python 3.11, the default set). Greedy
text must equal x86's token for token; perplexity on 1024 tokens must be within 1 % of x86's for the
integer graphs (qemu runs the board's own kernels), 2 % for the fp16 Ascend graph (PPL_TOLERANCE).
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from board.ortneeds import version_tuple
from deploy.boardenv import download_args, requirement_set
from tests.support.paths import ROOT, TINYSTORIES_TEXT, STORIES_BIN, STORIES_TOK, WIKITEXT, need
from tests.support.sshd import fab

pytestmark = [pytest.mark.slow, pytest.mark.arm64]
SCRIPT = ROOT / "scripts" / "arm64-board.sh"
SUITES = {"bullseye": (3, 9), "bookworm": (3, 11)}
QUESTION = "What is the capital of France? Answer in one sentence."
PPL_TOKENS, PPL_CTX = 1024, 512


class Arm64Board:
    """One running emulated board: its inventory, and commands run on it over SSH."""

    def __init__(self, suite: str, inventory: Path):
        self.suite, self.inventory = suite, inventory
        self.entry = yaml.safe_load(inventory.read_text())["boards"][0]
        self.python = SUITES[suite]

    def ssh(self, command: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        e = self.entry
        return subprocess.run(["ssh", "-q", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={e['known_hosts']}",
                               "-o", "IdentitiesOnly=yes", "-i", e["key"], "-p", str(e["port"]), f"{e['user']}@{e['host']}",
                               command], capture_output=True, text=True, timeout=timeout)

    def board_cli(self, *args) -> subprocess.CompletedProcess:
        """`python -m board ARGS` in the current release, as fab runs it (venv, env.sh)."""
        root = self.entry["path"]
        return self.ssh(f"cd {root}/current && . {root}/env.sh && {root}/venv/bin/python -B -m board "
                        + " ".join(shlex.quote(str(a)) for a in args))

    def fab(self, *args, timeout: float = 1800):
        return fab(self.inventory, *args, timeout=timeout)


def _running(suite: str) -> Path | None:
    status = subprocess.run(["bash", str(SCRIPT), "status", suite], capture_output=True, text=True)
    if status.returncode == 0:
        return Path(status.stdout.strip())
    start = subprocess.run(["bash", str(SCRIPT), "start", suite], capture_output=True, text=True)  # made but stopped
    status = subprocess.run(["bash", str(SCRIPT), "status", suite], capture_output=True, text=True)
    return Path(status.stdout.strip()) if start.returncode == 0 and status.returncode == 0 else None


@pytest.fixture(scope="module", params=list(SUITES))
def board(request, tmp_path_factory) -> Arm64Board:
    """A running board with its requirement set installed offline by `fab setup --wheels`."""
    inventory = _running(request.param)
    if inventory is None:
        pytest.skip(f"no emulated {request.param} board: run `sudo make arm64-board ARM64_SUITE={request.param}`")
    b = Arm64Board(request.param, inventory)
    rset = requirement_set(b.entry["backend"], b.python, "aarch64")
    b.ort = rset.pins["onnxruntime"]
    glibc = b.ssh("python3 -c 'import platform; print(platform.libc_ver()[1])'").stdout.strip()
    wheels = Path.home() / ".cache" / "edge-llm" / "arm64" / f"wheels-{rset.lock.stem}"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
                    *download_args(rset, glibc, str(wheels))], cwd=ROOT, check=True, capture_output=True)
    r = b.fab("setup", "--wheels", str(wheels))
    assert r.returncode == 0, r.stderr
    b.setup_output = r.stdout
    return b


def test_setup_installs_the_board_set_from_wheels_and_a_rerun_changes_nothing(board):
    rset = requirement_set(board.entry["backend"], board.python, "aarch64")
    name = board.entry["name"]
    assert (f"{name}: changed python deps  installed {rset.summary()} into {board.entry['path']}/venv from uploaded wheels"
            in board.setup_output.splitlines()
            or f"{name}: ok      python deps  {rset.summary()} already in {board.entry['path']}/venv/bin/python"
            in board.setup_output.splitlines()), board.setup_output
    r = board.fab("setup", "--wheels", str(Path.home() / ".cache/edge-llm/arm64" / f"wheels-{rset.lock.stem}"))
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == f"{name}: setup done, nothing to change", r.stdout
    doctor = board.fab("doctor", "--json")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    checks = {c["name"]: c for c in json.loads(doctor.stdout.splitlines()[-1])["checks"]}
    assert checks["arch"]["detail"] == "aarch64"
    assert checks["packages"]["verdict"] == "ok" and checks["packages"]["detail"].startswith(
        f"board/locks/{rset.lock.name} for aarch64: {rset.summary()}")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """build(name, model, tokenizer, quant, dialect, target, kv_len, onnxruntime) -> bundle dir, built once a module."""
    root, built = tmp_path_factory.mktemp("arm64-bundles"), {}

    def build(name: str, model: Path, tokenizer: Path | None, quant: str, dialect: str | None, target: str = "ort",
              kv_len: int = 256, onnxruntime: str | None = None) -> Path:
        out = root / f"{name}-{onnxruntime or 'newest'}"
        if out not in built:
            args = [sys.executable, "-m", "host", "build", "--model", str(model), "--calib", str(need(TINYSTORIES_TEXT)),
                    "--quant", quant, "--kv-len", str(kv_len), "--target", target, "--out", str(out)]
            args += ["--tokenizer", str(tokenizer)] if tokenizer else []
            args += ["--dialect", dialect] if dialect else []
            args += ["--onnxruntime", onnxruntime] if onnxruntime else []
            r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr[-2000:]
            built[out] = out
        return built[out]
    return build


def _x86(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "board", *map(str, args)], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize("kind", ["fp32", "u8u8"])
def test_stories_greedy_text_equals_x86(board, bundles, kind):
    quant, dialect = ("none", None) if kind == "fp32" else ("w8a8", kind)
    bundle = bundles(f"stories-{kind}", need(STORIES_BIN), need(STORIES_TOK), quant, dialect, onnxruntime=board.ort)
    r = board.fab("deploy", "--bundle", str(bundle))
    assert r.returncode == 0, r.stderr
    r = board.fab("generate", "--prompt", "Once upon a time", "--max-new-tokens", "48", "--greedy")
    local = _x86("generate", "--bundle", bundle, "--prompt", "Once upon a time", "--max-new-tokens", 48, "--greedy")
    assert r.returncode == 0 and local.returncode == 0, r.stderr + local.stderr
    assert r.stdout == local.stdout and len(r.stdout) > 100


def test_a_bundle_for_a_newer_onnxruntime_is_refused_before_upload(board, bundles):
    newest = bundles("stories-nbits8", need(STORIES_BIN), need(STORIES_TOK), "w8a8", "nbits8")  # needs onnxruntime 1.22
    if version_tuple(board.ort) >= version_tuple("1.22.0"):
        pytest.skip(f"onnxruntime {board.ort} on {board.suite} runs the nbits8 graph")
    before = board.ssh(f"readlink {board.entry['path']}/current").stdout
    r = board.fab("deploy", "--bundle", str(newest))
    py = board.ssh("python3 -c 'import platform; print(platform.python_version())'").stdout.strip()
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        f"{board.entry['name']}: the bundle's graph needs onnxruntime >= 1.22.0 (for com.microsoft.MatMulNBits(bits=8)), "
        f"the board has onnxruntime {board.ort} on Python {py}; nothing uploaded, current unchanged; upgrade "
        f"onnxruntime to 1.22.0 (needs Python >= 3.10), or rebuild with `python -m host build ... --dialect u8u8 "
        f"--onnxruntime {board.ort}`"], r.stderr
    assert board.ssh(f"readlink {board.entry['path']}/current").stdout == before


# SmolLM2 in each dialect a board runs: the onnxruntime graphs and the Ascend graph on onnxruntime's CPU.
SMOLLM2 = {"u8u8": ("w8a8", "u8u8", "ort"), "nbits8": ("w8a8", "nbits8", "ort"), "ascend": ("w8a8", None, "ascend")}
# Perplexity aarch64 / x86. The integer graphs compute the same way on both. The Ascend graph is fp16:
# onnxruntime on an aarch64 CPU with fp16 runs its fp16 ops in fp16 arithmetic where x86 computes them in
# fp32, which measured 1.0108 (bullseye) and 1.0135 (bookworm) on 2026-12-03; its greedy answer still matches.
PPL_TOLERANCE = {"u8u8": 0.01, "nbits8": 0.01, "ascend": 0.02}


@pytest.mark.parametrize("dialect", list(SMOLLM2))
def test_smollm2_chat_answer_and_perplexity_match_x86(board, bundles, smollm2, dialect):
    quant, graph_dialect, target = SMOLLM2[dialect]
    if dialect == "nbits8" and version_tuple(board.ort) < version_tuple("1.22.0"):
        pytest.skip(f"onnxruntime {board.ort} on {board.suite} cannot run nbits8 (the refusal is tested above)")
    bundle = bundles(f"smollm2-{dialect}", smollm2.hf_dir, None, quant, graph_dialect, target, PPL_CTX, board.ort)
    r = board.fab("deploy", "--bundle", str(bundle))
    assert r.returncode == 0, r.stderr
    chat = ["generate", "--chat", "--greedy", "--prompt", QUESTION, "--max-new-tokens", 32, "--json"]
    on_board = board.board_cli(*chat, "--bundle", ".")
    local = _x86(*chat, "--bundle", bundle)
    assert on_board.returncode == 0 and local.returncode == 0, on_board.stderr + local.stderr
    board_ids, x86_ids = json.loads(on_board.stdout)["tokens"], json.loads(local.stdout)["tokens"]
    assert board_ids == x86_ids and "Paris" in json.loads(local.stdout)["text"]
    text = need(WIKITEXT)
    remote_text = f"{board.entry['path']}/wikitext.txt"
    r = subprocess.run(["scp", "-q", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={board.entry['known_hosts']}",
                        "-i", board.entry["key"], "-P", str(board.entry["port"]), str(text),
                        f"{board.entry['user']}@{board.entry['host']}:{remote_text}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ppl = ["perplexity", "--max-tokens", PPL_TOKENS, "--ctx", PPL_CTX, "--json"]
    on_board = board.board_cli(*ppl, "--bundle", ".", "--text", remote_text)
    local = _x86(*ppl, "--bundle", bundle, "--text", text)
    assert on_board.returncode == 0 and local.returncode == 0, on_board.stderr + local.stderr
    arm, x86 = json.loads(on_board.stdout), json.loads(local.stdout)
    print(f"{board.suite} {dialect}: perplexity aarch64 {arm['perplexity']:.4f} x86 {x86['perplexity']:.4f} "
          f"ratio {arm['perplexity'] / x86['perplexity']:.4f}")
    assert arm["tokens"] == x86["tokens"] == PPL_TOKENS
    assert abs(arm["perplexity"] / x86["perplexity"] - 1) < PPL_TOLERANCE[dialect], (arm, x86)

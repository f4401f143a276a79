"""Wall time of `fab deploy` to 1, 2, 4 and 8 loopback boards, one after another (--parallel 1) and in parallel.

    python bench/fleet_deploy.py [--mb 64] [--boards 1,2,4,8]

One real sshd on 127.0.0.1 (tests/support/sshd.py), a board per install path, a synthetic bundle
of --mb MB of random weights; every run deploys to fresh install paths, so every byte is sent.
Prints one JSON line per board count: serial and parallel seconds, parallel against one board, and the
CPU seconds of the parallel run on the boards' side (sshd's sessions: decryption, writes, sha256, the
board's check) and in fab: on loopback every board shares this machine's CPUs, real boards bring their own.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support.sshd starts the sshd and runs fab


def children_cpu(pid: int) -> float:
    """CPU seconds of a process's waited-for children (sshd: its finished sessions)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # cutime + cstime


def own_children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def deploy_seconds(server, work: Path, bundle: Path, boards: int, parallel: str) -> tuple[float, float, float]:
    """One `fab deploy` to `boards` fresh install paths: (wall seconds, boards' CPU seconds, fab's CPU seconds)."""
    from tests.support.sshd import fab, write_inventory

    run = Path(tempfile.mkdtemp(dir=work))
    inventory = write_inventory(run / "inv.yml", *(server.board(run / f"b{i}", name=f"b{i}") for i in range(boards)))
    board_cpu, fab_cpu, start = children_cpu(server.proc.pid), own_children_cpu(), time.perf_counter()
    r = fab(inventory, "deploy", "--bundle", str(bundle), "--parallel", parallel, timeout=1800)
    seconds = time.perf_counter() - start
    board_cpu, fab_cpu = children_cpu(server.proc.pid) - board_cpu, own_children_cpu() - fab_cpu
    if r.returncode:
        raise SystemExit(f"deploy failed: {r.stderr}")
    shutil.rmtree(run)
    return seconds, board_cpu, fab_cpu


def main() -> None:
    parser = argparse.ArgumentParser(prog="python bench/fleet_deploy.py")
    parser.add_argument("--mb", type=int, default=64, help="bundle weights in MB")
    parser.add_argument("--boards", default="1,2,4,8", help="board counts")
    args = parser.parse_args()
    from tests.support.sshd import start_sshd, synthetic_bundle

    work = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    server = start_sshd(work / "sshd")
    try:
        bundle = synthetic_bundle(work / "bundle", weights=os.urandom(args.mb << 20))
        one = None
        for n in (int(x) for x in args.boards.split(",")):
            serial, _, _ = deploy_seconds(server, work, bundle, n, "1")
            parallel, board_cpu, fab_cpu = deploy_seconds(server, work, bundle, n, str(n))
            one = one or parallel
            print(json.dumps({"boards": n, "mb": args.mb, "serial_s": round(serial, 2), "parallel_s": round(parallel, 2),
                              "parallel_vs_one_board": round(parallel / one, 2), "boards_cpu_s": round(board_cpu, 2),
                              "fab_cpu_s": round(fab_cpu, 2), "cpus": os.cpu_count()}), flush=True)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Wall time of `fab deploy` to 1, 2, 4 and 8 loopback boards, one after another (--parallel 1) and in parallel.

    python bench/fleet_deploy.py [--mb 64] [--boards 1,2,4,8]

One real sshd on 127.0.0.1 (tests/support/sshd.py), a board per install path, a synthetic bundle
of --mb MB of random weights; every run deploys to fresh install paths, so every byte is sent.
Prints one JSON line per board count: serial and parallel seconds, and parallel against one board.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support.sshd starts the sshd and runs fab


def deploy_seconds(server, work: Path, bundle: Path, boards: int, parallel: str) -> float:
    """One `fab deploy` to `boards` fresh install paths; its wall time."""
    from tests.support.sshd import fab, write_inventory

    run = Path(tempfile.mkdtemp(dir=work))
    inventory = write_inventory(run / "inv.yml", *(server.board(run / f"b{i}", name=f"b{i}") for i in range(boards)))
    start = time.perf_counter()
    r = fab(inventory, "deploy", "--bundle", str(bundle), "--parallel", parallel, timeout=1800)
    seconds = time.perf_counter() - start
    if r.returncode:
        raise SystemExit(f"deploy failed: {r.stderr}")
    shutil.rmtree(run)
    return seconds


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
            serial = deploy_seconds(server, work, bundle, n, "1")
            parallel = deploy_seconds(server, work, bundle, n, str(n))
            one = one or parallel
            print(json.dumps({"boards": n, "mb": args.mb, "serial_s": round(serial, 2), "parallel_s": round(parallel, 2),
                              "parallel_vs_one_board": round(parallel / one, 2), "cpus": os.cpu_count()}), flush=True)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""`python -m host build|compile ...`: the workstation CLI. Argparse lives here only."""
from __future__ import annotations

import argparse
import sys

from host.errors import BuildError, InputError


# --- build (owner: host pipeline) -------------------------------------------------------
def _add_build(sub) -> None:
    p = sub.add_parser("build", help="load, calibrate, quantize, export, verify and bundle a model")
    p.set_defaults(func=_run_build)


def _run_build(args) -> int:
    raise NotImplementedError


# --- compile (owner: Ascend compile step) ------------------------------------------------
def _add_compile(sub) -> None:
    p = sub.add_parser("compile", help="compile a bundle's ONNX to an Ascend .om with ATC")
    p.set_defaults(func=_run_compile)


def _run_compile(args) -> int:
    raise NotImplementedError


# --- entry ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m host", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_build(sub)
    _add_compile(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (InputError, BuildError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the previous bundle (if any) is untouched", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

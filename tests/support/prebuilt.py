"""The session's fixture bundles, built here or read from a folder that a torch venv built beforehand.

A board's Python (3.9, 3.10) has no torch, so it cannot run the host pipeline that the fixtures use.
`python -m tests.support.prebuilt DIR [--onnxruntime VERSION]` (in the project venv) builds every fixture
bundle into DIR, for the board's onnxruntime; a test run with EDGE_LLM_TEST_BUNDLES=DIR then reads them
instead of building (scripts/test-board-python.sh does both). Prebuilt bundles are shared by runs: copy
one before changing it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

import pytest

from tests.support.paths import STORIES_BIN, STORIES_TOK, TINYSTORIES_TEXT

ENV = "EDGE_LLM_TEST_BUNDLES"


Builder = Callable[..., Path]  # (out_dir, **BuildConfig options) -> bundle dir


def _tiny(**fixed) -> Builder:
    def build(out: Path, **options) -> Path:
        from tests.support.bundles import build_test_bundle

        return build_test_bundle(out, **fixed, **options)
    return build


def _stories(quant: str) -> Builder:
    def build(out: Path, **options) -> Path:
        from host.build import BuildConfig, build as host_build

        return host_build(BuildConfig(model=str(STORIES_BIN), tokenizer=str(STORIES_TOK), calib=TINYSTORIES_TEXT,
                                      quant=quant, kv_len=256, out=out, **options)).path
    return build


def _slow(out: Path, **options) -> Path:
    from tests.support.serve import build_slow_bundle

    return build_slow_bundle(out, **options)


# name -> builder; what each bundle is, is said by the fixture that uses it (tests/conftest.py).
BUILDERS: dict[str, Builder] = {
    "tiny": _tiny(quant="none"),
    "tiny-w8a8": _tiny(quant="w8a8"),
    "tiny-ascend": _tiny(quant="none", target="ascend"),
    "tiny-fp16": _tiny(quant="none", dtype="fp16"),
    "stories-none": _stories("none"),
    "stories-w8a8": _stories("w8a8"),
    "slow": _slow,
}
NEEDS_SHARED = {"stories-none": STORIES_BIN, "stories-w8a8": STORIES_BIN}


def fixture_bundle(name: str, tmp_path_factory) -> Path:
    """The bundle `name`: from $EDGE_LLM_TEST_BUNDLES when set, else built now into a session temp folder."""
    need = NEEDS_SHARED.get(name)
    if need is not None and not need.exists():
        pytest.skip(f"{need} is absent (../shared is not beside this checkout)")
    root = os.environ.get(ENV)
    if root:
        path = Path(root) / name
        if not (path / "manifest.json").is_file():
            pytest.fail(f"{path}: no prebuilt bundle; build them with `.venv/bin/python -m tests.support.prebuilt {root}`")
        return path
    return BUILDERS[name](tmp_path_factory.mktemp("bundles") / name)


def main(argv: list[str]) -> int:
    """Build every fixture bundle into DIR, replacing what is there."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.prebuilt")
    parser.add_argument("dir", type=Path)
    parser.add_argument("--onnxruntime", help="the oldest onnxruntime the bundles must run on (host --onnxruntime)")
    args = parser.parse_args(argv)
    root, options = args.dir, {"onnxruntime": args.onnxruntime} if args.onnxruntime else {}
    for name, build in BUILDERS.items():
        need = NEEDS_SHARED.get(name)
        if need is not None and not need.exists():
            print(f"prebuilt: {name} skipped ({need} is absent)", file=sys.stderr)
            continue
        tmp = root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        build(tmp, **options)
        shutil.rmtree(root / name, ignore_errors=True)
        tmp.rename(root / name)
        print(f"prebuilt: {root / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

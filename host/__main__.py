"""`python -m host build|compile ...`: the workstation CLI. Argparse lives here only."""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from contextlib import contextmanager

from host.errors import BuildError, InputError


@contextmanager
def sigint_deferred():
    """Hold a Ctrl-C until the block ends: one landing inside a C extension's import surfaces as a bogus ImportError."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


# --- build (owner: host pipeline) -------------------------------------------------------
def _add_build(sub) -> None:
    from board.manifest import ACT_SCHEMES, QUANT_SCHEMES
    from board.manifest import DIALECTS
    from host.buildconfig import KV_DTYPES, TARGETS

    p = sub.add_parser("build", help="load, calibrate, quantize, export, verify and bundle a model")
    p.add_argument("--model", required=True, help="HF checkpoint directory, hub id, or llama2.c .bin checkpoint")
    p.add_argument("--tokenizer", help="tokenizer.json, SentencePiece tokenizer.model or llama2.c tok*.bin (default: beside the model)")
    p.add_argument("--calib", required=True, help="plain-text file: calibration samples from its start, perplexity on its tail")
    p.add_argument("--quant", required=True, choices=QUANT_SCHEMES, help="none: fp32 graph; w8a8: int8 weights and activations")
    p.add_argument("--smooth", default="auto", metavar="auto|off|ALPHA",
                   help="SmoothQuant: auto (default) searches alpha per layer and group; off; or one alpha, e.g. 0.5")
    p.add_argument("--act-scheme", choices=ACT_SCHEMES, default="dynamic",
                   help="activation scales per token at run time (default) or per tensor from calibration")
    p.add_argument("--kv-len", type=int, default=256, help="fixed number of KV cache slots (default 256)")
    p.add_argument("--prefill-chunks", default="1,16,64", help="comma-separated prefill chunk lengths (default 1,16,64)")
    p.add_argument("--dtype", choices=KV_DTYPES, help="KV cache dtype (default: the compute dtype, fp16 for --target ascend)")
    p.add_argument("--target", choices=tuple(TARGETS), default="ort",
                   help="ort: onnxruntime CPU; ascend: the NPU (a graph ATC parses)")
    p.add_argument("--dialect", choices=DIALECTS,
                   help="W8A8 integer layout. ort: nbits8 (default: MatMulNBits, activations per block) or u8u8 "
                        "(MatMulInteger, per token; the default with --act-scheme static): ~2x faster prefill on x86 "
                        "without VNNI, lower quality; ascend: s8s8")
    p.add_argument("--compute", choices=KV_DTYPES,
                   help="dtype of activations, norms and attention (default: fp16 for --target ascend, else fp32); "
                        "integer matmuls are the same either way")
    p.add_argument("--opset", type=int,
                   help="ai.onnx opset (default: 11, the lowest that expresses the graph, for --target ascend; 17 for ort)")
    p.add_argument("--onnxruntime", metavar="VERSION",
                   help="the board's onnxruntime, e.g. 1.19.2: use only operators it runs (below 1.22: the u8u8 "
                        "dialect and the slots cache; board/ortneeds.py); default: the newest graph")
    p.add_argument("--calib-samples", type=int, default=16, help="calibration chunks (default 16)")
    p.add_argument("--calib-seq-len", type=int, default=128, help="tokens per calibration/perplexity chunk (default 128)")
    p.add_argument("--eval-tokens", type=int, default=512, help="held-out tokens for perplexity (default 512)")
    p.add_argument("--chat-template", help="zephyr, llama2, chatml or none: a built-in template (board/chat_templates/) "
                   "instead of the model's own (default: the model's, else the built-in one of its family)")
    p.add_argument("--name", help="model name in the manifest (default: the checkpoint's name)")
    p.add_argument("--out", required=True, help="bundle directory to (re)write; replaced only when the build succeeds")
    p.set_defaults(func=_run_build)


def _smooth_option(value: str):
    """--smooth: "auto", "off" or a float alpha (range checked by BuildConfig)."""
    from host.buildconfig import SMOOTH_MODES

    if value in SMOOTH_MODES:
        return value
    try:
        return float(value)
    except ValueError:
        raise InputError(f"--smooth {value!r}: give auto, off or an alpha in [0, 1], e.g. 0.5") from None


def _run_build(args) -> int:
    import json

    with sigint_deferred():  # torch, onnx and onnxruntime load here
        from host.build import BuildConfig, build

    try:
        chunks = [int(c) for c in args.prefill_chunks.split(",") if c.strip()]
    except ValueError:
        raise InputError(f"--prefill-chunks {args.prefill_chunks!r}: give comma-separated integers, e.g. 1,16,64") from None
    config = BuildConfig(
        model=args.model, out=args.out, calib=args.calib, tokenizer=args.tokenizer, quant=args.quant,
        smooth=_smooth_option(args.smooth), act_scheme=args.act_scheme, kv_len=args.kv_len, prefill_chunks=chunks,
        dtype=args.dtype, target=args.target, dialect=args.dialect, compute=args.compute, opset=args.opset, calib_samples=args.calib_samples, calib_seq_len=args.calib_seq_len,
        eval_tokens=args.eval_tokens, chat_template=args.chat_template, name=args.name, onnxruntime=args.onnxruntime,
    )
    result = build(config)
    print(json.dumps(result.report.summary(result.path, result.manifest)))
    return 0


# --- compile (owner: Ascend compile step) ------------------------------------------------
def _add_compile(sub) -> None:
    from board.ascend import soc_hint
    from host.ascend.atc import DEFAULT_IMPL_MODE, DEFAULT_PRECISION, IMPL_MODES, PRECISION_MODES
    from host.ascend.quantop import DEFAULT_INT8_OP, INT8_OPS
    from host.ascend.runners import DEFAULT_IMAGE, RUNNERS

    p = sub.add_parser("compile", help="compile a bundle's ONNX to an Ascend .om with ATC")
    p.add_argument("--bundle", required=True, help="bundle directory (from `python -m host build --target ascend`)")
    p.add_argument("--soc", required=True, help=f"ATC soc_version or board model; {soc_hint()}")
    p.add_argument("--runner", choices=RUNNERS, default="auto",
                   help="where ATC runs: local atc, the CANN Docker image, or the board (auto: first available)")
    p.add_argument("--board", help="inventory board name, for --runner board")
    p.add_argument("--precision-mode", choices=PRECISION_MODES, default=DEFAULT_PRECISION,
                   help="ATC --precision_mode_v2 (default: origin: the graph's own dtypes, fp16 compute in an "
                        "Ascend bundle; fp16/mixed_float16 would also narrow the int32 rescale of the integer matmuls)")
    p.add_argument("--impl-mode", choices=IMPL_MODES, default=DEFAULT_IMPL_MODE,
                   help="ATC --op_select_implmode: the high-precision fp16 kernels where an op has two (default), "
                        "the faster ones, or none (no flag, for a CANN release without it)")
    p.add_argument("--image", default=DEFAULT_IMAGE, help="CANN image tag for --runner docker")
    p.add_argument("--int8-op", choices=INT8_OPS, default=DEFAULT_INT8_OP,
                   help="what quantizes activations in the graph ATC reads: AscendQuant(scale=1, offset=0) in "
                        "place of each Cast(to int8) after Round+Clip (the same numbers), or the Cast; auto: "
                        "AscendQuant where the graph's opset is one ATC parses it at (8-16)")
    p.add_argument("--dry-run", action="store_true", help="check ops and print the ATC command; run nothing")
    p.add_argument("--check-only", action="store_true", help="only list the graph's ops against ATC's support")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.set_defaults(func=_run_compile)


def _run_compile(args) -> int:
    import json
    import tempfile
    from dataclasses import replace
    from pathlib import Path

    from host.ascend.compile import (CompileConfig, command_for, compile_bundle, int8_line, ort_hint, prepare,
                                     rebuild_for_ascend)

    config = CompileConfig(bundle=Path(args.bundle), soc=args.soc, runner=args.runner,
                           precision_mode=args.precision_mode, image=args.image, board=args.board, int8_op=args.int8_op,
                           impl_mode=args.impl_mode)
    if args.check_only or args.dry_run:
        with tempfile.TemporaryDirectory(prefix="edge-llm-atc-") as tmp:
            prepared = prepare(config, Path(tmp))
        report = prepared.report
        rebuild = rebuild_for_ascend(config, prepared.manifest, report)
        result = {"opcheck": report.to_dict(), "int8": prepared.int8.to_dict(), "rebuild": rebuild}
        if args.dry_run:
            # the bundle's path, not the scratch copy (gone by now): int8_line says what ATC's copy changes
            command = command_for(config, replace(prepared, graph_dir=Path(config.bundle)), None,
                                  Path(config.bundle).resolve())
            result.update(command.to_dict())
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(report.summary())
            print(f"# {int8_line(prepared.int8)}")
            print(report.verdict())
            if rebuild:
                print(ort_hint(rebuild))
            if args.dry_run:
                print(command.summary())
                print(result["command"])
        return 0 if report.ok else 1
    result = compile_bundle(config)
    print(json.dumps(result, indent=2) if args.json else f"{result['bundle']}/{result['om']}: "
          f"{result['size']} bytes, sha256 {result['sha256'][:12]}..., soc {result['soc']} ({result['runner']})")
    return 0


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

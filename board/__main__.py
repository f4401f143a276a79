"""`python -m board chat|generate|perplexity|bench|serve|verify|info`: the board CLI. Argparse lives here only."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from board.backends import BACKENDS
from board.bundle import Bundle, open_bundle
from board.engine import DEFAULT_SINK, Engine
from board.errors import BoardError
from board.generate import GenerateConfig
from board.manifest import BundleError, load_manifest
from board.sampling import SamplingConfig, model_defaults


# --- shared options and setup ------------------------------------------------------------
def _add_bundle(p, runtime: bool = True) -> None:
    p.add_argument("--bundle", required=True, type=Path, help="bundle directory (holds manifest.json)")
    if runtime:
        p.add_argument("--backend", default="auto", choices=BACKENDS,
                       help="auto: acl when the bundle has model.om and pyACL imports, else onnxruntime")
        p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all cores)")
        p.add_argument("--no-spin", action="store_true",
                       help="onnxruntime threads sleep between ops (better when other processes share the cores)")
        p.add_argument("--device", type=int, default=0, help="Ascend device id (acl backend)")
        p.add_argument("--sink", type=int, default=DEFAULT_SINK, help="first tokens never evicted from the KV cache")
        p.add_argument("--no-verify", action="store_true", help="skip the sha256 pass over the bundle's files")


def _add_sampling(p, max_new_tokens: int) -> None:
    builtin = SamplingConfig()
    model = "default: the model's generation_config.json, else"
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--greedy", action="store_true", help="always take the most likely token (temperature 0)")
    p.add_argument("--temperature", type=float, default=None, help=f"{model} {builtin.temperature}")
    p.add_argument("--top-k", type=int, default=None, help=f"0 = off ({model} {builtin.top_k})")
    p.add_argument("--top-p", type=float, default=None, help=f"1.0 = off ({model} {builtin.top_p})")
    p.add_argument("--repetition-penalty", type=float, default=None, help=f"1.0 = off ({model} {builtin.repetition_penalty})")
    p.add_argument("--seed", type=int, default=0)


def _generate_config(args, bundle: Bundle) -> GenerateConfig:
    """The options given, over the model's sampling defaults (board.sampling.model_defaults)."""
    given = {"temperature": 0.0 if args.greedy else args.temperature, "top_k": args.top_k, "top_p": args.top_p,
             "repetition_penalty": args.repetition_penalty}
    try:
        sampling = replace(model_defaults(bundle.manifest.sampling), **{k: v for k, v in given.items() if v is not None})
        return GenerateConfig(args.max_new_tokens, sampling, tuple(bundle.manifest.tokens.stop_strings))
    except ValueError as e:  # the configs name the bad value; here it becomes a bad option
        raise BoardError(f"{e}; fix the option (see --help)") from None


def _text(arg: str) -> str:
    """A command-line string as text: bytes that were not UTF-8 become U+FFFD instead of a crash later."""
    return arg.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _engine(args, bundle: Bundle):
    from board.backends import open_backend

    backend = open_backend(bundle, args.backend, threads=args.threads, device_id=args.device, spin=not args.no_spin)
    return backend, Engine(backend, bundle.manifest.arch, bundle.manifest.graph, sink=args.sink)


def _emit(data: dict) -> None:
    print(json.dumps(data, ensure_ascii=False))


# --- chat ----------------------------------------------------------------------------------
def _run_chat(args) -> int:
    from board.chat import ChatSession, run_repl

    bundle = open_bundle(args.bundle, verify=not args.no_verify)
    cfg = _generate_config(args, bundle)
    backend, engine = _engine(args, bundle)
    with backend:
        session = ChatSession(engine, bundle.tokenizer, bundle.manifest.chat_template, cfg,
                              np.random.default_rng(args.seed), system=_text(args.system or ""))
        sys.stdin.reconfigure(errors="replace")  # a non-UTF-8 line is read with U+FFFD, not a crash
        return run_repl(session)


# --- generate ------------------------------------------------------------------------------
def _run_generate(args) -> int:
    from board.chat_template import chat_ids
    from board.generate import finish_mark, generate

    bundle = open_bundle(args.bundle, verify=not args.no_verify)
    cfg = _generate_config(args, bundle)
    tok, template = bundle.tokenizer, bundle.manifest.chat_template
    prompt = _text(args.prompt)
    # auto (what `fab generate` asks for): a chat model answers a question; a plain LM continues the text
    chat = args.chat == "yes" or (args.chat == "auto" and (template.source != "builtin" or template.name != "none"))
    if chat:
        system = [{"role": "system", "content": _text(args.system)}] if args.system else []
        ids = chat_ids(tok, template, system + [{"role": "user", "content": prompt}])
    else:
        ids = tok.encode(prompt, bos=True)
    backend, engine = _engine(args, bundle)
    with backend:
        stream = None if args.json else (lambda piece: print(piece, end="", flush=True))
        result = generate(engine, tok, ids, cfg, np.random.default_rng(args.seed), on_text=stream)
    if args.json:
        _emit({**result.to_json(), "backend": backend.name})
    else:
        print(finish_mark(result.finish_reason))
        if result.finish_reason == "context":
            print(f"[stopped: the model's position limit of {engine.max_positions} tokens is reached]", file=sys.stderr)
    return 0


# --- perplexity ------------------------------------------------------------------------------
def _run_perplexity(args) -> int:
    from board.perplexity import perplexity, streaming_perplexity

    if args.max_tokens is not None and args.max_tokens < 2:
        raise BoardError(f"--max-tokens {args.max_tokens}: give at least 2 (or leave it out for the whole text)")
    bundle = open_bundle(args.bundle, verify=not args.no_verify)
    try:
        text = args.text.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BoardError(f"{args.text}: cannot read the text file ({e}); pass a UTF-8 text file") from None
    backend, engine = _engine(args, bundle)
    with backend:
        if args.stream:
            result = streaming_perplexity(engine, bundle.tokenizer, text, args.max_tokens)
        else:
            result = perplexity(engine, bundle.tokenizer, text, args.max_tokens, args.ctx, _window_progress)
    if args.json:
        _emit({**result, "backend": backend.name})
    else:
        where = "streamed with eviction" if args.stream else f"{result['windows']} windows of {result['ctx']}"
        print(f"perplexity {result['perplexity']:.4f} over {result['tokens']} tokens ({where})")
    return 0


def _window_progress(done: int, total: int) -> None:
    print(f"\rperplexity: window {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)


# --- bench -----------------------------------------------------------------------------------
def _run_bench(args) -> int:
    from board.bench import bench

    bundle = open_bundle(args.bundle, verify=not args.no_verify)
    backend, engine = _engine(args, bundle)
    with backend:
        result = bench(engine, bundle.manifest.arch.vocab_size, args.prompt_tokens, args.new_tokens, args.repeats)
    m = bundle.manifest
    graph_files = [m.graph.om] if backend.name == "acl" else [m.graph.onnx, m.graph.onnx + ".data"]
    weights = sum(m.files[name].size for name in graph_files if name in m.files)
    result.update(model=m.model.get("name"), quantization=m.quantization.scheme, threads=args.threads,
                  spin=not args.no_spin, weights_mb=weights / 2**20)
    if args.json:
        _emit(result)
    else:
        print(f"time to first token {result['ttft_ms']:.1f} ms ({result['prompt_tokens']} tokens, "
              f"prefill {result['prefill_tok_s']:.1f} tok/s), decode {result['decode_tok_s_median']:.1f} tok/s "
              f"(median of {result['new_tokens']} steps), peak RSS {result['peak_rss_mb']:.0f} MB ({result['backend']})")
    return 0


# --- serve -----------------------------------------------------------------------------------
def _run_serve(args) -> int:
    from board.serve import serve
    from board.serve.config import ServeConfig, read_api_key

    key = read_api_key(args.api_key_file) if args.api_key_file else args.api_key
    return serve(ServeConfig(bundle=args.bundle, host=args.host, port=args.port, api_key=key, queue_size=args.queue_size,
                             max_tokens=args.max_tokens, model_id=args.model_id, backend=args.backend,
                             threads=args.threads, spin=not args.no_spin, device=args.device, sink=args.sink,
                             verify=not args.no_verify))


# --- verify / info ---------------------------------------------------------------------------
def _run_verify(args) -> int:
    try:
        manifest = load_manifest(args.bundle, verify=True)
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"ok: {args.bundle} ({len(manifest.files)} files match their sha256)")
    return _check_onnxruntime(args.bundle, manifest) or _check_om_cann(manifest)


def _check_onnxruntime(bundle: Path, manifest) -> int:
    """The graph's onnxruntime requirement against this machine's onnxruntime (board/ortneeds.py), when both are known."""
    from board.ortneeds import installed_onnxruntime, onnxruntime_shortfall

    graph, installed = manifest.graph, installed_onnxruntime()
    if graph.min_onnxruntime is None or installed is None:
        return 0
    shortfall = onnxruntime_shortfall(graph.min_onnxruntime, graph.onnxruntime_ops, installed, sys.version_info)
    if shortfall:
        print(f"error: {bundle / graph.onnx}: {shortfall}", file=sys.stderr)
        return 1
    print(f"ok: onnxruntime {installed} runs the graph (needs >= {graph.min_onnxruntime})")
    return 0


def _check_om_cann(manifest) -> int:
    """An .om loads on the CANN it was built with or a newer one: compare with this machine's toolkit."""
    from board.ascend import cann_mismatch, toolkit_version

    if not manifest.graph.om or not manifest.graph.om_cann:
        return 0
    board_cann = toolkit_version()["version"]
    problem = cann_mismatch(manifest.graph.om_cann, board_cann)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    print(f"ok: model.om built with CANN {manifest.graph.om_cann}; this machine has "
          f"{'CANN ' + board_cann if board_cann else 'no CANN toolkit (the onnxruntime backend still works)'}")
    return 0


def _run_info(args) -> int:
    m = load_manifest(args.bundle, verify=False)
    info = {
        "model": m.model,
        "format_version": m.format_version,
        "quantization": m.quantization.scheme,
        "dialect": m.quantization.dialect,
        "kv_len": m.graph.kv_len,
        "kv_dtype": m.graph.kv_dtype,
        "prefill_chunks": m.graph.prefill_chunks,
        "chat_template": m.chat_template.name,
        "chat_template_source": m.chat_template.source,
        "sampling": {k: v for k, v in asdict(m.sampling).items() if v is not None},  # the model's; the rest built in
        "has_om": bool(m.graph.om),
        "files": {name: e.size for name, e in m.files.items()},
    }
    if args.json:
        _emit(info)
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return 0


# --- entry -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m board", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("chat", help="interactive chat with the bundle's chat template")
    _add_bundle(p)
    _add_sampling(p, max_new_tokens=256)
    p.add_argument("--system", default=None, help="system prompt (default: the template's)")
    p.set_defaults(func=_run_chat)

    p = sub.add_parser("generate", help="complete a prompt (raw, or as one chat turn with --chat)")
    _add_bundle(p)
    _add_sampling(p, max_new_tokens=64)
    p.add_argument("--prompt", required=True)
    p.add_argument("--chat", nargs="?", const="yes", default="no", choices=["yes", "no", "auto"],
                   help="wrap the prompt in the chat template (auto: when the bundle has one)")
    p.add_argument("--system", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_generate)

    p = sub.add_parser("perplexity", help="perplexity of a text file")
    _add_bundle(p)
    p.add_argument("--text", required=True, type=Path)
    p.add_argument("--max-tokens", type=int, default=None, help="score the first N text tokens (default: all)")
    p.add_argument("--ctx", type=int, default=None,
                   help="positions per window, BOS + ctx-1 text tokens (default: the bundle's KV length)")
    p.add_argument("--stream", action="store_true",
                   help="one pass through the KV cache with eviction instead of windows (as chat runs)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_perplexity)

    p = sub.add_parser("bench", help="prefill/decode tokens per second and peak memory")
    _add_bundle(p)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="prefill runs (median reported)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_bench)

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP API and web chat page (needs board/requirements-serve.txt)")
    _add_bundle(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface; set a key)")
    p.add_argument("--port", type=int, default=8080)
    key = p.add_mutually_exclusive_group()
    key.add_argument("--api-key", default=None, help="clients must send 'Authorization: Bearer KEY'")
    key.add_argument("--api-key-file", type=Path, default=None, help="the key, read from the file's first line")
    p.add_argument("--queue-size", type=int, default=8, help="requests that may wait for the engine (more: 429)")
    p.add_argument("--max-tokens", type=int, default=256, help="answer length when a request does not say")
    p.add_argument("--model-id", default=None, help="model name in /v1/models (default: the manifest's)")
    p.set_defaults(func=_run_serve)

    p = sub.add_parser("verify", help="check the manifest and every file's sha256 (exit 0 ok, 1 bad)")
    _add_bundle(p, runtime=False)
    p.set_defaults(func=_run_verify)

    p = sub.add_parser("info", help="model, quantization, KV length and files of a bundle")
    _add_bundle(p, runtime=False)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (BundleError, BoardError) as e:  # only our own errors: a programming error keeps its traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""edge-llm against llama.cpp Q8_0 on the same weights: prefill and decode speed, side by side.

Converts the Hugging Face checkpoint MODEL_DIR to a GGUF Q8_0 with llama.cpp's own converter
(once; kept in --work), then times both alternately in one run: per round, edge-llm's bundle on the
board's runtime (board.engine, onnxruntime backend) and llama.cpp through llama-cpp-python, with the
same thread count, the same KV length (the bundle's), the same token ids: a P-token prompt in one
batch, then N single-token steps. Best of --rounds for each. Prints one JSON line.
llama-cpp-python is optional (`pip install '.[bench]'`, or `bash ../shared/peers/setup-llamacpp.sh`,
which builds it with native flags in /tmp/llcpp-venv and unpacks the converter into /tmp/llsrc).
Run: python bench/compare_llamacpp.py MODEL_DIR --bundle BUNDLE [--peer-python /tmp/llcpp-venv/bin/python]
     [--threads 2] [--prompt-tokens 64] [--new-tokens 32] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from board.backends.ort import OrtBackend
from board.bundle import open_bundle
from board.engine import Engine

HERE = Path(__file__).resolve().parent
TMP = Path(os.environ.get("TMPDIR", "/tmp"))
DEFAULT_CONVERTER = TMP / "llsrc/llama_cpp_python-0.3.36/vendor/llama.cpp/convert_hf_to_gguf.py"
SETUP_HINT = "bash ../shared/peers/setup-llamacpp.sh (or pip install '.[bench]')"


class PeerError(Exception):
    """The llama.cpp side cannot run; the message says how to get it."""


def token_ids(vocab_size: int, bos: int | None, prompt_tokens: int, new_tokens: int) -> tuple[list, list]:
    """The prompt (BOS, then random ids) and the decode ids both sides get (values do not change speed)."""
    top = min(vocab_size, 31000)
    rest = np.random.default_rng(0).integers(100, top, prompt_tokens - (bos is not None)).tolist()
    prompt = ([bos] if bos is not None else []) + rest
    decode, token = [], 100
    for _ in range(new_tokens):
        decode.append(token)
        token = (token * 7 + 13) % (top - 100) + 100
    return prompt, decode


def convert(model_dir: Path, peer_python: str, converter: Path, work: Path) -> Path:
    """MODEL_DIR as GGUF Q8_0 through llama.cpp's converter, made once per model directory."""
    gguf = work / f"{model_dir.resolve().name}.q8_0.gguf"
    if gguf.is_file():
        return gguf
    if not converter.is_file():
        raise PeerError(f"--converter {converter}: llama.cpp's convert_hf_to_gguf.py is not there; {SETUP_HINT}")
    work.mkdir(parents=True, exist_ok=True)
    print(f"compare: converting {model_dir} to {gguf} ...", file=sys.stderr, flush=True)
    part = gguf.with_suffix(".part")
    r = subprocess.run([peer_python, str(converter), str(model_dir), "--outtype", "q8_0", "--outfile", str(part)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise PeerError(f"convert_hf_to_gguf.py failed on {model_dir}: {last}")
    part.rename(gguf)
    return gguf


def check_peer(peer_python: str) -> None:
    """PeerError unless llama-cpp-python imports in the peer Python."""
    probe = subprocess.run([peer_python, "-c", "import llama_cpp"], capture_output=True)
    if probe.returncode != 0:
        raise PeerError(f"llama-cpp-python is not importable in --peer-python {peer_python}; {SETUP_HINT}, "
                        "then pass --peer-python /tmp/llcpp-venv/bin/python")


class Peer:
    """llama.cpp in a child process (the peer Python), loaded once and timed on request."""

    def __init__(self, peer_python: str, gguf: Path, threads: int, n_ctx: int):
        self.proc = subprocess.Popen([peer_python, str(HERE / "llamacpp_peer.py"), str(gguf), str(threads), str(n_ctx)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise PeerError(f"the llama.cpp peer exited with status {self.proc.wait()}")
        return json.loads(line)

    def run(self, prompt: list, decode: list) -> dict:
        self.proc.stdin.write(json.dumps({"prompt": prompt, "decode": decode}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def ours(engine: Engine, prompt: list, decode: list) -> dict:
    """The same protocol on the board's engine: the prompt (one chunk when the graph has that size), then the steps."""
    engine.reset()
    t0 = time.perf_counter()
    engine.feed(prompt)
    prefill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for token in decode:
        engine.feed([token])
    return {"prefill_s": prefill_s, "decode_s": time.perf_counter() - t0}


def best(runs: list, prompt_tokens: int, new_tokens: int) -> dict:
    """Best of the rounds: tokens per second of the fastest prefill and of the fastest decode."""
    return {"prefill_tok_s": round(prompt_tokens / min(r["prefill_s"] for r in runs), 2),
            "decode_tok_s": round(new_tokens / min(r["decode_s"] for r in runs), 2)}


def compare(args) -> dict:
    bundle = open_bundle(args.bundle)
    m = bundle.manifest
    config = json.loads((args.model_dir / "config.json").read_text())
    if (config.get("num_hidden_layers"), config.get("vocab_size")) != (m.arch.num_layers, m.arch.vocab_size):
        raise PeerError(f"--bundle {args.bundle} was not built from {args.model_dir} (layers/vocabulary differ); "
                        "build it with python -m host build --model MODEL_DIR")
    if args.prompt_tokens + args.new_tokens > m.graph.kv_len:
        raise PeerError(f"--prompt-tokens + --new-tokens exceed the bundle's kv_len {m.graph.kv_len}")
    check_peer(args.peer_python)
    prompt, decode = token_ids(m.arch.vocab_size, m.tokens.bos_id, args.prompt_tokens, args.new_tokens)
    gguf = convert(args.model_dir, args.peer_python, args.converter, args.work)
    backend = OrtBackend(bundle.file(m.graph.onnx), m.graph, m.arch.vocab_size, threads=args.threads)
    engine = Engine(backend, m.arch, m.graph)
    peer = Peer(args.peer_python, gguf, args.threads, m.graph.kv_len)
    runs = {"edge_llm": [], "llama_cpp": []}
    try:
        ours(engine, prompt, decode), peer.run(prompt, decode)  # warm-up: first runs allocate and plan
        for i in range(args.rounds):
            runs["edge_llm"].append(ours(engine, prompt, decode))
            runs["llama_cpp"].append(peer.run(prompt, decode))
            print(f"compare: round {i + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        peer.close()
    result = {name: best(r, len(prompt), len(decode)) for name, r in runs.items()}
    e, p = result["edge_llm"], result["llama_cpp"]
    return {"model": args.model_dir.resolve().name, "bundle": str(args.bundle), "gguf": str(gguf),
            "quantization": m.quantization.scheme, "threads": args.threads, "kv_len": m.graph.kv_len,
            "prompt_tokens": len(prompt), "new_tokens": len(decode), "rounds": args.rounds, **result,
            "decode_ratio": round(e["decode_tok_s"] / p["decode_tok_s"], 3),
            "prefill_ratio": round(e["prefill_tok_s"] / p["prefill_tok_s"], 3),
            "loadavg_1min": os.getloadavg()[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="the Hugging Face checkpoint directory the bundle was built from")
    parser.add_argument("--bundle", type=Path, required=True, help="its edge-llm bundle (python -m host build)")
    parser.add_argument("--peer-python", default=sys.executable, help="a Python with llama-cpp-python, gguf, torch")
    parser.add_argument("--converter", type=Path, default=DEFAULT_CONVERTER, help="llama.cpp's convert_hf_to_gguf.py")
    parser.add_argument("--work", type=Path, default=TMP / "edge-llm-compare", help="where the GGUF is kept")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not (args.model_dir / "config.json").is_file():
        print(f"compare_llamacpp: {args.model_dir}: no config.json; pass a Hugging Face checkpoint directory",
              file=sys.stderr)
        return 2
    try:
        print(json.dumps(compare(args)))
    except PeerError as e:
        print(f"compare_llamacpp: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

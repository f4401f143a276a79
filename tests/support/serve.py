"""The real server for the serve tests: `python -m board serve` in its own process on a free port.

`start_server(bundle, log, *options)` waits for /health to say 200 and returns a `Server` with its
URL, an `openai.OpenAI` client factory and a reader of /metrics; `stop()` ends it by its PID.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.support.paths import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, dict | str]:
    """(status, JSON body or text) of a plain request, errors included."""
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, body = r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read().decode()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def parse_metrics(text: str) -> dict:
    """{'name{labels}': value} of a Prometheus text exposition."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path
    api_key: str | None = None

    def client(self, **kw):
        import openai

        kw.setdefault("api_key", self.api_key or "unused")
        return openai.OpenAI(base_url=self.url + "/v1", max_retries=0, **kw)

    def metrics(self) -> dict:
        status, text = http(self.url + "/metrics")
        assert status == 200, text
        return parse_metrics(text)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_server(bundle: Path, log: Path, *options: str, api_key: str | None = None, ready: bool = True) -> Server:
    """Start the server; with ready, wait (up to 120 s) until /health answers 200."""
    port = free_port()
    cmd = [sys.executable, "-m", "board", "serve", "--bundle", str(bundle), "--port", str(port), *options]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", proc, log, api_key)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {log.read_text()}")
        try:
            status, _ = http(server.url + "/health")
            if status == 200 or (not ready and status == 503):
                return server
        except OSError:
            pass
        time.sleep(0.2)
    server.stop()
    raise AssertionError(f"server not healthy after 120 s: {log.read_text()}")


def build_slow_bundle(out: Path, **options) -> Path:
    """A random Llama big enough that decoding takes milliseconds per token (4 layers, hidden 512,
    ChatML, KV 256), so a test can act while an answer is still streaming. `options` go to BuildConfig."""
    import torch

    from host.build import BuildConfig, build_from_model
    from tests.support.bundles import make_model, make_tokenizer_bundle, sample_text

    config = BuildConfig(model="slow-random-llama", out=out, quant="none", kv_len=256, calib_samples=2,
                         calib_seq_len=16, eval_tokens=32, prefill_chunks=[1, 16], chat_template="chatml", **options)
    model = make_model(vocab=320, layers=4, hidden=512, heads=8, kv_heads=4, intermediate=1536,
                       max_position_embeddings=4096)
    tok = make_tokenizer_bundle(320, "chatml")
    # Sampled at temperature 1, near-uniform random logits would hit EOS or <|im_end|> every ~160 tokens,
    # ending an answer before a test acts on it. A large constant in embedding channel 0 dominates the
    # residual stream, so the final norm's channel 0 is ~sqrt(hidden) > 0 for every token: lm_head reads
    # it only in the stop rows, with weight -1, which puts their logits ~22 below the rest.
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 10.0
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[[tok.eos_id, *tok.chat.stop_ids], 0] = -1.0
    info = {"name": "slow-random-llama", "source": "tests/support/serve.py (random weights)"}
    return build_from_model(model, tok, sample_text(), config, info).path

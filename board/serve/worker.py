"""The one engine behind the server: a bounded FIFO of requests served by a single thread.

Requests wait in a `queue.Queue` (full -> the caller answers 429). The engine thread loads the
bundle, then takes one job at a time, reuses the KV cache for the prompt prefix it already holds
(prompt caching), generates, and hands events to the job's asyncio queue. A job whose client went
away is skipped, or stopped before its next token.
"""
from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from board.bundle import Bundle, open_bundle
from board.engine import Engine
from board.generate import GenerateConfig, generate
from board.serve.config import ServeConfig
from board.serve.metrics import Metrics


@dataclass
class Job:
    """One request on its way through the engine; `events` gets ("text", str), ("done", dict) or ("error", str)."""

    prompt_ids: list
    cfg: GenerateConfig
    seed: int | None
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.perf_counter)

    def emit(self, kind: str, data) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, data))


class QueueFull(Exception):
    pass


class Worker:
    def __init__(self, config: ServeConfig, metrics: Metrics):
        self.config = config
        self.metrics = metrics
        self.jobs: queue.Queue = queue.Queue(maxsize=config.queue_size)
        self.bundle: Bundle | None = None
        self.engine: Engine | None = None
        self.ready = threading.Event()
        self.load_error: str | None = None
        self._backend = None
        self._thread = threading.Thread(target=self._main, name="engine", daemon=True)

    @property
    def model_id(self) -> str:
        return self.config.model_id or (self.bundle.manifest.model.get("name") if self.bundle else None) or "edge-llm"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.jobs.put(None)  # blocks only while the queue is full, which a shutting-down server drains
        self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise QueueFull from None
        self.metrics.set(queue_depth=self.jobs.qsize())

    def _load(self) -> None:
        from board.backends import open_backend

        c = self.config
        self.bundle = open_bundle(c.bundle, verify=c.verify)
        self._backend = open_backend(self.bundle, c.backend, threads=c.threads, device_id=c.device, spin=c.spin)
        self.engine = Engine(self._backend, self.bundle.manifest.arch, self.bundle.manifest.graph, sink=c.sink)
        self.metrics.set(kv_slots=self.engine.cache.kv_len)

    def _main(self) -> None:
        try:
            self._load()
        except Exception as e:  # noqa: BLE001  (reported by /health and the log, the process stays up)
            self.load_error = f"{type(e).__name__}: {e}"
            return
        self.ready.set()
        with self._backend:
            while (job := self.jobs.get()) is not None:
                self.metrics.set(queue_depth=self.jobs.qsize())
                if not job.cancelled.is_set():
                    self._run(job)

    def _run(self, job: Job) -> None:
        engine, start = self.engine, time.perf_counter()
        self.metrics.set(running=1)
        self.metrics.started(start - job.queued_at)
        first: list[float] = []

        def on_text(piece: str) -> None:
            if not first:
                first.append(time.perf_counter() - job.queued_at)  # what the client waits
            job.emit("text", piece)

        try:
            cached = engine.reuse_prefix(job.prompt_ids)
            rng = np.random.default_rng(job.seed)
            result = generate(engine, self.bundle.tokenizer, job.prompt_ids[cached:], job.cfg, rng,
                              on_text=on_text, cancelled=job.cancelled.is_set)
        except Exception as e:  # noqa: BLE001  (the client gets a 500 in OpenAI's shape; the next request starts clean)
            engine.reset()
            job.emit("error", f"{type(e).__name__}: {e}")
            return
        finally:
            self.metrics.set(running=0, kv_used=engine.cache.used)
        ttft = first[0] if first else None
        self.metrics.generated(len(job.prompt_ids), cached, len(result.tokens), ttft, result.to_json()["decode_tok_s"])
        job.emit("done", {"finish_reason": result.finish_reason, "prompt_tokens": len(job.prompt_ids),
                          "completion_tokens": len(result.tokens), "cached_tokens": cached, "ttft_s": ttft})

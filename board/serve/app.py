"""The HTTP side: Starlette routes for the OpenAI-compatible API, health, metrics and the chat page.

Generation happens on the engine thread (board.serve.worker); a handler validates, queues a job
and turns its events into one JSON response or server-sent events. Errors are OpenAI-shaped.
"""
from __future__ import annotations

import asyncio
import hmac
import json
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from board.generate import GenerateConfig
from board.manifest import read_manifest
from board.sampling import model_defaults
from board.serve.config import ServeConfig
from board.serve.metrics import Metrics
from board.serve.prompt import prompt_ids
from board.serve.protocol import FINISH, ApiError, CompletionRequest, Reply, parse_request, usage
from board.serve.worker import Job, QueueFull, Worker

PAGE = Path(__file__).with_name("static") / "chat.html"


def _error(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


async def _cancel_when_gone(request: Request, job: Job, every: float = 0.2) -> None:
    """A whole (non-streamed) answer writes nothing until it ends, so no failed write tells that the
    client left: poll the connection and stop the engine once it is gone."""
    while not job.cancelled.is_set():
        if await request.is_disconnected():
            job.cancelled.set()
            return
        await asyncio.sleep(every)


def _sse(data) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


ROUTES = ("/", "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions")


class CountRequests:
    """ASGI middleware: count every response by route and status (unknown paths as "other")."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in ROUTES else "other"

        async def counted(message):
            if message["type"] == "http.response.start":
                self.metrics.request(path, message["status"])
            await send(message)

        await self.app(scope, receive, counted)


class Api:
    """The route handlers around one worker; `app()` is the ASGI application."""

    def __init__(self, config: ServeConfig, worker: Worker | None = None):
        self.config = config
        self.metrics = Metrics()
        self.worker = worker or Worker(config, self.metrics)
        # what a request that names no sampling option gets: known before the model loads, from the manifest
        self.sampling = model_defaults(read_manifest(config.bundle).sampling)

    def _check_key(self, request: Request) -> None:
        if self.config.api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(token.encode(), self.config.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                           "invalid_request_error", "invalid_api_key")

    def _check_ready(self) -> None:
        if self.worker.load_error:
            raise ApiError(503, f"the model failed to load: {self.worker.load_error}", "server_error", "model_not_loaded")
        if not self.worker.ready.is_set():
            raise ApiError(503, "the model is still loading; retry in a moment", "server_error", "model_loading")

    # --- routes ------------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        if self.worker.ready.is_set():
            return JSONResponse({"status": "ok", "model": self.worker.model_id})
        state = "error" if self.worker.load_error else "loading"
        return JSONResponse({"status": state, "error": self.worker.load_error}, status_code=503)

    async def metrics_text(self, request: Request) -> Response:
        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4")

    async def page(self, request: Request) -> Response:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    async def models(self, request: Request) -> Response:
        self._check_key(request)
        self._check_ready()
        m = self.worker.bundle.manifest
        return JSONResponse({"object": "list", "data": [{
            "id": self.worker.model_id, "object": "model", "created": 0, "owned_by": "edge-llm",
            "context_length": m.graph.kv_len, "quantization": m.quantization.scheme,
            "sampling_defaults": self.sampling_defaults()}]})

    def sampling_defaults(self) -> dict:
        """What a request that names no sampling option gets (the page starts its controls from these).

        Asked of parse_request itself, the one place that decides them, so the two cannot disagree."""
        req = parse_request({"messages": [{"role": "user", "content": ""}]}, "chat", self.config.max_tokens, self.sampling)
        return {**asdict(req.sampling), "max_tokens": req.max_tokens}

    async def chat(self, request: Request) -> Response:
        return await self._complete(request, "chat")

    async def text(self, request: Request) -> Response:
        return await self._complete(request, "text")

    async def _complete(self, request: Request, kind: str) -> Response:
        self._check_key(request)
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the request body is not valid JSON", code="invalid_json") from None
        req = parse_request(body, kind, self.config.max_tokens, self.sampling)
        self._check_ready()
        bundle = self.worker.bundle
        ids = prompt_ids(bundle, req, bundle.manifest.graph.kv_len)
        cfg = GenerateConfig(req.max_tokens, req.sampling, tuple(bundle.manifest.tokens.stop_strings) + req.stop)
        job = Job(ids, cfg, req.seed, asyncio.get_running_loop())
        try:
            self.worker.submit(job)
        except QueueFull:
            raise ApiError(429, f"the server is busy: {self.config.queue_size} requests already wait; retry later",
                           "rate_limit_exceeded", "queue_full") from None
        reply = Reply.new(kind, self.worker.model_id)
        if req.stream:
            return StreamingResponse(self._stream(job, req, reply), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await self._whole(job, reply, request)

    async def _whole(self, job: Job, reply: Reply, request: Request) -> Response:
        parts = []
        watch = asyncio.create_task(_cancel_when_gone(request, job))
        try:
            while True:
                kind, data = await job.events.get()
                if kind == "text":
                    parts.append(data)
                elif kind == "error":
                    raise ApiError(500, f"generation failed: {data}", "server_error", "generation_failed")
                else:
                    done = data
                    break
        finally:
            watch.cancel()
            job.cancelled.set()  # a handler cancelled by a gone client stops the engine too
        use = usage(done["prompt_tokens"], done["completion_tokens"], done["cached_tokens"])
        return JSONResponse(reply.full("".join(parts), FINISH[done["finish_reason"]], use))

    async def _stream(self, job: Job, req: CompletionRequest, reply: Reply):
        """chat.completion.chunk / text_completion events, a final finish_reason, usage if asked, [DONE]."""
        u = req.include_usage
        try:
            yield _sse(reply.chunk("" if req.kind == "chat" else None, role=True, usage=u))
            while True:
                kind, data = await job.events.get()
                if kind == "text":
                    yield _sse(reply.chunk(data, usage=u))
                elif kind == "error":
                    yield _sse(ApiError(500, f"generation failed: {data}", "server_error", "generation_failed").body())
                    break
                else:
                    yield _sse(reply.chunk(None, FINISH[data["finish_reason"]], usage=u))
                    if u:
                        yield _sse(reply.usage_chunk(usage(data["prompt_tokens"], data["completion_tokens"],
                                                           data["cached_tokens"])))
                    break
            yield _sse("[DONE]")
        finally:
            job.cancelled.set()  # the client went away (or we are done): the engine stops before its next token

    # --- application -------------------------------------------------------------------------
    def app(self) -> Starlette:
        @asynccontextmanager
        async def lifespan(app):
            self.worker.start()
            yield
            self.worker.stop()

        routes = [
            Route("/", self.page), Route("/health", self.health), Route("/metrics", self.metrics_text),
            Route("/v1/models", self.models), Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.text, methods=["POST"]),
        ]
        return Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(CountRequests, metrics=self.metrics)],
                         exception_handlers={ApiError: self._api_error, HTTPException: self._http_error})

    async def _api_error(self, request: Request, e: ApiError) -> Response:
        return _error(e)

    async def _http_error(self, request: Request, e: HTTPException) -> Response:
        if e.status_code == 404:
            return _error(ApiError(404, f"no route {request.method} {request.url.path}; see GET /v1/models, "
                                        "POST /v1/chat/completions, POST /v1/completions", code="not_found"))
        return _error(ApiError(e.status_code, f"{request.method} {request.url.path}: {e.detail}", code="http_error"))

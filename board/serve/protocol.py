"""The OpenAI wire format: validate a request body into a typed request, shape responses and errors.

Only what the server implements is accepted; a field it cannot honour (n > 1) is a 400 that
says so, never silently ignored.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from board.sampling import OPENAI_PENALTY, SamplingConfig

ROLES = ("system", "developer", "user", "assistant")  # "developer" is OpenAI's newer name for system
MAX_STOPS = 4
OPENAI_RANGE = (lambda v: -OPENAI_PENALTY <= v <= OPENAI_PENALTY, f"a number in [-{OPENAI_PENALTY:g}, {OPENAI_PENALTY:g}]")


class ApiError(Exception):
    """An error the client gets as {"error": {"message", "type", "code", "param"}} with an HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


def bad(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, code=code, param=param)


@dataclass(frozen=True)
class CompletionRequest:
    """One chat or text completion, validated. `messages` for chat, `prompt` for text."""

    kind: str  # "chat" | "text"
    model: str
    messages: tuple  # ({"role", "content"}, ...): OpenAI's dicts, role system/user/assistant, content text
    prompt: str
    max_tokens: int | None
    sampling: SamplingConfig
    seed: int | None
    stop: tuple
    stream: bool
    include_usage: bool


def _typed(body: dict, name: str, types, default=None, check=None, why: str = ""):
    """body[name] if it has one of `types` (bool is not a number here) and passes check, else 400."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        raise bad(f"'{name}' must be {why or ' or '.join(t.__name__ for t in types)}, got {value!r}", name, "invalid_type")
    if check is not None and not check(value):
        raise bad(f"'{name}' must be {why}, got {value!r}", name)
    return value


def _content(message: dict, i: int) -> str:
    """A message's text: a string, or OpenAI's list of {"type": "text", "text": ...} parts."""
    content = message.get("content")
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise bad(f"messages[{i}].content must be a string or a list of text parts, got {content!r}",
                  f"messages[{i}].content", "invalid_type")
    return content


def _messages(body: dict) -> tuple:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty list of {role, content} objects", "messages", "invalid_type")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise bad(f"messages[{i}] must be an object with role and content", f"messages[{i}]", "invalid_type")
        role = m.get("role")
        if role not in ROLES:
            raise bad(f"messages[{i}].role {role!r} is not one of {', '.join(ROLES)}", f"messages[{i}].role")
        out.append({"role": "system" if role == "developer" else role, "content": _content(m, i)})
    return tuple(out)


def _prompt(body: dict) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # a batch of one
    if not isinstance(prompt, str) or not prompt:
        raise bad("'prompt' must be a non-empty string (one prompt per request)", "prompt", "invalid_type")
    return prompt


def _stop(body: dict) -> tuple:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise bad(f"'stop' must be a non-empty string or a list of up to {MAX_STOPS} of them, got {stop!r}", "stop")
    return tuple(stops)


def _refuse_unsupported(body: dict) -> None:
    if _typed(body, "n", (int,), 1) != 1:
        raise bad("'n' must be 1: this server returns one choice per request", "n", "unsupported_parameter")


def parse_request(body, kind: str, default_max_tokens: int, defaults: SamplingConfig) -> CompletionRequest:
    """Validate a /v1/chat/completions (kind "chat") or /v1/completions ("text") body; ApiError 400.

    A sampling field the body leaves out takes its value from `defaults` (the model's, board.sampling)."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object", None, "invalid_json")
    _refuse_unsupported(body)
    positive = (lambda v: v >= 1, "an integer >= 1")
    max_tokens = _typed(body, "max_completion_tokens", (int,), None, *positive)
    max_tokens = _typed(body, "max_tokens", (int,), max_tokens, *positive)
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad("'stream_options' must be an object", "stream_options", "invalid_type")
    d = defaults
    sampling = SamplingConfig(
        temperature=float(_typed(body, "temperature", (int, float), d.temperature, lambda v: 0 <= v <= 2, "a number in [0, 2]")),
        top_p=float(_typed(body, "top_p", (int, float), d.top_p, lambda v: 0 < v <= 1, "a number in (0, 1]")),
        top_k=_typed(body, "top_k", (int,), d.top_k, lambda v: v >= 0, "an integer >= 0 (0 = off)"),
        repetition_penalty=float(_typed(body, "repetition_penalty", (int, float), d.repetition_penalty,
                                        lambda v: v > 0, "a number > 0")),
        frequency_penalty=float(_typed(body, "frequency_penalty", (int, float), d.frequency_penalty, *OPENAI_RANGE)),
        presence_penalty=float(_typed(body, "presence_penalty", (int, float), d.presence_penalty, *OPENAI_RANGE)),
    )
    return CompletionRequest(
        kind=kind,
        model=_typed(body, "model", (str,), ""),
        messages=_messages(body) if kind == "chat" else (),
        prompt=_prompt(body) if kind == "text" else "",
        max_tokens=max_tokens or default_max_tokens,
        sampling=sampling,
        seed=_typed(body, "seed", (int,)),
        stop=_stop(body),
        stream=_typed(body, "stream", (bool,), False),
        include_usage=_typed(options, "include_usage", (bool,), False),
    )


# --- responses -------------------------------------------------------------------------------
FINISH = {"eos": "stop", "stop": "stop", "length": "length", "context": "length", "interrupted": "stop"}


@dataclass(frozen=True)
class Reply:
    """What every response or chunk of one request shares."""

    id: str
    created: int
    model: str
    kind: str

    @classmethod
    def new(cls, kind: str, model: str) -> "Reply":
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        return cls(f"{prefix}-{uuid.uuid4().hex}", int(time.time()), model, kind)

    def _head(self, chunk: bool) -> dict:
        suffix = ".chunk" if chunk and self.kind == "chat" else ""
        obj = ("chat.completion" if self.kind == "chat" else "text_completion") + suffix
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def _choice(self, text: str | None, finish: str | None, chunk: bool, role: bool = False) -> dict:
        if self.kind == "text":
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        if chunk:
            delta = ({"role": "assistant"} if role else {}) | ({"content": text} if text is not None else {})
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}

    def chunk(self, text: str | None, finish: str | None = None, role: bool = False, usage: bool = False) -> dict:
        """One streamed event; `usage` adds "usage": null as OpenAI does when include_usage is on."""
        return self._head(True) | {"choices": [self._choice(text, finish, True, role)]} | ({"usage": None} if usage else {})

    def usage_chunk(self, usage: dict) -> dict:
        return self._head(True) | {"choices": [], "usage": usage}

    def full(self, text: str, finish: str, usage: dict) -> dict:
        return self._head(False) | {"choices": [self._choice(text, finish, False)], "usage": usage}


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}

"""The generation loop, written once: prefill the prompt, then sample, stream and feed token by token.

Stops on an EOS or end-of-turn id, a stop string (never shown), the token budget, the model's position range, or
Ctrl-C (the partial answer is kept). Text streams through `on_text` in UTF-8-safe pieces.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from board.detokenize import StopFilter
from board.engine import Engine
from board.sampling import SamplingConfig, sample
from board.tokenizer import Tokenizer


# What a person sees after an answer that did not end by itself (the page shows the same words).
MARKS = {"length": "[length]", "context": "[length]", "interrupted": "[stopped]"}


def finish_mark(finish_reason: str) -> str:
    """" [length]" or " [stopped]" to print after an answer cut short; "" after one that ended by itself."""
    mark = MARKS.get(finish_reason)
    return f" {mark}" if mark else ""


@dataclass(frozen=True)
class GenerateConfig:
    max_new_tokens: int = 128
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    stop_strings: tuple = ()

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens {self.max_new_tokens} must be >= 1")


@dataclass
class GenerationResult:
    text: str  # what was shown: no stop string, no EOS
    tokens: list  # generated ids (EOS excluded)
    prompt_tokens: int
    finish_reason: str  # "eos" | "stop" | "length" | "context" | "interrupted"
    unfed: list  # generated ids not yet in the KV cache (feed them before the next turn)
    prefill_s: float
    decode_s: float

    def to_json(self) -> dict:
        decode_steps = max(len(self.tokens) - 1, 0)
        return {
            "text": self.text,
            "tokens": self.tokens,
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": len(self.tokens),
            "finish_reason": self.finish_reason,
            "prefill_tok_s": self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else None,
            "decode_tok_s": decode_steps / self.decode_s if self.decode_s > 0 and decode_steps else None,
        }


def generate(
    engine: Engine,
    tokenizer: Tokenizer,
    prompt_ids: list[int],
    cfg: GenerateConfig,
    rng: np.random.Generator,
    on_text=None,
    cancelled=None,
) -> GenerationResult:
    """Continue prompt_ids (fed into the engine's current cache) and return what was generated.

    `cancelled()` is asked before each new token; True ends the answer as "interrupted" (a server's
    client went away)."""
    on_text = on_text or (lambda piece: None)
    decoder = tokenizer.stream(context_ids=(engine.fed[-4:] + list(prompt_ids)[-4:])[-4:])
    stop = StopFilter(cfg.stop_strings)
    stop_ids = {tokenizer.tokens.eos_id, *tokenizer.tokens.stop_ids}  # EOS, and the template's end of turn
    tokens: list[int] = []
    shown: list[str] = []
    finish = "length"
    t0 = time.perf_counter()
    prefill_s = 0.0
    n_fed = 0  # generated tokens already in the cache; the rest are returned as `unfed`
    try:
        logits = engine.feed(prompt_ids)
        prefill_s = time.perf_counter() - t0
        for i in range(cfg.max_new_tokens):
            if cancelled is not None and cancelled():
                finish = "interrupted"
                break
            token = sample(logits, cfg.sampling, rng, history=engine.fed, generated=tokens)
            if token in stop_ids:
                finish = "eos"
                break
            tokens.append(token)
            piece = stop.push(decoder.push(token))
            if piece:
                shown.append(piece)
                on_text(piece)
            if stop.stopped:
                finish = "stop"
                break
            if i == cfg.max_new_tokens - 1:
                break
            if engine.positions_left < 1:
                finish = "context"
                break
            logits = engine.feed([token])
            n_fed += 1
    except KeyboardInterrupt:
        finish = "interrupted"
    if finish not in ("stop", "interrupted"):
        tail = stop.push(decoder.flush()) + stop.flush()
        if tail:
            shown.append(tail)
            on_text(tail)
    elapsed = time.perf_counter() - t0
    return GenerationResult(
        text="".join(shown),
        tokens=tokens,
        prompt_tokens=len(prompt_ids),
        finish_reason=finish,
        unfed=tokens[n_fed:],
        prefill_s=prefill_s,
        decode_s=max(elapsed - prefill_s, 0.0),
    )

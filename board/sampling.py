"""Choosing the next token from logits: greedy, temperature, top-k, top-p, repetition penalty, and
OpenAI's frequency and presence penalties.

Pure numpy. The random draw comes from a passed np.random.Generator, so runs are reproducible.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np


MAX_PENALTY = 100.0  # beyond this, seen logits overflow float32 to +-inf and sampling degenerates
OPENAI_PENALTY = 2.0  # frequency/presence penalties are in [-2, 2], as OpenAI's API documents


@dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 means greedy; top_k 0 and top_p 1.0 switch those filters off.

    The defaults here are the one home of the built-in fallback: what the CLI and the API use for an
    option that neither the request nor the model's generation_config.json sets (`model_defaults`)."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0  # subtracted from a logit once per time the token was generated
    presence_penalty: float = 0.0  # subtracted once from every token generated at least once

    def __post_init__(self):
        # NaN passes every comparison below as False, so finiteness is checked first
        names = ("temperature", "top_p", "repetition_penalty", "frequency_penalty", "presence_penalty")
        bad = [n for n in names if not math.isfinite(getattr(self, n))]
        if bad:
            raise ValueError(f"{bad[0]} {getattr(self, bad[0])} must be a finite number")
        if self.temperature < 0:
            raise ValueError(f"temperature {self.temperature} must be >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise ValueError(f"top_k {self.top_k} must be >= 0 (0 = off)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p {self.top_p} must be in (0, 1] (1 = off)")
        if not 0 < self.repetition_penalty <= MAX_PENALTY:
            raise ValueError(f"repetition_penalty {self.repetition_penalty} must be in (0, {MAX_PENALTY}] (1 = off)")
        for name in ("frequency_penalty", "presence_penalty"):
            if abs(getattr(self, name)) > OPENAI_PENALTY:
                raise ValueError(f"{name} {getattr(self, name)} must be in [-{OPENAI_PENALTY}, {OPENAI_PENALTY}] (0 = off)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


GREEDY = SamplingConfig(temperature=0.0)


def model_defaults(model) -> SamplingConfig:
    """The built-in defaults overridden by what the model says (the manifest's `sampling`, None: unsaid)."""
    said = {name: getattr(model, name) for name in ("temperature", "top_k", "top_p", "repetition_penalty")}
    return replace(SamplingConfig(), **{k: v for k, v in said.items() if v is not None})


def apply_repetition_penalty(logits: np.ndarray, history, penalty: float) -> np.ndarray:
    """CTRL-style penalty on every token already seen: positive logits / penalty, negative * penalty."""
    if penalty == 1.0 or len(history) == 0:
        return logits
    out = logits.astype(np.float32, copy=True)
    seen = np.unique(np.asarray(history, dtype=np.int64))
    vals = out[seen]
    out[seen] = np.where(vals > 0, vals / penalty, vals * penalty)
    return out


def apply_openai_penalties(logits: np.ndarray, generated, frequency: float, presence: float) -> np.ndarray:
    """OpenAI's penalties over the answer so far: logit -= count * frequency + (count > 0) * presence."""
    if (frequency == 0.0 and presence == 0.0) or len(generated) == 0:
        return logits
    counts = np.bincount(np.asarray(generated, dtype=np.int64), minlength=logits.shape[0])[: logits.shape[0]]
    return (logits - counts * frequency - (counts > 0) * presence).astype(np.float32)


def token_distribution(logits: np.ndarray, cfg: SamplingConfig) -> np.ndarray:
    """Probabilities after temperature, top-k and top-p (float64 [V], sums to 1); needs temperature > 0."""
    scaled = logits.astype(np.float64) / cfg.temperature
    if 0 < cfg.top_k < scaled.shape[0]:
        kth = np.partition(scaled, -cfg.top_k)[-cfg.top_k]
        scaled = np.where(scaled >= kth, scaled, -np.inf)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if cfg.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        # keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it is < top_p
        keep = (cumulative - probs[order]) < cfg.top_p
        filtered = np.zeros_like(probs)
        filtered[order[keep]] = probs[order[keep]]
        probs = filtered / filtered.sum()
    return probs


def sample(logits: np.ndarray, cfg: SamplingConfig, rng: np.random.Generator, history=(), generated=()) -> int:
    """Next token id from logits [V] given the ids fed so far (`history`) and those of this answer (`generated`)."""
    logits = apply_repetition_penalty(logits, history, cfg.repetition_penalty)
    logits = apply_openai_penalties(logits, generated, cfg.frequency_penalty, cfg.presence_penalty)
    if cfg.greedy:
        return int(np.argmax(logits))
    probs = token_distribution(logits, cfg)
    # inverse-CDF draw with one uniform number keeps the draw a plain function of rng
    index = int(np.searchsorted(np.cumsum(probs), rng.random(), side="right"))
    # rounding can leave the total a hair under 1: fall back to the last token that has mass
    return min(index, int(np.flatnonzero(probs)[-1]))

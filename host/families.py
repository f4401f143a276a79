"""The model families the build supports, and what each needs checked before its graph is built.

Every family here runs through the one graph of host/model.py: pre-norm decoder layers with
RMSNorm, GQA attention with rotary embeddings (HF half-rotation), a SiLU-gated MLP. What differs
between them lives in the Hugging Face modules the graph shares (biases on q/k/v in Qwen2, tied
embeddings, the RoPE frequencies that `rope_scaling` gives) or is refused here with a reason.
"""
from __future__ import annotations

from dataclasses import dataclass

from host.errors import InputError


@dataclass(frozen=True)
class Family:
    architecture: str  # the transformers class, as config.json's "architectures" names it
    model_type: str  # config.json's "model_type"
    examples: str  # models of the family people run on the board (docs/build.md's table)


FAMILIES = (
    Family("LlamaForCausalLM", "llama", "TinyLlama-1.1B, Llama-3.2-1B, SmolLM2, llama2.c checkpoints"),
    Family("Qwen2ForCausalLM", "qwen2", "Qwen2.5-0.5B/1.5B-Instruct, DeepSeek-R1-Distill-Qwen-1.5B"),
)
SUPPORTED = ", ".join(f.architecture for f in FAMILIES)


def family_of(model_type: str | None, architectures: list | None, where: str) -> Family:
    """The Family of a config (its model_type and architectures); InputError naming the supported list."""
    for family in FAMILIES:
        if model_type == family.model_type and family.architecture in (architectures or [family.architecture]):
            return family
    named = ", ".join(architectures or []) or f"model_type {model_type!r}"
    raise InputError(f"{where}: unsupported architecture {named}; edge-llm builds {SUPPORTED}")


def check_config(config, where: str) -> Family:
    """Refuse what the static graph cannot compute (activation, sliding windows); return the family."""
    family = family_of(getattr(config, "model_type", None), getattr(config, "architectures", None), where)
    if getattr(config, "hidden_act", "silu") != "silu":
        raise InputError(f"{where}: hidden_act {config.hidden_act!r} is not supported (the graph's MLP is SiLU-gated)")
    if getattr(config, "use_sliding_window", False):
        raise InputError(f"{where}: sliding-window attention is not supported; set use_sliding_window to false")
    return family

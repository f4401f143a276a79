"""The one interface every backend implements: a single forward step of the graph (docs/design.md §3)."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

# docs/design.md §3 names; the board checks the loaded graph against them.
INPUT_NAMES = ("input_ids", "attention_mask", "position_ids", "past_key_values")
OUTPUT_NAMES = ("logits", "present_key_values")
LOGITS_INDEX = "logits_index"  # graph.logits "index": int64 [N], the chunk rows to compute logits for


def layer_names(prefix: str, num_layers: int) -> list[str]:
    """The per-layer cache names of a graph.cache "inplace" graph: prefix.0.key, prefix.0.value, prefix.1.key, ..."""
    return [f"{prefix}.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def io_names(graph) -> tuple[list[str], list[str]]:
    """A manifest Graph's input and output names in binding order (logits_index, then KV caches, layer by layer)."""
    small = list(INPUT_NAMES[:3]) + ([LOGITS_INDEX] if graph.logits == "index" else [])
    if graph.cache == "slots":
        return small + [INPUT_NAMES[3]], list(OUTPUT_NAMES)
    layers = sum(t.name.startswith(INPUT_NAMES[3] + ".") for t in graph.inputs) // 2
    return small + layer_names(INPUT_NAMES[3], layers), [OUTPUT_NAMES[0]] + layer_names(OUTPUT_NAMES[1], layers)


class Backend(ABC):
    """Runs the graph; generation, chat, perplexity and bench are written once on top of `forward`."""

    name = "backend"

    @abstractmethod
    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past_key_values: np.ndarray,
        last_only: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(logits [1,S,V] or [1,1,V], present_key_values in the graph's layout with S for KV); may reuse its
        buffers next call. past_key_values comes in the graph's input shape (graph.inputs).

        last_only: only the last row's logits are wanted; a graph that can skip the others
        (graph.logits "index") returns [1,1,V]. present is None when the graph wrote the new
        keys/values into past_key_values itself (graph.cache "inplace": at slots [n, n+S) after
        the n cached ones)."""

    def kv_buffer(self, shape: tuple, dtype: str) -> np.ndarray | None:
        """Memory for the KV cache that the accelerator reads without a copy, or None to use plain numpy."""
        return None

    def clear_kv(self, kv: np.ndarray) -> None:
        """Zero the KV memory on reset; plain numpy caches start zeroed and only ever hold finite values."""

    def close(self) -> None:
        """Release the runtime's resources; safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

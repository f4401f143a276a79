"""The one interface every backend implements: a single forward step of the graph (DESIGN.md §3)."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

# DESIGN.md §3 names; the board checks the loaded graph against them.
INPUT_NAMES = ("input_ids", "attention_mask", "position_ids", "past_key_values")
OUTPUT_NAMES = ("logits", "present_key_values")


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
    ) -> tuple[np.ndarray, np.ndarray]:
        """(logits [1,S,V] or [1,1,V], present_key_values [L,2,1,Hkv,S,D]); may reuse its buffers next call."""

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

"""The model as a token-feeding machine: a backend step plus the KV cache it owns.

`feed(ids)` splits ids into the graph's prefill chunk sizes, reserves slots (evicting when full),
runs the backend, commits the new keys/values, and returns logits. Everything above it
(generation, chat, perplexity, bench) is backend-agnostic.
"""
from __future__ import annotations

import numpy as np

from board.backends.base import Backend
from board.errors import BoardError
from board.kvcache import KVCache
from board.manifest import Arch, Graph

DEFAULT_SINK = 4


def plan_chunks(n: int, sizes, limit: int) -> list[int]:
    """Split n tokens greedily into the accepted chunk sizes (largest first), none above `limit`."""
    usable = sorted({s for s in sizes if 0 < s <= limit} | {1}, reverse=True)
    chunks = []
    while n > 0:
        size = next(s for s in usable if s <= n)
        chunks.append(size)
        n -= size
    return chunks


class Engine:
    """Feeds tokens through a backend into a fixed-slot KV cache; tracks every id it has fed."""

    def __init__(self, backend: Backend, arch: Arch, graph: Graph, sink: int = DEFAULT_SINK):
        shape = (arch.num_layers, 2, 1, arch.num_kv_heads, graph.kv_len, arch.head_dim)
        self.backend = backend
        self.graph = graph
        # the graph may rotate fewer positions than the model was trained for (graph.max_positions)
        self.max_positions = graph.max_positions or arch.max_position_embeddings
        self.cache = KVCache.allocate(shape, graph.kv_dtype, sink, buffer=backend.kv_buffer(shape, graph.kv_dtype),
                                      compact=graph.cache == "inplace")
        # the graph's view of the cache: [2L,Hkv,KV,D] since format 7 (ATC's rank limit), [L,2,1,Hkv,KV,D] before
        spec = next((t for t in graph.inputs if t.name == "past_key_values"), None)
        self._graph_kv = tuple(spec.shape) if spec is not None and len(spec.shape) != len(shape) else None
        self.fed: list[int] = []  # ids fed since the last reset, evicted ones included

    @property
    def positions_left(self) -> int:
        """New tokens the model can still take before its trained position range ends."""
        return self.max_positions - self.cache.next_pos

    def reset(self) -> None:
        self.cache.reset()
        self.backend.clear_kv(self.cache.kv)
        self.fed = []

    def reuse_prefix(self, ids) -> int:
        """Keep the longest cached prefix of `ids` (rewinding past it) and return its length.

        At least one id is left to feed, so the caller gets fresh logits. Once tokens were evicted the
        cache cannot rewind (attention over a window differs from attention over the whole prefix): it is
        kept only when `ids` extend everything fed (a chat running past its window), else reset.
        """
        ids = [int(i) for i in ids]
        if self.cache.used != len(self.fed):
            if len(ids) > len(self.fed) and ids[: len(self.fed)] == self.fed:
                return len(self.fed)
            self.reset()
            return 0
        n = 0
        limit = min(len(self.fed), len(ids) - 1)
        while n < limit and self.fed[n] == ids[n]:
            n += 1
        self.cache.truncate(n)
        del self.fed[n:]
        return n

    def feed(self, ids, all_logits: bool = False) -> np.ndarray:
        """Run ids through the model; logits of the last id [V], or of every id [n, V] when all_logits."""
        ids = [int(i) for i in ids]
        if not ids:
            raise BoardError("nothing to feed: the prompt encoded to zero tokens")
        if len(ids) > self.positions_left:
            raise BoardError(
                f"{len(ids)} tokens exceed the {self.positions_left} positions left of "
                f"the model's {self.max_positions}; shorten the input or reset"
            )
        sizes = self.graph.prefill_chunks
        rows, start = [], 0
        for size in plan_chunks(len(ids), sizes, self.cache.capacity_per_step()):
            logits = self._step(ids[start : start + size], last_only=not all_logits)
            rows.append(logits[0].copy() if all_logits else None)
            start += size
        return np.concatenate(rows) if all_logits else logits[0, -1].copy()

    def _step(self, chunk: list[int], last_only: bool) -> np.ndarray:
        cache = self.cache
        slots = cache.reserve(len(chunk))
        mask, positions = cache.step_inputs(len(chunk))
        input_ids = np.asarray(chunk, dtype=np.int64)[None, :]
        past = cache.kv if self._graph_kv is None else cache.kv.reshape(self._graph_kv)  # a view: no copy
        logits, present = self.backend.forward(input_ids, mask, positions, past, last_only=last_only)
        if present is not None and self._graph_kv is not None:
            present = present.reshape(cache.kv.shape[:4] + (len(chunk),) + cache.kv.shape[5:])
        cache.commit(slots, present)
        self.fed.extend(chunk)
        return logits

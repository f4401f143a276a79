"""The fixed KV slots of the graph (docs/design.md §3): which slots hold which positions, the attention
mask, the next position, and eviction that keeps the first `sink` tokens plus a recent window.

Keys are stored already rotated, and attention is masked per slot, so slot order is irrelevant:
new tokens go into any free slots and eviction only clears mask bits. A `compact` cache (graph.cache
"inplace", whose graph writes the new tokens after the cached ones and attends over a prefix) keeps
its tokens in slots [0, used) in position order instead: eviction moves the kept ones down, and
frees a quarter of the window at once so that the move happens once per kv_len/4 tokens, not per token.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from board.errors import BoardError

EMPTY = -1


@dataclass
class KVCache:
    kv: np.ndarray  # [L, 2, 1, Hkv, KV, D], the graph's past_key_values, updated in place
    slot_pos: np.ndarray  # int64 [KV]: absolute position held by each slot, EMPTY when free
    sink: int  # tokens at positions < sink are never evicted (attention sinks)
    next_pos: int = 0
    compact: bool = False  # tokens held in slots [0, used), oldest first

    @classmethod
    def allocate(cls, shape: tuple, dtype: str, sink: int, buffer: np.ndarray | None = None,
                 compact: bool = False) -> "KVCache":
        """Empty cache of the graph's KV shape; `buffer` lets a backend supply memory it shares with the device."""
        kv_len = shape[4]
        if not 0 <= sink < kv_len:
            raise BoardError(f"sink={sink} must be in [0, kv_len={kv_len}); pass a smaller --sink")
        if buffer is None:
            buffer = np.zeros(shape, dtype=dtype)
        elif buffer.shape != tuple(shape) or buffer.dtype != np.dtype(dtype):
            raise BoardError(f"KV buffer {buffer.shape} {buffer.dtype} does not match graph {shape} {dtype}")
        return cls(kv=buffer, slot_pos=np.full(kv_len, EMPTY, dtype=np.int64), sink=sink, compact=compact)

    @property
    def kv_len(self) -> int:
        return self.slot_pos.shape[0]

    @property
    def used(self) -> int:
        return int((self.slot_pos != EMPTY).sum())

    @property
    def mask(self) -> np.ndarray:
        """int64 [KV]: 1 where a slot holds a token to attend to."""
        return (self.slot_pos != EMPTY).astype(np.int64)

    def capacity_per_step(self) -> int:
        """Most new tokens one forward can take: the slots outside the protected sink."""
        return self.kv_len - min(self.sink, self.used)

    def reserve(self, n: int) -> np.ndarray:
        """Free slot indices for n new tokens, evicting the oldest non-sink tokens when full."""
        free = np.flatnonzero(self.slot_pos == EMPTY)
        if len(free) < n:
            self._evict(n - len(free), n)
            free = np.flatnonzero(self.slot_pos == EMPTY)
        return free[:n]

    def _evict(self, count: int, wanted: int) -> None:
        evictable = np.flatnonzero((self.slot_pos != EMPTY) & (self.slot_pos >= self.sink))
        if len(evictable) < count:
            raise BoardError(
                f"cannot fit {wanted} new tokens in one step: {self.kv_len} KV slots, {self.sink} kept as sink; "
                "feed fewer tokens per step or rebuild with a larger --kv-len"
            )
        if self.compact:
            count = max(count, min(len(evictable), (self.kv_len - self.sink) // 4))
        oldest = evictable[np.argsort(self.slot_pos[evictable], kind="stable")[:count]]
        self.slot_pos[oldest] = EMPTY
        if self.compact:
            kept = np.flatnonzero(self.slot_pos != EMPTY)  # in position order: the cache was compact
            self.kv[:, :, :, :, : len(kept)] = self.kv[:, :, :, :, kept]
            self.slot_pos[: len(kept)] = self.slot_pos[kept]
            self.slot_pos[len(kept) :] = EMPTY

    def step_inputs(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """attention_mask [1, KV+n] and position_ids [1, n] for n new tokens (call after reserve)."""
        mask = np.concatenate([self.mask, np.ones(n, dtype=np.int64)])[None, :]
        positions = np.arange(self.next_pos, self.next_pos + n, dtype=np.int64)[None, :]
        return mask, positions

    def commit(self, slots: np.ndarray, present: np.ndarray | None) -> None:
        """Store the new tokens' keys/values [L,2,1,Hkv,n,D] in `slots` and advance the position.

        present None: the graph already wrote them there (a compact cache's slots [used, used+n))."""
        n = len(slots)
        if present is None:
            if not self.compact:
                raise BoardError("the backend wrote the KV cache in place, but this cache is not compact")
        elif present.shape[4] != n or present.shape[:4] != self.kv.shape[:4] or present.shape[5] != self.kv.shape[5]:
            raise BoardError(f"present_key_values shape {present.shape} does not fit KV {self.kv.shape} for {n} tokens")
        else:
            self.kv[:, :, :, :, slots, :] = present
        self.slot_pos[slots] = np.arange(self.next_pos, self.next_pos + n)
        self.next_pos += n

    def truncate(self, n: int) -> None:
        """Forget every position >= n (their slots become free); the next token goes to position n."""
        if not 0 <= n <= self.next_pos:
            raise BoardError(f"cannot truncate the KV cache to {n} tokens: it holds positions 0..{self.next_pos - 1}")
        self.slot_pos[self.slot_pos >= n] = EMPTY
        self.next_pos = n

    def reset(self) -> None:
        # Stale values stay here; the backend zeroes device memory (Backend.clear_kv) where needed.
        self.slot_pos[:] = EMPTY
        self.next_pos = 0

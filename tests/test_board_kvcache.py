"""board.kvcache slot bookkeeping and eviction, and board.engine chunk planning."""
import numpy as np
import pytest

from board.engine import plan_chunks
from board.errors import BoardError
from board.kvcache import EMPTY, KVCache

SHAPE = (2, 2, 1, 1, 4, 3)  # L=2, KV=4 slots, D=3


def present_for(positions):
    """K/V of the new tokens filled with their position, so slot contents are checkable."""
    n = len(positions)
    return np.broadcast_to(np.asarray(positions, dtype=np.float32)[:, None], SHAPE[:4] + (n, 3)).copy()


def feed(cache, n):
    slots = cache.reserve(n)
    mask, pos = cache.step_inputs(n)
    cache.commit(slots, present_for(pos[0]))
    return slots, mask, pos


def test_fresh_cache_fills_free_slots_and_advances_positions():
    cache = KVCache.allocate(SHAPE, "float32", sink=1)
    slots, mask, pos = feed(cache, 3)
    assert slots.tolist() == [0, 1, 2]
    assert mask.tolist() == [[0, 0, 0, 0, 1, 1, 1]]
    assert pos.tolist() == [[0, 1, 2]]
    assert cache.slot_pos.tolist() == [0, 1, 2, EMPTY]
    assert cache.kv[1, 0, 0, 0, :, 0].tolist() == [0.0, 1.0, 2.0, 0.0]
    slots, mask, pos = feed(cache, 1)
    assert (slots.tolist(), mask.tolist(), pos.tolist()) == ([3], [[1, 1, 1, 0, 1]], [[3]])


def test_full_cache_evicts_oldest_after_the_sink():
    cache = KVCache.allocate(SHAPE, "float32", sink=1)
    feed(cache, 4)  # positions 0..3 fill every slot
    slots, mask, pos = feed(cache, 1)
    assert slots.tolist() == [1]  # position 1 was the oldest evictable; position 0 is the sink
    assert mask.tolist() == [[1, 0, 1, 1, 1]]  # the evicted slot is masked during this step
    assert pos.tolist() == [[4]]
    assert cache.slot_pos.tolist() == [0, 4, 2, 3]
    slots, _, pos = feed(cache, 2)
    assert sorted(slots.tolist()) == [2, 3] and pos.tolist() == [[5, 6]]
    assert sorted(cache.slot_pos.tolist()) == [0, 4, 5, 6]
    assert cache.kv[0, 1, 0, 0, :, 2].tolist() == [0.0, 4.0, 5.0, 6.0]


def test_too_many_tokens_for_one_step_is_a_clear_error():
    cache = KVCache.allocate(SHAPE, "float32", sink=2)
    feed(cache, 2)
    assert cache.capacity_per_step() == 2
    with pytest.raises(BoardError, match="cannot fit 3 new tokens"):
        cache.reserve(3)


def test_reset_empties_the_slots_and_restarts_positions():
    cache = KVCache.allocate(SHAPE, "float32", sink=1)
    feed(cache, 3)
    cache.reset()
    assert cache.used == 0 and cache.next_pos == 0
    assert feed(cache, 1)[2].tolist() == [[0]]


def test_bad_sink_and_buffer_are_rejected():
    with pytest.raises(BoardError, match="sink"):
        KVCache.allocate(SHAPE, "float32", sink=4)
    with pytest.raises(BoardError, match="does not match"):
        KVCache.allocate(SHAPE, "float32", sink=1, buffer=np.zeros(SHAPE, dtype=np.float16))


@pytest.mark.parametrize(
    "n, sizes, limit, expected",
    [(37, [1, 4, 16], 64, [16, 16, 4, 1]), (9, [1, 4, 16], 8, [4, 4, 1]), (3, [16], 64, [1, 1, 1]), (16, [1, 16], 16, [16])],
)
def test_plan_chunks_uses_the_largest_accepted_sizes(n, sizes, limit, expected):
    assert plan_chunks(n, sizes, limit) == expected


def test_compact_cache_evicts_a_quarter_of_the_window_and_moves_the_rest_down():
    shape = (1, 2, 1, 1, 10, 1)
    cache = KVCache.allocate(shape, "float32", sink=2, compact=True)
    for pos in range(10):
        slots = cache.reserve(1)
        cache.step_inputs(1)
        cache.kv[..., slots[0], :] = pos  # as the graph does: it writes the new token at slot `used`
        cache.commit(slots, None)
    slots = cache.reserve(1)
    # 8 evictable tokens: a quarter (2) go at once, positions 2 and 3; the rest moved down behind the sink
    assert cache.slot_pos.tolist() == [0, 1, 4, 5, 6, 7, 8, 9, EMPTY, EMPTY]
    assert cache.kv[0, 0, 0, 0, :8, 0].tolist() == [0, 1, 4, 5, 6, 7, 8, 9]
    assert slots.tolist() == [8]
    mask, pos = cache.step_inputs(1)
    assert mask.tolist() == [[1] * 8 + [0, 0, 1]] and pos.tolist() == [[10]]


def test_only_a_compact_cache_takes_keys_written_in_place():
    cache = KVCache.allocate((1, 2, 1, 1, 4, 1), "float32", sink=0)
    with pytest.raises(BoardError, match="not compact"):
        cache.commit(cache.reserve(1), None)

"""Index lookups against bisect over a sorted list."""

import bisect
import random
import struct

import numpy as np
import pytest

from umlog._native import core


def offset_index(keys):
    return b"".join(struct.pack(">II", k, 4096 * i) for i, k in enumerate(keys))


def time_index(keys):
    return b"".join(struct.pack(">qI", k, i) for i, k in enumerate(keys))


def expect(keys, target):
    return bisect.bisect_right(keys, target) - 1


def check(keys, targets):
    u32 = all(0 <= k < 2**32 for k in keys)
    ob, tb = offset_index(keys) if u32 else None, time_index(keys)
    for t in targets:
        if u32 and 0 <= t < 2**32:
            assert core.offset_index_lookup(ob, len(keys), t) == expect(keys, t), t
        assert core.time_index_lookup(tb, len(keys), t) == expect(keys, t), t


def test_empty():
    assert core.offset_index_lookup(b"", 0, 5) == -1
    assert core.time_index_lookup(bytearray(120), 0, 5) == -1


def test_single():
    check([10], [0, 9, 10, 11, 2**32 - 1])


def test_first_last_and_between():
    keys = list(range(0, 3000, 3))
    check(keys, [-1, 0, 1, 2, 3, 4, keys[-1] - 1, keys[-1], keys[-1] + 1]
          + list(range(0, 3000, 7)))


def test_all_equal():
    keys = [7] * 5000
    check(keys, [6, 7, 8])
    assert core.offset_index_lookup(offset_index(keys), len(keys), 7) == 4999


def test_runs_of_equal_keys():
    keys = sorted(random.Random(1).choices(range(100), k=4000))
    check(keys, range(-1, 102))


@pytest.mark.parametrize("n", [1, 2, 1023, 1024, 1025, 1026, 683, 684, 685, 5000])
def test_warm_section_boundary(n):
    # 8192 bytes of warm entries: 1024 offset entries, 682 time entries
    keys = list(range(10, 10 + 2 * n, 2))
    check(keys, [9, 10, 11] + [keys[i] + d for i in range(0, n, max(1, n // 50))
                               for d in (-1, 0, 1)] + [keys[-1] + 5])


def test_large_random():
    rng = random.Random(3)
    keys = sorted(rng.randrange(2**31) for _ in range(200_000))
    check(keys, [rng.randrange(2**31) for _ in range(2000)] + keys[:10] + keys[-10:])


def test_time_index_signed():
    keys = [-(2**62), -5, 0, 5, 2**62]
    check(keys, [-(2**63), -(2**62) - 1, -5, -4, 0, 2**62, 2**63 - 1])


def test_entries_less_than_buffer_and_buffers():
    keys = list(range(100))
    buf = bytearray(offset_index(keys)) + bytearray(800)  # preallocated zero slots
    assert core.offset_index_lookup(buf, 100, 1000) == 99
    assert core.offset_index_lookup(memoryview(buf), 50, 1000) == 49
    assert core.offset_index_lookup(np.frombuffer(bytes(buf), np.uint8), 100, 50) == 50
    with pytest.raises(ValueError):
        core.offset_index_lookup(buf, 1000, 5)
    with pytest.raises(ValueError):
        core.time_index_lookup(time_index(keys), 101, 5)
    with pytest.raises(ValueError):
        core.offset_index_lookup(buf, -1, 5)

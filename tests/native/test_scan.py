"""scan_batches over concatenated batches with torn or garbled tails."""

import os
import struct

import numpy as np
import pytest

from umlog._native import core


def segment(counts, base=0, codec=0):
    parts, off = [], base
    for i, n in enumerate(counts):
        parts.append(core.encode_batch([b"r%d" % (off + j) * (j + 1) for j in range(n)],
                                       base_offset=off, timestamps=[100 * i + j for j in range(n)],
                                       codec=codec))
        off += n
    return b"".join(parts), parts


COUNTS = [1, 3, 2, 5, 1, 4]


def test_clean():
    seg, parts = segment(COUNTS, base=10)
    r = core.scan_batches(seg, expect_offset=10)
    assert r.error is None and r.error_position == -1
    assert r.count == len(parts) and r.valid_end == len(seg) and r.next_offset == 10 + sum(COUNTS)
    pos = np.cumsum([0] + [len(p) for p in parts[:-1]])
    assert r.positions.dtype == np.int64
    assert r.positions.tolist() == pos.tolist()
    assert r.sizes.tolist() == [len(p) for p in parts]
    assert r.base_offsets.tolist() == (10 + np.cumsum([0] + COUNTS[:-1])).tolist()
    assert r.last_offsets.tolist() == (10 + np.cumsum(COUNTS) - 1).tolist()
    assert r.max_timestamps.tolist() == [100 * i + n - 1 for i, n in enumerate(COUNTS)]


def test_empty_and_ranges():
    r = core.scan_batches(b"")
    assert (r.count, r.valid_end, r.next_offset, r.error) == (0, 0, -1, None)
    assert r.positions.tolist() == []
    seg, parts = segment(COUNTS)
    a = len(parts[0])
    b = a + len(parts[1]) + len(parts[2])
    r = core.scan_batches(seg, a, b, expect_offset=1)
    assert (r.count, r.valid_end, r.next_offset, r.error) == (2, b, 6, None)
    r = core.scan_batches(memoryview(seg), a)
    assert r.count == len(parts) - 1 and r.next_offset == sum(COUNTS)
    r = core.scan_batches(seg, max_batches=2)
    assert (r.count, r.valid_end, r.error) == (2, a + len(parts[1]), None)
    with pytest.raises(ValueError):
        core.scan_batches(seg, 10, 5)


def test_torn_tail_every_cut():
    seg, parts = segment(COUNTS)
    last = len(seg) - len(parts[-1])
    for cut in range(last + 1, len(seg)):
        r = core.scan_batches(seg[:cut], expect_offset=0)
        assert r.count == len(parts) - 1
        assert r.valid_end == last == r.error_position
        assert r.next_offset == sum(COUNTS[:-1])
        assert r.error.startswith(f"truncated batch at position {last}")


@pytest.mark.parametrize("tail,msg", [
    (bytes(100), "bad batchLength 0"),
    (bytes(5), "truncated batch"),
    (b"\xff" * 100, "bad batchLength -1"),
])
def test_garbage_tails(tail, msg):
    seg, parts = segment(COUNTS)
    r = core.scan_batches(seg + tail)
    assert r.count == len(parts) and r.valid_end == len(seg) == r.error_position
    assert msg in r.error


def test_bad_crc_in_middle():
    seg, parts = segment(COUNTS)
    at = len(parts[0]) + len(parts[1])
    bad = bytearray(seg)
    bad[at + 70 if len(parts[2]) > 71 else at + 61] ^= 1
    r = core.scan_batches(bad)
    assert r.count == 2 and r.valid_end == at == r.error_position
    assert r.error.startswith(f"bad CRC at position {at}: stored 0x")
    r = core.scan_batches(bad, check_crc=False)
    assert r.error is None and r.count == len(parts)


def test_bad_magic():
    seg, parts = segment(COUNTS)
    bad = bytearray(seg)
    bad[len(parts[0]) + 16] = 0
    r = core.scan_batches(bad)
    assert r.count == 1 and "bad magic 0" in r.error


def test_offset_not_following():
    seg, parts = segment(COUNTS)
    bad = bytearray(seg)
    at = len(parts[0]) + len(parts[1])
    struct.pack_into(">q", bad, at, 999)
    r = core.scan_batches(bad, expect_offset=0)
    assert r.count == 2 and r.error_position == at and r.next_offset == 4
    assert r.error == f"baseOffset 999 != expected 4 at position {at}"
    assert core.scan_batches(bad).error is None  # not checked without expect_offset
    r = core.scan_batches(seg, expect_offset=5)
    assert r.count == 0 and r.next_offset == 5 and r.error_position == 0


def test_compressed_and_large():
    seg, _ = segment([50] * 40, codec=core.CODEC_ZSTD)
    r = core.scan_batches(seg, expect_offset=0)
    assert r.count == 40 and r.next_offset == 2000
    big = b"".join(core.encode_batch([os.urandom(1000)] * 100, base_offset=100 * i, now_ms=1)
                   for i in range(300))
    r = core.scan_batches(big, expect_offset=0)
    assert r.count == 300 and r.valid_end == len(big) and r.error is None

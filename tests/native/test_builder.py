"""BatchBuilder: grows one record per call; build() equals encode_batch."""

import time

import pytest
from kafka.record.default_records import DefaultRecordBatch

from umlog._native import core


def test_same_bytes_as_encode_batch():
    b = core.BatchBuilder()
    vals = [b"a", None, b"c" * 300, b""]
    keys = [None, b"k", b"", None]
    hdrs = [None, [("x", b"1")], [], [("y", None), ("z", b"")]]
    ts = [5, 3, 9, 9]
    for v, k, h, t in zip(vals, keys, hdrs, ts):
        assert b.append(v, k, h, t) == t
    assert (b.count, b.max_timestamp) == (4, 9)
    size = b.size
    out = b.build(42, producer_id=1, producer_epoch=2, base_sequence=3)
    assert len(out) == size
    assert out == core.encode_batch(vals, keys, hdrs, ts, base_offset=42, producer_id=1,
                                    producer_epoch=2, base_sequence=3)
    assert (b.count, b.size, b.max_timestamp) == (0, 0, -1)


def test_default_timestamp_is_now():
    b = core.BatchBuilder()
    t0 = int(time.time() * 1000)
    t = b.append(b"x")
    assert t0 - 5 <= t <= int(time.time() * 1000) + 5
    assert b.max_timestamp == t
    recs, _ = core.decode_records(b.build(0))
    assert recs[0].timestamp == t


@pytest.mark.parametrize("codec", [0, 1, 2, 3, 4])
def test_codecs_and_reuse(codec):
    b = core.BatchBuilder(codec)
    for round_ in range(3):
        n = 1000 * (round_ + 1)
        for i in range(n):
            b.append(b"value %d" % i, timestamp=i)
        assert b.size > 61
        out = b.build(n * 10, log_append_time=(round_ == 2))
        info = core.validate_batch(out)
        assert info.codec == codec and info.record_count == n
        assert info.timestamp_type == (1 if round_ == 2 else 0)
        recs, _ = core.decode_records(out)
        assert [r.value for r in recs] == [b"value %d" % i for i in range(n)]
        assert recs[-1].offset == n * 10 + n - 1
        kb = DefaultRecordBatch(bytearray(out))
        assert kb.validate_crc()


def test_errors_and_clear():
    b = core.BatchBuilder()
    with pytest.raises(ValueError):
        b.build(0)
    with pytest.raises(TypeError):
        b.append("text")
    with pytest.raises(TypeError):
        b.append(b"v", key=5)
    with pytest.raises(TypeError):
        b.append(b"v", headers=[("k",)])
    assert b.count == 0  # failed appends leave nothing behind
    b.append(b"v", timestamp=1)
    b.clear()
    assert b.count == 0 and b.size == 0
    with pytest.raises(ValueError):
        core.BatchBuilder(9)


def test_large_values_grow_buffer():
    b = core.BatchBuilder()
    big = bytes(range(256)) * 4096
    for i in range(5):
        b.append(big, timestamp=i)
    out = b.build(0)
    assert [r.value == big for r in core.decode_records(out)[0]] == [True] * 5
    b.append(b"small", timestamp=1)
    assert core.decode_records(b.build(0))[0][0].value == b"small"

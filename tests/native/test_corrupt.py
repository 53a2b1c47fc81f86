"""Truncated, bit-flipped and garbage input: validate_batch raises
CorruptBatchError, decode_records raises DecodeError (or returns what is
whole), scan_batches stops with an error; nothing crashes."""

import os
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.oracle import recordbatch as oracle
from umlog._native import core
from umlog.errors import CorruptBatchError, DecodeError

BATCH = core.encode_batch(
    [b"value-%d" % i * (i % 4) for i in range(12)],
    keys=[None if i % 2 else b"k%d" % i for i in range(12)],
    headers=[[("h", b"x"), ("n", None)] if i % 3 == 0 else None for i in range(12)],
    timestamps=[1000 + i for i in range(12)], base_offset=40)
BATCH_GZIP = core.encode_batch([b"value-%d" % i * 20 for i in range(12)], now_ms=1,
                               codec=core.CODEC_GZIP)


@pytest.mark.parametrize("batch", [BATCH, BATCH_GZIP], ids=["none", "gzip"])
def test_truncated_everywhere(batch):
    for cut in range(len(batch)):
        with pytest.raises(CorruptBatchError, match="truncated") as ei:
            core.validate_batch(batch[:cut])
        assert ei.value.position == 0
        # decode treats a cut-off batch as "read more": nothing, next_pos at its start
        assert core.decode_records(batch[:cut]) == ([], 0)
        r = core.scan_batches(batch[:cut])
        assert r.count == 0 and r.valid_end == 0
        assert (r.error is None) == (cut == 0)


def test_truncated_at_nonzero_position():
    buf = BATCH + BATCH[:100]
    with pytest.raises(CorruptBatchError, match=f"truncated batch at position {len(BATCH)}") as ei:
        core.validate_batch(buf, len(BATCH))
    assert ei.value.position == len(BATCH)


def test_crc_message():
    bad = bytearray(BATCH)
    bad[70] ^= 0x10
    stored = struct.unpack_from(">I", bad, 17)[0]
    computed = oracle.crc32c(bytes(bad[21:]))
    with pytest.raises(CorruptBatchError) as ei:
        core.validate_batch(b"\x00" * 4096 + bad, 4096)
    assert str(ei.value) == (f"bad CRC at position 4096: stored {stored:#010x}, "
                             f"computed {computed:#010x}")
    assert ei.value.position == 4096


def recrc(buf):
    buf = bytearray(buf)
    struct.pack_into(">I", buf, 17, oracle.crc32c(bytes(buf[21:])))
    return bytes(buf)


def test_count_mismatch_messages():
    bad = bytearray(BATCH)
    struct.pack_into(">i", bad, 57, 5)
    struct.pack_into(">i", bad, 23, 4)
    with pytest.raises(CorruptBatchError, match=r"record count 5 != 12 records in batch at "
                                                r"position 0"):
        core.validate_batch(recrc(bad))
    struct.pack_into(">i", bad, 57, 13)
    struct.pack_into(">i", bad, 23, 12)
    with pytest.raises(CorruptBatchError, match="record count 13 != 12"):
        core.validate_batch(recrc(bad))
    # lastOffsetDelta must agree with the count
    bad = bytearray(BATCH)
    struct.pack_into(">i", bad, 23, 3)
    with pytest.raises(CorruptBatchError, match="lastOffsetDelta"):
        core.validate_batch(recrc(bad))
    assert core.validate_batch(recrc(bad), check_records=False).last_offset == 43


def test_offset_delta_gap_rejected_by_validate_not_decode():
    recs = b"".join(oracle.encode_record(d, 0, None, b"v", ()) for d in (0, 2))
    tail = struct.pack(">hiqqqhii", 0, 1, 5, 5, -1, -1, -1, 2) + recs
    buf = struct.pack(">qiibI", 0, len(tail) + 9, 0, 2, oracle.crc32c(tail)) + tail
    with pytest.raises(CorruptBatchError, match="offsetDelta 2 != 1"):
        core.validate_batch(buf)
    # compacted segments keep gaps: decode reads the stored deltas
    assert [r.offset for r in core.decode_records(buf)[0]] == [0, 2]


def test_magic_and_length():
    bad = bytearray(BATCH)
    bad[16] = 1
    with pytest.raises(CorruptBatchError, match="bad magic 1 at position 0"):
        core.validate_batch(bad)
    for length in (-1, 0, 48):
        bad = bytearray(BATCH)
        struct.pack_into(">i", bad, 8, length)
        with pytest.raises(CorruptBatchError, match=f"bad batchLength {length}"):
            core.validate_batch(bad)


def test_trailing_bytes_in_records():
    # a batch whose batchLength covers 3 more bytes after the last record
    tail = bytearray(BATCH[12:]) + b"\x00\x00\x00"
    buf = bytearray(BATCH[:12]) + tail
    struct.pack_into(">i", buf, 8, len(tail))
    with pytest.raises(CorruptBatchError):
        core.validate_batch(recrc(buf))
    with pytest.raises(CorruptBatchError):
        core.decode_records(recrc(buf))


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_bit_flips(data):
    batch = data.draw(st.sampled_from([BATCH, BATCH_GZIP]))
    pos = data.draw(st.integers(0, len(batch) - 1))
    bit = data.draw(st.integers(0, 7))
    bad = bytearray(batch)
    bad[pos] ^= 1 << bit
    if pos < 8 or 12 <= pos < 16:
        # baseOffset and partitionLeaderEpoch are outside the CRC, as in Kafka
        core.validate_batch(bad)
    else:
        with pytest.raises(CorruptBatchError) as ei:
            core.validate_batch(bad)
        assert ei.value.position == 0
    # decoding without the CRC check must never crash
    try:
        core.decode_records(bad)
    except DecodeError:
        pass
    r = core.scan_batches(bad)
    assert r.count in (0, 1)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage(blob):
    for fn in (core.validate_batch, core.decode_records):
        try:
            fn(blob)
        except DecodeError:
            pass
    core.scan_batches(blob)


def test_garbage_records_with_valid_header_and_crc():
    # random records sections behind a well-formed header: the record parser
    # must reject or accept every one without reading out of bounds
    rng = random.Random(7)
    for _ in range(3000):
        n = rng.randrange(0, 60)
        recs = bytes(rng.randrange(256) for _ in range(n))
        count = rng.randrange(0, 4)
        tail = struct.pack(">hiqqqhii", 0, count - 1, 0, 0, -1, -1, -1, count) + recs
        buf = struct.pack(">qiibI", 0, len(tail) + 9, 0, 2, oracle.crc32c(tail)) + tail
        for fn in (core.validate_batch, core.decode_records):
            try:
                fn(buf)
            except CorruptBatchError as e:
                assert e.position == 0


def test_huge_lengths_do_not_overflow():
    # record length / key length close to 2**31 in a short batch
    for rec in (oracle.write_varint(2**31 - 1) + b"\x00",
                oracle.write_varint(10) + b"\x00\x00\x00" + oracle.write_varint(2**31 - 1),
                oracle.write_varint(8) + b"\x00\x00\x00\x01" + oracle.write_varint(2**30)
                + b"\x00\x00"):
        tail = struct.pack(">hiqqqhii", 0, 0, 0, 0, -1, -1, -1, 1) + rec
        buf = struct.pack(">qiibI", 0, len(tail) + 9, 0, 2, oracle.crc32c(tail)) + tail
        with pytest.raises(CorruptBatchError):
            core.validate_batch(buf)
        with pytest.raises(CorruptBatchError):
            core.decode_records(buf)


def test_random_bytes_large():
    blob = os.urandom(1 << 16)
    r = core.scan_batches(blob)
    assert r.count == 0 and r.error is not None and r.error_position == 0

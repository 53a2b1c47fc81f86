"""The old message format (magic 0/1) <-> RecordBatch v2 (umlog/_native/legacy.pyx).

The oracle is a small encoder/decoder written here from Kafka's message schema
(LegacyRecord: offset int64, size int32, crc uint32 (zlib's CRC32), magic int8,
attributes int8, [timestamp int64], key bytes, value bytes), with the stdlib's
zlib/gzip and cramjam's raw codecs; kafka-python's own LegacyRecordBatchBuilder
is a second one.
"""

from __future__ import annotations

import gzip
import struct
import zlib

import cramjam
import pytest
from hypothesis import given
from hypothesis import strategies as st

from umlog._native.core import (
    CODEC_GZIP,
    CODEC_LZ4,
    CODEC_NONE,
    CODEC_SNAPPY,
    CODEC_ZSTD,
    batch_info,
    batch_to_legacy,
    crc32,
    decode_records,
    encode_batch,
    legacy_to_batch,
    set_base_offset,
    set_log_append_time,
    validate_batch,
    xxh32,
)
from umlog.errors import CorruptBatchError

# --- the oracle ------------------------------------------------------------------------------


def message(magic: int, offset: int, key, value, timestamp: int = -1, attributes: int = 0) -> bytes:
    body = struct.pack(">bb", magic, attributes)
    if magic == 1:
        body += struct.pack(">q", timestamp)
    for b in (key, value):
        body += struct.pack(">i", -1) if b is None else struct.pack(">i", len(b)) + b
    body = struct.pack(">I", zlib.crc32(body)) + body
    return struct.pack(">qi", offset, len(body)) + body


def xerial(raw: bytes) -> bytes:
    out = b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1)
    for i in range(0, len(raw), 32 * 1024):
        block = bytes(cramjam.snappy.compress_raw(raw[i:i + 32 * 1024]))
        out += struct.pack(">i", len(block)) + block
    return out


def lz4_frame(raw: bytes, broken_checksum: bool) -> bytes:
    c = cramjam.lz4.Compressor(content_checksum=False, block_linked=False)
    c.compress(raw)
    f = bytearray(bytes(c.finish()))
    if broken_checksum:  # Kafka 0.8-0.9: XXH32 over the frame magic and descriptor
        f[6] = (xxh32(bytes(f[:6])) >> 8) & 0xFF
    return bytes(f)


def compress(codec: int, raw: bytes, magic: int, snappy_raw: bool = False) -> bytes:
    if codec == CODEC_GZIP:
        return gzip.compress(raw)
    if codec == CODEC_SNAPPY:
        return bytes(cramjam.snappy.compress_raw(raw)) if snappy_raw else xerial(raw)
    return lz4_frame(raw, broken_checksum=magic == 0)


def decompress(codec: int, data: bytes, magic: int) -> bytes:
    if codec == CODEC_GZIP:
        return gzip.decompress(data)
    if codec == CODEC_SNAPPY:
        assert data[:8] == b"\x82SNAPPY\x00", "xerial framing"
        out, at = b"", 16
        while at < len(data):
            (n,) = struct.unpack_from(">i", data, at)
            out += bytes(cramjam.snappy.decompress_raw(data[at + 4:at + 4 + n]))
            at += 4 + n
        return out
    assert codec == CODEC_LZ4
    expected = (xxh32(data[:6]) if magic == 0 else xxh32(data[4:6])) >> 8 & 0xFF
    assert data[6] == expected, "header checksum as Kafka writes it for this magic"
    fixed = bytearray(data)
    fixed[6] = (xxh32(data[4:6]) >> 8) & 0xFF
    return bytes(cramjam.lz4.decompress(bytes(fixed)))


def parse(buf: bytes, magic: int, wrapper=None) -> list[tuple]:
    """(offset, timestamp, key, value) of every message, inner ones with absolute offsets."""
    out, pos = [], 0
    while pos < len(buf):
        offset, size = struct.unpack_from(">qi", buf, pos)
        body = buf[pos + 12:pos + 12 + size]
        (crc,) = struct.unpack_from(">I", body, 0)
        assert crc == zlib.crc32(body[4:])
        m, attrs = struct.unpack_from(">bb", body, 4)
        assert m == magic
        at = 6
        ts = None
        if m == 1:
            (ts,) = struct.unpack_from(">q", body, at)
            at += 8
        fields = []
        for _ in range(2):
            (n,) = struct.unpack_from(">i", body, at)
            at += 4
            fields.append(None if n < 0 else body[at:at + n])
            at += max(n, 0)
        assert at == len(body)
        codec = attrs & 7
        if codec:
            inner = parse(decompress(codec, fields[1], m), m, wrapper=(offset, ts, attrs))
            if m == 1:  # relative inner offsets: the wrapper holds the last one's absolute offset
                last = inner[-1][0]
                inner = [(offset - last + o, t, k, v) for o, t, k, v in inner]
            out += inner
        else:
            if wrapper is not None and wrapper[2] & 8:
                ts = wrapper[1]
            out.append((offset, ts, fields[0], fields[1]))
        pos += 12 + size
    return out


# --- strategies ---------------------------------------------------------------------------------

blobs = st.one_of(st.none(), st.binary(max_size=40))
records = st.lists(st.tuples(blobs, blobs, st.integers(0, 2**41)), min_size=1, max_size=12)
codecs = st.sampled_from([CODEC_NONE, CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4])


def message_set(magic: int, recs, codec: int, snappy_raw: bool = False, offset0: int = 0) -> bytes:
    if codec == CODEC_NONE:
        return b"".join(message(magic, offset0 + i, k, v, ts) for i, (k, v, ts) in enumerate(recs))
    inner = b"".join(message(magic, i if magic == 1 else offset0 + i, k, v, ts) for i, (k, v, ts) in enumerate(recs))
    return message(magic, offset0 + len(recs) - 1, None, compress(codec, inner, magic, snappy_raw),
                   max(ts for _, _, ts in recs), attributes=codec)


# --- up-conversion (Produce v0-2) ---------------------------------------------------------------


@given(magic=st.sampled_from([0, 1]), sets=st.lists(st.tuples(records, codecs, st.booleans()), min_size=1, max_size=3))
def test_message_sets_become_one_v2_batch(magic, sets):
    data = b"".join(message_set(magic, recs, codec, raw) for recs, codec, raw in sets)
    batch, n = legacy_to_batch(data)
    flat = [r for recs, _, _ in sets for r in recs]
    assert n == len(flat)
    info = validate_batch(batch)
    assert info.base_offset == 0 and info.last_offset == n - 1 and info.producer_id == -1
    first_codec = next((c for _, c, _ in sets if c), CODEC_NONE)
    assert info.codec == first_codec
    got, _ = decode_records(batch)
    assert [(r.offset, r.key, r.value, r.headers) for r in got] == [(i, k, v, ()) for i, (k, v, _) in enumerate(flat)]
    want_ts = [ts if magic == 1 else -1 for _, _, ts in flat]
    assert [r.timestamp for r in got] == want_ts
    assert info.max_timestamp == max(want_ts)


def test_kafka_python_builder_is_read_too():
    from kafka.record.legacy_records import LegacyRecordBatchBuilder

    for magic in (0, 1):
        for codec in (CODEC_NONE, CODEC_GZIP):
            b = LegacyRecordBatchBuilder(magic=magic, compression_type=codec, batch_size=1 << 20)
            for i in range(7):
                b.append(i, timestamp=1000 + i if magic else None, key=None if i % 3 else b"k%d" % i, value=b"v" * i)
            batch, n = legacy_to_batch(bytes(b.build()))
            got, _ = decode_records(batch)
            assert n == 7 and [(r.key, r.value) for r in got] == [(None if i % 3 else b"k%d" % i, b"v" * i)
                                                                  for i in range(7)]
            assert [r.timestamp for r in got] == [1000 + i if magic else -1 for i in range(7)]


def test_log_append_time_wrapper_gives_its_timestamp_to_inner_messages():
    inner = message(1, 0, None, b"a", 5) + message(1, 1, None, b"b", 6)
    data = message(1, 1, None, gzip.compress(inner), 99, attributes=CODEC_GZIP | 8)
    got, _ = decode_records(legacy_to_batch(data)[0])
    assert [r.timestamp for r in got] == [99, 99]


def test_magic_0_lz4_with_a_correct_header_checksum_is_read_too():
    inner = message(0, 0, None, b"x")
    data = message(0, 0, None, lz4_frame(inner, broken_checksum=False), attributes=CODEC_LZ4)
    got, _ = decode_records(legacy_to_batch(data)[0])
    assert [r.value for r in got] == [b"x"]


@given(magic=st.sampled_from([0, 1]), recs=records, codec=codecs, data=st.data())
def test_a_flipped_byte_is_a_bad_crc_naming_the_message(magic, recs, codec, data):
    good = message_set(magic, recs, CODEC_NONE) + message_set(magic, recs, codec)
    second = len(message_set(magic, recs, CODEC_NONE))
    msg_pos = data.draw(st.sampled_from([0, second]))
    (size,) = struct.unpack_from(">i", good, msg_pos + 8)
    at = data.draw(st.integers(msg_pos + 16, msg_pos + 12 + size - 1))  # magic .. end: what the CRC covers
    bad = bytearray(good)
    bad[at] ^= 0x01
    with pytest.raises(CorruptBatchError) as e:
        legacy_to_batch(bytes(bad))
    assert "bad CRC32" in str(e.value) and e.value.position == (second if at >= second else 0)


@given(magic=st.sampled_from([0, 1]), recs=records, codec=codecs, data=st.data())
def test_a_truncated_set_is_refused_clearly(magic, recs, codec, data):
    good = message_set(magic, recs, codec)
    cut = data.draw(st.integers(0, len(good) - 1))
    bounds = [0]  # a cut between two messages leaves a shorter, valid set
    if codec == CODEC_NONE:
        for k, v, ts in recs:
            bounds.append(bounds[-1] + len(message(magic, 0, k, v, ts)))
    if cut in bounds[1:]:
        assert legacy_to_batch(good[:cut])[1] == bounds.index(cut)
        return
    with pytest.raises(CorruptBatchError) as e:
        legacy_to_batch(good[:cut])
    assert "truncated" in str(e.value) or "empty message set" in str(e.value)


@pytest.mark.parametrize("bad, why", [
    (message(2, 0, None, b"x"), "bad magic 2"),
    (message(0, 0, None, b"not gzip", attributes=CODEC_GZIP), "bad gzip data"),
    (message(0, 0, None, b"zz", attributes=CODEC_ZSTD), "unsupported zstd"),
    (message(0, 0, None, gzip.compress(message(0, 0, None, b"x", attributes=CODEC_GZIP)), attributes=CODEC_GZIP),
     "compressed again"),
    (message(1, 0, None, gzip.compress(message(0, 0, None, b"x")), attributes=CODEC_GZIP), "of magic 0"),
    (message(0, 0, None, gzip.compress(b""), attributes=CODEC_GZIP), "holds no messages"),
])
def test_malformed_messages_are_named(bad, why):
    with pytest.raises(CorruptBatchError, match=why):
        legacy_to_batch(bad)


# --- down-conversion (Fetch v0-3) ------------------------------------------------------------


@given(magic=st.sampled_from([0, 1]), recs=st.lists(st.tuples(blobs, blobs, st.integers(0, 2**41)), min_size=1,
                                                     max_size=12),
       codec=st.sampled_from([CODEC_NONE, CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4, CODEC_ZSTD]),
       base=st.integers(0, 2**40), skip=st.integers(0, 12), log_append=st.booleans())
def test_stored_batches_become_messages_of_the_clients_magic(magic, recs, codec, base, skip, log_append):
    batch = bytearray(encode_batch([v for _, v, _ in recs], keys=[k for k, _, _ in recs],
                                   timestamps=[t for _, _, t in recs], headers=[[("h", b"dropped")]] * len(recs),
                                   codec=codec))
    set_base_offset(batch, 0, base)
    if log_append:
        set_log_append_time(batch, 0, 123456)
    second = bytearray(encode_batch([b"second"], codec=CODEC_NONE, timestamps=[7]))
    set_base_offset(second, 0, base + len(recs))
    data = bytes(batch + second)
    start = base + min(skip, len(recs))
    out, next_offset = batch_to_legacy(data, magic, min_offset=start)
    want = [(base + i, (123456 if log_append else t) if magic == 1 else None, k, v)
            for i, (k, v, t) in enumerate(recs) if base + i >= start]
    want.append((base + len(recs), 7 if magic == 1 else None, None, b"second"))
    assert parse(out, magic) == want
    assert next_offset == base + len(recs) + 1
    if codec in (CODEC_GZIP, CODEC_SNAPPY, CODEC_LZ4) and want[:-1]:
        (attrs,) = struct.unpack_from(">b", out, 17)
        assert attrs & 7 == codec  # kept in the batch's codec (zstd: uncompressed)
    # and back: Produce v0-2 of what Fetch v0-3 gave gives the same records again
    again, _ = decode_records(legacy_to_batch(out)[0])
    assert [(r.key, r.value) for r in again] == [(k, v) for _, _, k, v in want]


def test_max_bytes_stops_at_whole_messages():
    batch = encode_batch([b"x" * 10] * 5)
    size = len(message(1, 0, None, b"x" * 10))
    out, nxt = batch_to_legacy(batch, 1, max_bytes=2 * size + size // 2)
    assert len(out) == 2 * size and nxt == 2
    out, nxt = batch_to_legacy(batch, 1, max_bytes=1)  # the first message whatever its size
    assert len(out) == size and nxt == 1
    assert batch_to_legacy(batch, 1, max_bytes=1, at_least_one=False) == (b"", 0)
    gz = encode_batch([b"x" * 10] * 5, codec=CODEC_GZIP)
    whole, _ = batch_to_legacy(gz, 0)
    assert batch_to_legacy(gz, 0, max_bytes=len(whole) - 1, at_least_one=False) == (b"", 0)


def test_partial_trailing_batch_and_control_batches_are_left_out():
    a = encode_batch([b"a"])
    b = bytearray(encode_batch([b"b"]))
    set_base_offset(b, 0, 1)
    out, nxt = batch_to_legacy(a + bytes(b)[:-3], 0)
    assert parse(out, 0) == [(0, None, None, b"a")] and nxt == 1


def test_damaged_stored_batch_is_refused_not_rechecksummed():
    bad = bytearray(encode_batch([b"abc"]))
    bad[-2] ^= 1
    with pytest.raises(CorruptBatchError, match="bad CRC"):
        batch_to_legacy(bytes(bad), 1)


def test_crc32_and_xxh32_match_their_references():
    for data in (b"", b"a", b"abc", bytes(range(256)) * 9):
        assert crc32(data) == zlib.crc32(data)
        assert crc32(data[5:], crc32(data[:5])) == zlib.crc32(data)
    assert [xxh32(b""), xxh32(b"a"), xxh32(b"abc")] == [0x02CC5D05, 0x550D7456, 0x32D153FF]
    assert xxh32(b"Nobody inspects the spammish repetition") == 0xE2293B2F
    assert batch_info(legacy_to_batch(message(0, 0, None, b"v"))[0]).record_count == 1

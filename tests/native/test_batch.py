"""RecordBatch v2 encode/decode: round trips, byte-identical with the oracle,
interop with kafka-python in both directions and with every codec."""

import os
import struct

import cramjam
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords

from tests.native.codec_shims import kafka_codecs
from tests.oracle import recordbatch as oracle
from umlog._native import core
from umlog.errors import CorruptBatchError, DecodeError

CODECS = [core.CODEC_NONE, core.CODEC_GZIP, core.CODEC_SNAPPY, core.CODEC_LZ4,
          core.CODEC_ZSTD]
SIZES = [0, 1, 255, 256, 65535, 65536]

payload = st.one_of(
    st.none(),
    st.binary(max_size=40),
    st.sampled_from(SIZES).map(lambda n: bytes([n % 251]) * n),
)
header = st.tuples(st.text(max_size=10), st.one_of(st.none(), st.binary(max_size=20)))
timestamp = st.one_of(st.none(), st.integers(0, 2**41), st.integers(-2**62, 2**62))


@st.composite
def batches(draw, max_records=8):
    n = draw(st.integers(1, max_records))
    values = draw(st.lists(payload, min_size=n, max_size=n))
    keys = draw(st.one_of(st.none(), st.lists(payload, min_size=n, max_size=n)))
    headers = draw(st.one_of(st.none(), st.lists(
        st.one_of(st.none(), st.lists(header, max_size=3)), min_size=n, max_size=n)))
    timestamps = draw(st.one_of(st.none(), st.lists(timestamp, min_size=n, max_size=n)))
    if timestamps is not None and any(t is not None for t in timestamps):
        # deltas from the first timestamp must fit a varlong
        ts = [t for t in timestamps if t is not None]
        if max(ts) - min(min(ts), 0) >= 2**62 or min(ts) < -2**61:
            timestamps = [None if t is None else t % 2**40 for t in timestamps]
    return values, keys, headers, timestamps


def expected_records(values, keys, headers, timestamps, now, base=0):
    n = len(values)
    out = []
    for i in range(n):
        ts = now if timestamps is None or timestamps[i] is None else timestamps[i]
        hs = tuple((k, v) for k, v in (headers[i] or ())) if headers else ()
        out.append(core.Record(base + i, ts, keys[i] if keys else None, values[i], hs))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches(), st.integers(0, 2**40))
def test_round_trip_and_oracle(b, base):
    values, keys, headers, timestamps = b
    now = 1_700_000_000_000
    enc = core.encode_batch(values, keys, headers, timestamps, base_offset=base, now_ms=now)
    # byte-identical with the oracle's encoding
    assert enc == oracle.encode_batch(values, keys, headers, timestamps, base_offset=base,
                                      now_ms=now)
    recs, nxt = core.decode_records(enc)
    assert nxt == len(enc)
    assert recs == expected_records(values, keys, headers, timestamps, now, base)
    info = core.validate_batch(enc)
    assert info.size == len(enc)
    assert info.record_count == len(values)
    assert info.last_offset == base + len(values) - 1
    ob, _ = oracle.decode_batch(enc)
    assert [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in ob.records] == [
        (r.offset, r.timestamp, r.key, r.value, r.headers) for r in recs]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches(max_records=5), st.sampled_from(CODECS[1:]))
def test_round_trip_compressed(b, codec):
    values, keys, headers, timestamps = b
    enc = core.encode_batch(values, keys, headers, timestamps, now_ms=5, codec=codec)
    info = core.validate_batch(enc)
    assert info.codec == codec
    recs, _ = core.decode_records(enc, check_crc=True)
    assert recs == expected_records(values, keys, headers, timestamps, 5)


@pytest.mark.parametrize("size", SIZES)
def test_sizes(size):
    v = os.urandom(size)
    enc = core.encode_batch([v, None, v], keys=[v, v, None], now_ms=1)
    recs, _ = core.decode_records(enc)
    assert [(r.key, r.value) for r in recs] == [(v, v), (v, None), (None, v)]


def test_header_fields():
    enc = core.encode_batch([b"a", b"b"], timestamps=[10, 5], base_offset=100,
                            producer_id=77, producer_epoch=3, base_sequence=9,
                            partition_leader_epoch=4)
    i = core.validate_batch(enc)
    assert (i.base_offset, i.last_offset, i.first_timestamp, i.max_timestamp) == (100, 101,
                                                                                   10, 10)
    assert (i.producer_id, i.producer_epoch, i.base_sequence,
            i.partition_leader_epoch) == (77, 3, 9, 4)
    assert (i.attributes, i.codec, i.timestamp_type, i.is_transactional,
            i.is_control) == (0, 0, 0, False, False)
    assert i.crc == struct.unpack_from(">I", enc, 17)[0]
    j = core.batch_info(enc)
    assert repr(i) == repr(j)


def test_now_default_is_current_time():
    import time
    t0 = int(time.time() * 1000)
    recs, _ = core.decode_records(core.encode_batch([b"x"]))
    assert t0 - 5 <= recs[0].timestamp <= int(time.time() * 1000) + 5


def test_log_append_time():
    enc = core.encode_batch([b"a", b"b"], timestamps=[1, 2], now_ms=500,
                            log_append_time=True)
    i = core.validate_batch(enc)
    assert i.timestamp_type == 1 and i.max_timestamp == 500
    assert [r.timestamp for r in core.decode_records(enc)[0]] == [500, 500]
    kb = DefaultRecordBatch(bytearray(enc))
    assert kb.validate_crc()
    assert [r.timestamp for r in kb] == [500, 500]


def test_set_log_append_time():
    enc = bytearray(core.encode_batch([b"a", b"b"], timestamps=[1, 2]))
    core.set_log_append_time(enc, 0, 777)
    i = core.validate_batch(enc)
    assert i.timestamp_type == 1 and i.max_timestamp == 777
    assert [r.timestamp for r in core.decode_records(enc)[0]] == [777, 777]
    with pytest.raises((TypeError, BufferError)):
        core.set_log_append_time(bytes(enc), 0, 1)


def test_set_base_offset():
    enc = bytearray(core.encode_batch([b"a", b"b"], now_ms=1))
    crc = core.validate_batch(enc).crc
    core.set_base_offset(enc, 0, 2**40)
    i = core.validate_batch(enc)
    assert i.base_offset == 2**40 and i.crc == crc
    assert [r.offset for r in core.decode_records(enc)[0]] == [2**40, 2**40 + 1]
    two = enc + enc
    core.set_base_offset(two, len(enc), 5)
    assert core.batch_info(two, len(enc)).base_offset == 5
    with pytest.raises(DecodeError):
        core.set_base_offset(enc, len(enc) - 10, 1)
    with pytest.raises((TypeError, BufferError)):
        core.set_base_offset(bytes(enc), 0, 1)


def test_buffer_inputs():
    vals = [bytearray(b"ab"), memoryview(b"xcd")[1:], np.frombuffer(b"ef", np.uint8), b"gh"]
    enc = core.encode_batch(vals, keys=[b"k", bytearray(b"k2"), None, memoryview(b"k4")],
                            headers=[[("a", bytearray(b"1"))], None, [(b"b", None)], []],
                            now_ms=1)
    recs, _ = core.decode_records(memoryview(enc))
    assert [r.value for r in recs] == [b"ab", b"cd", b"ef", b"gh"]
    assert [r.key for r in recs] == [b"k", b"k2", None, b"k4"]
    assert [r.headers for r in recs] == [(("a", b"1"),), (), (("b", None),), ()]
    assert core.decode_records(np.frombuffer(enc, np.uint8))[0] == recs
    assert core.encode_batch(tuple(vals), now_ms=1) == core.encode_batch(
        [bytes(v) for v in vals], now_ms=1)


def test_encode_errors():
    with pytest.raises(ValueError):
        core.encode_batch([])
    with pytest.raises(ValueError):
        core.encode_batch([b"a"], keys=[b"a", b"b"])
    with pytest.raises(ValueError):
        core.encode_batch([b"a"], timestamps=[])
    with pytest.raises(ValueError):
        core.encode_batch([b"a"], headers=[None, None])
    with pytest.raises(ValueError):
        core.encode_batch([b"a"], codec=5)
    with pytest.raises(TypeError):
        core.encode_batch(["text"])
    with pytest.raises(TypeError):
        core.encode_batch([1])
    with pytest.raises(TypeError):
        core.encode_batch([b"a"], keys=["k"])
    with pytest.raises(TypeError):
        core.encode_batch([b"a"], headers=[[("k",)]])
    with pytest.raises(TypeError):
        core.encode_batch([b"a"], headers=[[(None, b"v")]])
    with pytest.raises(TypeError):
        core.encode_batch([b"a"], timestamps=["x"])


# --- kafka-python interop ---------------------------------------------------------

def kafka_build(records, codec=0, base_offset=0, transactional=False, producer=(-1, -1, -1)):
    with kafka_codecs():
        b = DefaultRecordBatchBuilder(magic=2, compression_type=codec,
                                      is_transactional=transactional,
                                      producer_id=producer[0], producer_epoch=producer[1],
                                      base_sequence=producer[2], batch_size=10**7)
        for i, (ts, k, v, h) in enumerate(records):
            b.append(i, ts, k, v, h)
        buf = bytes(b.build())
    if base_offset:
        buf = bytearray(buf)
        core.set_base_offset(buf, 0, base_offset)
        buf = bytes(buf)
    return buf


def sample_records(n=200):
    return [(1_700_000_000_000 + i, None if i % 3 else b"key%d" % i,
             None if i % 17 == 5 else b"value %d " % i * 20,
             [(f"h{j}", b"x" * j) for j in range(i % 3)]) for i in range(n)]


@pytest.mark.parametrize("codec", CODECS)
def test_kafka_python_batches_decode(codec):
    recs = sample_records()
    buf = kafka_build(recs, codec=codec, base_offset=1000, producer=(5, 1, 42))
    info = core.validate_batch(buf)
    assert info.codec == codec  # the data compresses, so kafka-python kept the codec
    assert (info.producer_id, info.producer_epoch, info.base_sequence) == (5, 1, 42)
    got, nxt = core.decode_records(buf, check_crc=True)
    assert nxt == len(buf)
    assert [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in got] == [
        (1000 + i, ts, k, v, h) for i, (ts, k, v, h) in enumerate(recs)]


@pytest.mark.parametrize("codec", CODECS)
def test_our_batches_in_kafka_python(codec):
    recs = sample_records()
    enc = core.encode_batch([r[2] for r in recs], keys=[r[1] for r in recs],
                            headers=[r[3] for r in recs], timestamps=[r[0] for r in recs],
                            base_offset=7, codec=codec)
    enc2 = core.encode_batch([b"tail"], base_offset=7 + len(recs), now_ms=1, codec=codec)
    with kafka_codecs():
        mr = MemoryRecords(enc + enc2)
        batch = mr.next_batch()
        assert batch.compression_type == codec
        assert batch.validate_crc()
        got = [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in batch]
        tail = mr.next_batch()
        assert [r.value for r in tail] == [b"tail"]
        assert mr.next_batch() is None
    assert got == [(7 + i, ts, k, v, h) for i, (ts, k, v, h) in enumerate(recs)]


def test_kafka_python_transactional_flags_pass_through():
    buf = kafka_build(sample_records(3), transactional=True, producer=(9, 0, 0))
    info = core.validate_batch(buf)
    assert info.is_transactional and not info.is_control
    assert len(core.decode_records(buf)[0]) == 3


# --- codec framing ------------------------------------------------------------------

def rewrap(enc, codec, compressed):
    """The uncompressed batch enc with its records section replaced."""
    hdr = bytearray(enc[:61])
    struct.pack_into(">i", hdr, 8, 49 + len(compressed))
    attrs = struct.unpack_from(">h", hdr, 21)[0] | codec
    struct.pack_into(">h", hdr, 21, attrs)
    out = hdr + compressed
    struct.pack_into(">I", out, 17, oracle.crc32c(bytes(out[21:])))
    return bytes(out)


def test_snappy_xerial_on_encode():
    enc = core.encode_batch([b"abc" * 30000], now_ms=1, codec=core.CODEC_SNAPPY)
    body = enc[61:]
    assert body[:8] == b"\x82SNAPPY\x00"
    assert struct.unpack_from(">ii", body, 8) == (1, 1)
    # 32 KiB blocks, as the Java client writes
    raw = core.encode_batch([b"abc" * 30000], now_ms=1)[61:]
    blocks, at = [], 16
    while at < len(body):
        (n,) = struct.unpack_from(">i", body, at)
        blocks.append(bytes(cramjam.snappy.decompress_raw(body[at + 4:at + 4 + n])))
        at += 4 + n
    assert b"".join(blocks) == raw
    assert [len(b) for b in blocks[:-1]] == [32768] * (len(blocks) - 1)


def test_snappy_raw_accepted():
    values = [b"v%d" % i * 50 for i in range(100)]
    plain = core.encode_batch(values, now_ms=1)
    batch = rewrap(plain, 2, bytes(cramjam.snappy.compress_raw(plain[61:])))
    core.validate_batch(batch)
    assert [r.value for r in core.decode_records(batch)[0]] == values


def test_zstd_without_content_size():
    values = [b"z%d" % i * 50 for i in range(100)]
    plain = core.encode_batch(values, now_ms=1)
    c = cramjam.zstd.Compressor()
    c.compress(plain[61:])
    frame = bytes(c.finish())
    assert frame[4] & 0xC0 == 0  # no Frame_Content_Size
    batch = rewrap(plain, 4, frame)
    core.validate_batch(batch)
    assert [r.value for r in core.decode_records(batch)[0]] == values


def test_lz4_frame_independent_blocks():
    enc = core.encode_batch([os.urandom(100) * 3 for _ in range(2000)], now_ms=1,
                            codec=core.CODEC_LZ4)
    body = enc[61:]
    assert body[:4] == b"\x04\x22\x4d\x18"
    assert body[4] & 0x20, "Kafka's Java LZ4 reader needs independent blocks"


@pytest.mark.parametrize("codec", CODECS[1:])
def test_bad_compressed_data(codec):
    plain = core.encode_batch([b"x" * 100] * 10, now_ms=1)
    batch = rewrap(plain, codec, b"\x00garbage, not compressed" * 3)
    with pytest.raises(CorruptBatchError, match="position 0") as ei:
        core.validate_batch(batch)
    assert ei.value.position == 0
    with pytest.raises(CorruptBatchError):
        core.decode_records(batch)


def test_unknown_codec():
    plain = core.encode_batch([b"x"], now_ms=1)
    batch = rewrap(plain, 6, plain[61:])
    with pytest.raises(CorruptBatchError, match="codec"):
        core.validate_batch(batch)
    # header-only checks pass
    assert core.validate_batch(batch, check_records=False).codec == 6


# --- decode_records options -----------------------------------------------------------

def segment(counts, base=0):
    out, off = [], base
    for n in counts:
        out.append(core.encode_batch([b"%d" % (off + i) for i in range(n)], base_offset=off,
                                     now_ms=off))
        off += n
    return b"".join(out), out


def test_decode_min_offset_and_max_records():
    seg, parts = segment([3, 4, 5])
    recs, nxt = core.decode_records(seg, min_offset=5)
    assert [r.offset for r in recs] == list(range(5, 12)) and nxt == len(seg)
    # max_records ending exactly at a batch boundary
    recs, nxt = core.decode_records(seg, max_records=3)
    assert [r.offset for r in recs] == [0, 1, 2] and nxt == len(parts[0])
    # stopping mid-batch: next_pos is that batch's start
    recs, nxt = core.decode_records(seg, max_records=5)
    assert [r.offset for r in recs] == [0, 1, 2, 3, 4] and nxt == len(parts[0])
    recs2, nxt2 = core.decode_records(seg, nxt, min_offset=5, max_records=100)
    assert [r.offset for r in recs2] == list(range(5, 12)) and nxt2 == len(seg)
    assert core.decode_records(seg, max_records=0) == ([], 0)
    recs, nxt = core.decode_records(seg, min_offset=3, max_records=4)
    assert [r.offset for r in recs] == [3, 4, 5, 6] and nxt == len(parts[0]) + len(parts[1])


def test_decode_end_cuts_batch():
    seg, parts = segment([3, 4])
    for end in range(len(parts[0]), len(seg)):
        recs, nxt = core.decode_records(seg, 0, end)
        assert [r.offset for r in recs] == [0, 1, 2] and nxt == len(parts[0])
    assert core.decode_records(seg, 0, len(parts[0]) - 1) == ([], 0)
    recs, nxt = core.decode_records(seg[:len(seg) - 1])
    assert len(recs) == 3 and nxt == len(parts[0])


def test_decode_topic_partition_and_position():
    seg, parts = segment([2, 2])
    recs, _ = core.decode_records(bytearray(b"junk" + seg), 4 + len(parts[0]),
                                  topic="orders", partition=3)
    assert [(r.offset, r.topic, r.partition) for r in recs] == [(2, "orders", 3),
                                                                 (3, "orders", 3)]
    with pytest.raises(ValueError):
        core.decode_records(seg, 5, 2)
    with pytest.raises(ValueError):
        core.decode_records(seg, 0, len(seg) + 1)


def test_control_batches_skipped():
    ctrl = bytearray(core.encode_batch([b"\x00\x00\x00\x00\x00\x00"], keys=[b"\x00\x00\x00\x00"],
                                       base_offset=2, now_ms=1))
    struct.pack_into(">h", ctrl, 21, core.ATTR_CONTROL | core.ATTR_TRANSACTIONAL)
    struct.pack_into(">I", ctrl, 17, core.crc32c(bytes(ctrl[21:])))
    assert core.validate_batch(ctrl).is_control
    seg = (core.encode_batch([b"a", b"b"], now_ms=1) + bytes(ctrl)
           + core.encode_batch([b"c"], base_offset=3, now_ms=1))
    recs, nxt = core.decode_records(seg)
    assert [r.offset for r in recs] == [0, 1, 3] and nxt == len(seg)


def test_check_crc_in_decode():
    enc = bytearray(core.encode_batch([b"hello"], now_ms=1))
    enc[-2] ^= 1
    core.decode_records(enc)  # not checked by default
    with pytest.raises(CorruptBatchError, match="CRC"):
        core.decode_records(enc, check_crc=True)


def test_magic_and_length_errors_in_decode():
    enc = bytearray(core.encode_batch([b"hello"], now_ms=1))
    bad = bytearray(enc)
    bad[16] = 1
    with pytest.raises(CorruptBatchError, match="magic"):
        core.decode_records(bad)
    bad = bytearray(enc)
    struct.pack_into(">i", bad, 8, 20)
    with pytest.raises(CorruptBatchError, match="batchLength"):
        core.decode_records(bad)


def test_record_class():
    r = core.Record(1, 2, b"k", b"v", [("a", b"b")], "t", 0)
    assert r.headers == (("a", b"b"),)
    assert r == core.Record(1, 2, b"k", b"v", (("a", b"b"),), "t", 0)
    assert r != core.Record(1, 2, b"k", b"v2", (("a", b"b"),), "t", 0)
    assert hash(r) == hash(core.Record(1, 2, b"k", b"v", (("a", b"b"),), "t", 0))
    assert core.Record(0, 0, None, None).headers == ()
    assert core.Record(0, 0, None, None).partition == -1
    with pytest.raises(AttributeError):
        r.value = b"x"
    import pickle
    assert pickle.loads(pickle.dumps(r)) == r
    assert "offset=1" in repr(r)


def test_inputs_mutated_during_encode_are_an_error_not_an_overrun():
    values = [b"x" * 100 for _ in range(10)]
    hdrs = [[("h", b"y" * 50)] for _ in range(10)]

    class Evil:
        def __index__(self):
            values[:] = [b"" for _ in range(len(values))]
            hdrs[0][:] = [("h", b"z" * 5000)]
            return 5

    with pytest.raises(RuntimeError):
        core.encode_batch(values, timestamps=[Evil()] + [1] * 9)
    values[:] = [b"x" * 100 for _ in range(10)]

    class Shrink:
        def __index__(self):
            del values[5:]
            return 5

    with pytest.raises(RuntimeError):
        core.encode_batch(values, timestamps=[Shrink()] + [1] * 9)
    values[:] = [b"x" * 100 for _ in range(10)]
    with pytest.raises(RuntimeError):
        core.encode_batch(values, headers=hdrs, timestamps=[1] * 9 + [Evil()])

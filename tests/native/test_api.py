"""The native core's public surface: every name of core.pyi exists and works
end to end on a small batch (the quick smoke test; the other files go deep)."""

import pytest

import umlog._native as native
from umlog._native import core
from umlog.errors import CorruptBatchError, DecodeError

NAMES = [
    "BATCH_HEADER_SIZE", "LOG_OVERHEAD", "MAGIC", "CODEC_NONE", "CODEC_GZIP",
    "CODEC_SNAPPY", "CODEC_LZ4", "CODEC_ZSTD", "ATTR_TIMESTAMP_TYPE",
    "ATTR_TRANSACTIONAL", "ATTR_CONTROL", "crc32c", "crc32c_sw",
    "crc32c_hw_available", "size_of_varint", "write_varint", "read_varint",
    "size_of_varlong", "write_varlong", "read_varlong", "murmur2",
    "partition_for_key", "Record", "BatchInfo", "encode_batch",
    "encode_batch_arrow", "BatchBuilder", "validate_batch", "batch_info",
    "set_base_offset", "set_log_append_time", "decode_records", "ScanResult",
    "scan_batches", "offset_index_lookup", "time_index_lookup",
]


@pytest.mark.parametrize("name", NAMES)
def test_name_exported(name):
    assert hasattr(core, name)
    assert getattr(native, name) is getattr(core, name)
    assert name in native.__all__


def test_constants():
    assert core.BATCH_HEADER_SIZE == 61
    assert core.LOG_OVERHEAD == 12
    assert core.MAGIC == 2
    assert (core.CODEC_NONE, core.CODEC_GZIP, core.CODEC_SNAPPY, core.CODEC_LZ4,
            core.CODEC_ZSTD) == (0, 1, 2, 3, 4)
    assert (core.ATTR_TIMESTAMP_TYPE, core.ATTR_TRANSACTIONAL, core.ATTR_CONTROL) == (
        0x08, 0x10, 0x20)


def test_round_trip_small():
    b = core.encode_batch(
        [b"a", None, b"ccc"], keys=[None, b"k", b"kk"],
        headers=[None, [("h", b"x")], [("e", None)]],
        timestamps=[1000, None, 999], now_ms=1234, base_offset=5)
    info = core.validate_batch(b)
    assert (info.base_offset, info.last_offset, info.record_count) == (5, 7, 3)
    assert (info.first_timestamp, info.max_timestamp) == (1000, 1234)
    assert info.size == len(b)
    recs, nxt = core.decode_records(b, topic="t", partition=2)
    assert nxt == len(b)
    assert recs == [
        core.Record(5, 1000, None, b"a", (), "t", 2),
        core.Record(6, 1234, b"k", None, (("h", b"x"),), "t", 2),
        core.Record(7, 999, b"kk", b"ccc", (("e", None),), "t", 2),
    ]
    assert recs[0].headers == ()


def test_errors_are_the_tree():
    b = core.encode_batch([b"x"], now_ms=1)
    with pytest.raises(CorruptBatchError) as ei:
        core.validate_batch(b[:-1])
    assert ei.value.position == 0
    assert "truncated" in str(ei.value)
    with pytest.raises(DecodeError):
        core.read_varint(b"\x80")

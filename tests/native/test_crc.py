"""CRC32C: published vectors, hardware == table on every small length and
alignment, and agreement with independent implementations."""

import os

import crc32c as crc32c_pkg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.record import _crc32c as kafka_crc

from tests.oracle import recordbatch as oracle
from umlog._native import core

# RFC 3720 (iSCSI) B.4 and the usual check value
VECTORS = [
    (b"", 0x00000000),
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (bytes.fromhex(
        "01c00000000000000000000000000000"
        "14000000000004000000001400000018"
        "28000000000000000200000000000000"), 0xD9963A56),
]

IMPLS = [core.crc32c, core.crc32c_sw]


@pytest.mark.parametrize("fn", IMPLS, ids=["dispatch", "sw"])
@pytest.mark.parametrize("data,expected", VECTORS)
def test_vectors(fn, data, expected):
    assert fn(data) == expected


def test_oracle_vectors():
    for data, expected in VECTORS:
        assert oracle.crc32c(data) == expected


@pytest.mark.parametrize("fn", IMPLS, ids=["dispatch", "sw"])
def test_buffer_types(fn):
    data = b"123456789"
    for buf in (data, bytearray(data), memoryview(data), memoryview(b"xx" + data)[2:]):
        assert fn(buf) == 0xE3069283
    import numpy as np
    assert fn(np.frombuffer(data, dtype=np.uint8)) == 0xE3069283


def test_hw_flag():
    assert isinstance(core.crc32c_hw_available(), bool)


@pytest.mark.parametrize("fn", IMPLS, ids=["dispatch", "sw"])
def test_continuation(fn):
    data = os.urandom(100_000)
    for cut in (0, 1, 7, 8, 9, 4095, 50_000, 99_999, 100_000):
        assert fn(data[cut:], fn(data[:cut])) == fn(data)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=0, max_size=300), align=st.integers(0, 15))
def test_hw_equals_sw_small(data, align):
    buf = memoryview(bytes(align) + data)[align:]
    expected = crc32c_pkg.crc32c(data)
    assert core.crc32c(buf) == expected
    assert core.crc32c_sw(buf) == expected


def test_every_length_and_alignment():
    blob = os.urandom(300 + 16)
    for align in range(16):
        for n in range(301):
            mv = memoryview(blob)[align:align + n]
            assert core.crc32c(mv) == core.crc32c_sw(mv), (align, n)


@pytest.mark.parametrize("n", [767, 768, 769, 24575, 24576, 24577, 3 * 8192 * 2 + 3 * 256 + 13,
                               1 << 20, (1 << 20) + 5])
def test_lane_boundaries(n):
    data = os.urandom(n)
    expected = crc32c_pkg.crc32c(data)
    assert core.crc32c(data) == expected
    assert core.crc32c_sw(data) == expected
    assert core.crc32c(memoryview(b"\x00" + data)[1:]) == expected


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=2000))
def test_against_oracle_and_kafka(data):
    assert core.crc32c(data) == oracle.crc32c(data) == kafka_crc.crc(data)


def test_type_errors():
    with pytest.raises(TypeError):
        core.crc32c("text")
    with pytest.raises((TypeError, OverflowError)):
        core.crc32c(b"", -1)

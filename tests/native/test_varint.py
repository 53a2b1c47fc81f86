"""Zig-zag varints: boundary tables at the 2**7 .. 2**63 edges (both signs),
round trips, and DecodeError on truncated or overlong input."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.oracle import recordbatch as oracle
from umlog._native import core
from umlog.errors import DecodeError


def edges(bits):
    out = {0, 1, -1}
    for k in range(6, bits):
        for v in (1 << k, -(1 << k)):
            out.update({v - 1, v, v + 1})
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return sorted(v for v in out | {lo, hi, lo + 1, hi - 1} if lo <= v <= hi)


def expected_size(v, bits):
    u = ((v << 1) ^ (v >> (bits - 1))) & ((1 << bits) - 1)
    return max(1, (u.bit_length() + 6) // 7)


@pytest.mark.parametrize("v", edges(32))
def test_varint_edges(v):
    enc = core.write_varint(v)
    assert enc == oracle.write_varint(v)
    assert len(enc) == core.size_of_varint(v) == expected_size(v, 32)
    assert core.read_varint(enc) == (v, len(enc))
    assert core.read_varint(b"\xaa" + enc + b"\x00", 1) == (v, len(enc) + 1)


@pytest.mark.parametrize("v", edges(64))
def test_varlong_edges(v):
    enc = core.write_varlong(v)
    assert enc == oracle.write_varlong(v)
    assert len(enc) == core.size_of_varlong(v) == expected_size(v, 64)
    assert core.read_varlong(enc) == (v, len(enc))


@pytest.mark.parametrize("v,enc", [
    (0, b"\x00"), (-1, b"\x01"), (1, b"\x02"), (-64, b"\x7f"), (64, b"\x80\x01"),
    (2**31 - 1, b"\xfe\xff\xff\xff\x0f"), (-2**31, b"\xff\xff\xff\xff\x0f"),
])
def test_known_encodings(v, enc):
    assert core.write_varint(v) == enc


def test_varlong_extremes():
    assert core.write_varlong(2**63 - 1) == b"\xfe" + b"\xff" * 8 + b"\x01"
    assert core.write_varlong(-2**63) == b"\xff" * 9 + b"\x01"
    assert core.size_of_varlong(-2**63) == 10


@given(st.integers(-2**31, 2**31 - 1))
def test_varint_round_trip(v):
    enc = core.write_varint(v)
    assert core.read_varint(enc) == (v, len(enc))
    assert oracle.read_varint(enc) == (v, len(enc))


@given(st.integers(-2**63, 2**63 - 1))
def test_varlong_round_trip(v):
    enc = core.write_varlong(v)
    assert core.read_varlong(enc) == (v, len(enc))


@pytest.mark.parametrize("v", [2**31, -2**31 - 1, 2**40])
def test_varint_range(v):
    with pytest.raises(ValueError):
        core.write_varint(v)
    with pytest.raises(ValueError):
        core.size_of_varint(v)


@pytest.mark.parametrize("v", [2**63, -2**63 - 1])
def test_varlong_range(v):
    with pytest.raises(ValueError):
        core.write_varlong(v)
    with pytest.raises(ValueError):
        core.size_of_varlong(v)


@pytest.mark.parametrize("v", edges(32))
def test_varint_truncated(v):
    enc = core.write_varint(v)
    for cut in range(len(enc)):
        with pytest.raises(DecodeError, match="truncated"):
            core.read_varint(enc[:cut])


@pytest.mark.parametrize("v", edges(64)[::7])
def test_varlong_truncated(v):
    enc = core.write_varlong(v)
    for cut in range(len(enc)):
        with pytest.raises(DecodeError, match="truncated"):
            core.read_varlong(enc[:cut])


def test_overlong():
    with pytest.raises(DecodeError, match="too long"):
        core.read_varint(b"\x80" * 5 + b"\x00")
    with pytest.raises(DecodeError, match="too long"):
        core.read_varlong(b"\x80" * 10 + b"\x00")
    # 5 (10) bytes without continuation on the last are accepted, as Java does
    assert core.read_varint(b"\x80\x80\x80\x80\x00") == (0, 5)
    assert core.read_varlong(b"\x80" * 9 + b"\x00") == (0, 10)


def test_positions():
    with pytest.raises(DecodeError):
        core.read_varint(b"\x00", 1)
    with pytest.raises(ValueError):
        core.read_varint(b"\x00", -1)
    assert core.read_varint(memoryview(b"\x00\x02"), 1) == (1, 2)
    assert issubclass(DecodeError, ValueError)

"""murmur2 is Kafka's Utils.murmur2; kafka-python's copy is the oracle."""

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kafka.partitioner.default import murmur2 as kafka_murmur2

from umlog._native import core


def signed(v):
    return v - (1 << 32) if v >= 1 << 31 else v


@pytest.mark.parametrize("key", [b"", b"a", b"ab", b"abc", b"abcd", b"abcde",
                                 b"21", b"foobar", b"a-little-bit-long-string",
                                 b"a-little-bit-longer-string", b"\xff" * 33,
                                 bytes(range(256))])
def test_known(key):
    assert core.murmur2(key) == signed(kafka_murmur2(key))


# Values Kafka's own UtilsTest.testMurmur2 asserts
@pytest.mark.parametrize("key,expected", [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
])
def test_java_values(key, expected):
    assert core.murmur2(key) == expected


@given(st.binary(max_size=200))
def test_random(key):
    assert core.murmur2(key) == signed(kafka_murmur2(key))


def test_partition_for_key():
    for _ in range(200):
        key = os.urandom(os.urandom(1)[0] % 40)
        for n in (1, 2, 3, 12, 1000):
            p = core.partition_for_key(key, n)
            assert p == (kafka_murmur2(key) & 0x7FFFFFFF) % n
    with pytest.raises(ValueError):
        core.partition_for_key(b"k", 0)
    assert core.murmur2(memoryview(b"xfoobar")[1:]) == -790332482

"""encode_batch_arrow reads Arrow buffers and equals encode_batch."""

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from umlog._native import core

payload = st.one_of(st.none(), st.binary(max_size=30))


@settings(max_examples=100, deadline=None)
@given(st.lists(payload, min_size=1, max_size=20), st.data(),
       st.sampled_from([pa.binary(), pa.large_binary()]), st.integers(0, 3))
def test_equals_encode_batch(values, data, typ, codec):
    n = len(values)
    keys = data.draw(st.one_of(st.none(), st.lists(payload, min_size=n, max_size=n)))
    ts = data.draw(st.one_of(st.none(), st.lists(
        st.one_of(st.none(), st.integers(0, 2**45)), min_size=n, max_size=n)))
    got = core.encode_batch_arrow(
        pa.array(values, typ), None if keys is None else pa.array(keys, typ),
        None if ts is None else pa.array(ts, pa.int64()), base_offset=3, now_ms=77,
        codec=codec)
    want = core.encode_batch(values, keys, None, ts, base_offset=3, now_ms=77, codec=codec)
    if codec == 0:
        assert got == want
    assert core.decode_records(got) == core.decode_records(want)


def test_slices_strings_chunks_timestamps():
    vals = pa.array(["zero", None, "two", "three", "four"])[1:]
    keys = pa.array([b"a", b"b", None, b"d", b"e"], pa.large_binary())[1:]
    ts = pa.array([1, 2, None, 4, 5], pa.timestamp("ms"))[1:]
    got = core.encode_batch_arrow(vals, keys, ts, now_ms=9)
    recs, _ = core.decode_records(got)
    assert [(r.key, r.value, r.timestamp) for r in recs] == [
        (b"b", None, 2), (None, b"two", 9), (b"d", b"three", 4), (b"e", b"four", 5)]
    chunked = pa.chunked_array([[b"a"], [b"b", b"c"]])
    assert core.encode_batch_arrow(chunked, now_ms=1) == core.encode_batch(
        [b"a", b"b", b"c"], now_ms=1)


def test_errors():
    with pytest.raises(ValueError):
        core.encode_batch_arrow(pa.array([], pa.binary()))
    with pytest.raises(TypeError):
        core.encode_batch_arrow(pa.array([1, 2]))
    with pytest.raises(ValueError):
        core.encode_batch_arrow(pa.array([b"a"]), keys=pa.array([b"a", b"b"]))
    with pytest.raises(ValueError):
        core.encode_batch_arrow(pa.array([b"a"]), codec=7)

"""The native halves of compaction: record_keys and BatchFilter (compact.pyx)."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from umlog._native import core
from umlog.errors import CorruptBatchError

payload = st.one_of(st.none(), st.binary(max_size=20))
header = st.tuples(st.text(max_size=4), st.one_of(st.none(), st.binary(max_size=6)))


@st.composite
def batches(draw, min_batches=1, max_batches=6):
    """A contiguous run of batches: (bytes, [records per batch])."""
    base = draw(st.integers(0, 2**40))
    out, counts, recs = [], [], []
    for _ in range(draw(st.integers(min_batches, max_batches))):
        n = draw(st.integers(1, 6))
        values = draw(st.lists(payload, min_size=n, max_size=n))
        keys = draw(st.lists(payload, min_size=n, max_size=n))
        headers = draw(st.lists(st.one_of(st.none(), st.lists(header, max_size=2)), min_size=n, max_size=n))
        ts = draw(st.lists(st.integers(0, 2**41), min_size=n, max_size=n))
        codec = draw(st.sampled_from([0, 0, 1, 2, 3, 4]))
        b = core.encode_batch(values, keys, headers, ts, base_offset=base, codec=codec,
                              log_append_time=draw(st.booleans()), now_ms=123)
        out.append(b)
        counts.append(n)
        recs += core.decode_records(b)[0]
        base += n
    return b"".join(out), counts, recs


@settings(max_examples=80, deadline=None)
@given(batches())
def test_record_keys_numbers_records_like_decode(case):
    data, counts, recs = case
    nxt, offs, h1, h2, flags = core.record_keys(data)
    assert nxt == len(data)
    assert offs.tolist() == [r.offset for r in recs]
    for i, r in enumerate(recs):
        assert bool(flags[i] & 1) == (r.key is None)
        assert bool(flags[i] & 2) == (r.value is None)
        if r.key is not None:
            assert (int(h1[i]), int(h2[i])) == core.key_hash(r.key)
        else:
            assert h1[i] == 0 and h2[i] == 0


@settings(max_examples=150, deadline=None)
@given(batches(), st.data())
def test_filter_keeps_exactly_the_mask_and_offsets(case, data):
    raw, counts, recs = case
    keep = np.array(data.draw(st.lists(st.booleans(), min_size=len(recs), max_size=len(recs))), np.uint8)
    # Split the input in two calls at a batch boundary: runs continue across calls.
    cut = data.draw(st.integers(0, len(counts)))
    pos = core.scan_batches(raw).positions.tolist() + [len(raw)]
    f = core.BatchFilter()
    first = sum(counts[:cut])
    a, n1 = f.filter(raw, 0, pos[cut], keep[:first])
    b, n2 = f.filter(raw, pos[cut], len(raw), keep[first:])
    out = a + b + f.finish()
    assert (n1, n2) == (pos[cut], len(raw))
    got, used = core.decode_records(out, check_crc=True)
    assert used == len(out)
    assert got == [r for r, k in zip(recs, keep) if k]
    # Offset-contiguous from the first base offset to the last offset + 1.
    res = core.scan_batches(out, 0, -1, recs[0].offset, True)
    assert res.error is None and res.valid_end == len(out)
    assert res.next_offset == recs[-1].offset + 1
    assert f.records_in == len(recs) and f.records_kept == int(keep.sum())
    # Emptied batches in a row collapse into one empty batch.
    counts = [core.batch_info(out, int(pos)).record_count for pos in res.positions]
    empties = [i for i, n in enumerate(counts) if n == 0]
    assert all(b - a > 1 for a, b in itertools.pairwise(empties))


def test_rewritten_batch_keeps_header_fields():
    b = core.encode_batch([b"a", b"b", b"c"], [b"k1", b"k2", b"k3"], timestamps=[10, 30, 20], base_offset=100,
                          codec=3, producer_id=7, producer_epoch=2, base_sequence=40)
    f = core.BatchFilter()
    out, _ = f.filter(b, 0, len(b), np.array([1, 0, 1], np.uint8))
    before, after = core.batch_info(b), core.validate_batch(out, check_records=False)
    assert (after.base_offset, after.last_offset, after.codec, after.producer_id, after.producer_epoch,
            after.base_sequence, after.first_timestamp) == (100, 102, 3, 7, 2, 40, 10)
    assert after.record_count == 2 and after.max_timestamp == 20 and before.max_timestamp == 30
    assert [r.offset for r in core.decode_records(out)[0]] == [100, 102]


def test_all_kept_is_copied_byte_for_byte_and_empty_run_spans_batches():
    b1 = core.encode_batch([b"x"] * 3, [b"k"] * 3, base_offset=0)
    b2 = core.encode_batch([b"y"] * 2, [b"k"] * 2, base_offset=3)
    b3 = core.encode_batch([b"z"], [b"k"], base_offset=5)
    f = core.BatchFilter()
    out, _ = f.filter(b1 + b2 + b3, 0, -1, np.array([1, 1, 1, 0, 0, 0], np.uint8))
    out += f.finish()
    assert out[: len(b1)] == b1
    empty = core.validate_batch(out, len(b1), check_records=False)
    assert (empty.base_offset, empty.last_offset, empty.record_count, empty.max_timestamp,
            empty.producer_id, empty.size) == (3, 5, 0, -1, -1, 61)
    assert core.decode_records(out) == (core.decode_records(b1)[0], len(out))


def test_control_batches_are_copied_and_not_numbered():
    data = core.encode_batch([b"v"], [b"k"], base_offset=0)
    ctrl = bytearray(core.encode_batch([b"\x00\x00\x00\x00"], [b"\x00\x00\x00\x01"], base_offset=1))
    attrs = int.from_bytes(ctrl[21:23], "big") | core.ATTR_CONTROL | core.ATTR_TRANSACTIONAL
    ctrl[21:23] = attrs.to_bytes(2, "big")
    ctrl[17:21] = core.crc32c(bytes(ctrl[21:])).to_bytes(4, "big")
    buf = data + bytes(ctrl)
    _, offs, *_ = core.record_keys(buf)
    assert offs.tolist() == [0]
    f = core.BatchFilter()
    out, _ = f.filter(buf, 0, -1, np.array([0], np.uint8))
    out += f.finish()
    assert out[-len(ctrl):] == bytes(ctrl) and core.batch_info(out).record_count == 0


def test_mask_length_must_match():
    b = core.encode_batch([b"a", b"b"], base_offset=0)
    with pytest.raises(ValueError):
        core.BatchFilter().filter(b, 0, -1, np.array([1], np.uint8))
    with pytest.raises(ValueError):
        core.BatchFilter().filter(b, 0, -1, np.array([1, 1, 1], np.uint8))


def test_truncated_input_is_left_for_the_next_call_and_garbage_refused():
    b = core.encode_batch([b"a", b"b"], [b"1", b"2"], base_offset=0)
    assert core.record_keys(b + b[:20])[0] == len(b)
    bad = bytearray(b)
    bad[61] = 0x7F  # the first record's length runs past the batch
    with pytest.raises(CorruptBatchError):
        core.record_keys(bytes(bad))
    with pytest.raises(CorruptBatchError):
        core.BatchFilter().filter(bytes(bad), 0, -1, np.array([1, 0], np.uint8))


def test_short_keys_never_collide():
    keys = [bytes([a, b]) for a in range(256) for b in range(256)] + [bytes([a]) for a in range(256)] + [b""]
    h1 = {core.key_hash(k)[0] for k in keys}
    assert len(h1) == len(keys)
    eight = [i.to_bytes(8, "little") for i in range(0, 2**40, 2**40 // 50000)]
    assert len({core.key_hash(k)[0] for k in eight}) == len(eight)


def test_key_map_newest_offsets_and_collisions():
    km = core.KeyMap()
    u = np.uint64
    offs = np.arange(10, dtype=np.int64)
    h1 = np.array([5, 6, 5, 7, 0, 6, 8, 8, 5, 9], u)
    h2 = np.array([1, 2, 1, 3, 0, 2, 4, 44, 1, 5], u)  # h1 8: two keys (h2 4 and 44)
    flags = np.array([0, 0, 0, 0, 1, 0, 0, 0, 0, 0], np.uint8)  # offset 4 has no key
    km.add(offs, h1, h2, flags)
    assert len(km) == 5 and km.collisions == 1
    assert km.winners().tolist() == [3, 5, 8, 9]
    assert km.collided().tolist() == [8]
    assert km.superseded(offs, h1).tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    # It grows past its first table, keeping everything.
    n = 100_000
    rng = np.random.default_rng(7)
    big_h1 = rng.integers(1, 2**63, n, dtype=np.int64).astype(u)
    km.add(np.arange(100, 100 + n, dtype=np.int64), big_h1, big_h1, np.zeros(n, np.uint8))
    assert len(km) == 5 + len(set(big_h1.tolist()))
    assert km.winners()[-1] == 100 + n - 1
    with pytest.raises(ValueError):
        km.add(offs, h1[:3], h2, flags)

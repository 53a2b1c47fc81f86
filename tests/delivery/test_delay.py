"""Delayed delivery (umlog/delivery/delay.py), embedded: invisible until due, then
on its topic once, in due order; batches split with gaps; refused headers."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from delivery.share_helpers import FakeClock

import umlog
from umlog._native.core import encode_batch
from umlog.delivery.delay import DELAYED_TOPIC, MAX_DELAY_MS, delayed_stats
from umlog.errors import InvalidRecordError


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def b(data_dir, clock):
    b = umlog.open(data_dir, cleaner_interval_ms=None, delay_clock=clock)
    yield b
    b.close()


def values(p, offset=0):
    return [(r.offset, r.value) for r in p.read(offset)]


def later(ms):
    return [("umlog-delay-ms", b"%d" % ms)]


def test_invisible_until_due_then_once_with_its_content(b, clock):
    t = b.create_topic("t")
    p = t.partition(0)
    t.append(b"before")
    md = t.append(b"late", key=b"k", timestamp=123, headers=[("a", b"1"), *later(5_000), ("b", None)])
    t.append(b"after")
    s = b.hooks.delay.scheduler
    s.run_once()
    assert values(p) == [(0, b"before"), (2, b"after")]  # offset 1 is a gap
    assert md.offset == 1 and s.pending() == 1 and s.next_due() == clock.ms + 5_000
    clock.advance(4.999)
    s.run_once()
    assert [v for _, v in values(p)] == [b"before", b"after"]
    clock.advance(0.001)
    s.run_once()
    s.run_once()
    recs = list(p.read(0))
    assert [(r.offset, r.value) for r in recs] == [(0, b"before"), (2, b"after"), (3, b"late")]
    r = recs[-1]
    assert (r.key, r.timestamp, r.headers) == (b"k", 123, (("a", b"1"), ("b", None)))
    assert s.pending() == 0 and s.next_due() is None


def test_deliver_at_and_equal_due_times_in_arrival_order(b, clock):
    t = b.create_topic("t")
    p = t.partition(0)
    at = clock.ms + 10_000
    for i in range(5):
        t.append(b"%d" % i, headers=[("umlog-deliver-at", b"%d" % at)])
    t.append(b"first", headers=[("umlog-deliver-at", b"%d" % (at - 1))])
    b.hooks.delay.scheduler.run_once()
    assert values(p) == []
    clock.advance(10)
    b.hooks.delay.scheduler.run_once()
    assert [v for _, v in values(p)] == [b"first", b"0", b"1", b"2", b"3", b"4"]


def test_past_due_times_are_delivered_at_once(b, clock):
    t = b.create_topic("t")
    p = t.partition(0)
    t.append(b"future", headers=later(60_000))
    t.append(b"past", headers=[("umlog-deliver-at", b"%d" % (clock.ms - 3_600_000))])
    t.append(b"now", headers=later(0))
    b.hooks.delay.scheduler.run_once()
    assert [v for _, v in values(p)] == [b"past", b"now"]


@pytest.mark.parametrize("headers", [
    [("umlog-delay-ms", b"-5")], [("umlog-delay-ms", b"5s")], [("umlog-delay-ms", b"")],
    [("umlog-deliver-at", "١".encode())], [("umlog-delay-ms", None)],
    [("umlog-delay-ms", b"1"), ("umlog-deliver-at", b"1")],
    [("umlog-delay-ms", b"%d" % (MAX_DELAY_MS + 1))],
])
def test_malformed_or_too_long_delays_are_refused(b, headers):
    t = b.create_topic("t")
    p = t.partition(0)
    t.append(b"x")
    with pytest.raises(InvalidRecordError):
        t.append(b"bad", headers=headers)
    with pytest.raises(InvalidRecordError):
        t.append_many([b"ok", b"bad"], headers=[None, headers], partition=0)
    with pytest.raises(InvalidRecordError):
        p.append_batches(encode_batch([b"ok", b"bad"], None, [None, headers]))
    assert p.end_offset == 1 and values(p) == [(0, b"x")]


def test_the_longest_delay_is_accepted(b, clock):
    t = b.create_topic("t")
    t.append(b"x", headers=later(MAX_DELAY_MS))
    b.hooks.delay.scheduler.run_once()
    assert b.hooks.delay.scheduler.next_due() == clock.ms + MAX_DELAY_MS


def test_mixed_batches_leave_gaps_that_consumers_step_over(b, clock):
    t = b.create_topic("t", partitions=1)
    p = t.partition(0)
    n = 50
    hs = [later(1_000 + i) if i % 3 == 0 else [("i", b"%d" % i)] for i in range(n)]
    got = t.append_many([b"%d" % i for i in range(n)], headers=hs, partition=0)
    assert got == range(0, n)
    # a batch of delayed records only: an empty batch keeps its offsets
    assert p.append_many([b"d1", b"d2"], headers=[later(500), later(500)]) == range(n, n + 2)
    p.append_many([b"tail"])
    plain = [(i, b"%d" % i) for i in range(n) if i % 3]
    assert values(p) == plain + [(n + 2, b"tail")]
    assert values(p, 1) == plain + [(n + 2, b"tail")]
    assert p.read_table(0).num_rows == len(plain) + 1
    with b.consume("t", "g", from_beginning=True) as c:
        assert [r.value for r in c][:3] == [b"1", b"2", b"4"]
    assert b.group("g").committed("t", 0) == n + 3
    clock.advance(5)
    b.hooks.delay.scheduler.run_once()
    delivered = [v for o, v in values(p) if o > n + 2]
    assert delivered == [b"d1", b"d2"] + [b"%d" % i for i in range(0, n, 3)]


def test_compressed_batches_are_split_too(b, clock):
    t = b.create_topic("t")
    p = t.partition(0)
    for codec in (1, 2, 3, 4):
        p.append_batches(encode_batch([b"a%d" % codec, b"d%d" % codec], None, [None, later(10)], codec=codec))
        p.append_batches(encode_batch([b"only%d" % codec], None, [later(10)], codec=codec))
    assert [v for _, v in values(p)] == [b"a1", b"a2", b"a3", b"a4"]
    clock.advance(1)
    b.hooks.delay.scheduler.run_once()
    assert sorted(v for _, v in values(p))[4:] == sorted([b"d1", b"d2", b"d3", b"d4", b"only1", b"only2",
                                                          b"only3", b"only4"])


def test_idempotent_producer_state_covers_the_whole_batch(b, clock):
    """The split batch keeps the producer's sequence range: the produce handler
    answers a retry from this state, so the delayed records are taken once."""
    t = b.create_topic("t")
    p = t.partition(0)
    batch = encode_batch([b"a", b"b", b"c"], None, [later(100), None, later(100)], producer_id=77,
                         producer_epoch=0, base_sequence=0)
    first, last, _ = p.append_batches(bytearray(batch))
    assert (first, last) == (0, 2)
    e = p.producer_state.entry(77)
    assert (e.batches[-1].first_seq, e.batches[-1].last_seq, e.batches[-1].base_offset,
            e.batches[-1].last_offset) == (0, 2, 0, 2)
    nxt = encode_batch([b"d"], None, None, producer_id=77, producer_epoch=0, base_sequence=3)
    assert p.append_batches(bytearray(nxt))[0] == 3
    assert b.hooks.delay.scheduler.pending() + len(list(b.topic(DELAYED_TOPIC).partition(0).read(0))) >= 2
    clock.advance(1)
    b.hooks.delay.scheduler.run_once()
    assert [v for _, v in values(p)] == [b"b", b"d", b"a", b"c"]


def test_restart_with_pending_records(data_dir, clock):
    with umlog.open(data_dir, cleaner_interval_ms=None, delay_clock=clock) as b:
        t = b.create_topic("t")
        for i in range(100):
            t.append(b"%d" % i, headers=later(1_000 * (i % 10 + 1)))
        clock.advance(3)
        b.hooks.delay.scheduler.run_once()
        assert len(values(t.partition(0))) == 30
    with umlog.open(data_dir, cleaner_interval_ms=None, delay_clock=clock) as b:
        s = b.hooks.delay.scheduler
        assert s is not None and s.pending() == 70
        assert delayed_stats(b)["pending"] == 70
        clock.advance(10)
        s.run_once()
        got = [v for _, v in values(b.topic("t").partition(0))]
        assert sorted(got) == sorted(b"%d" % i for i in range(100))
    with umlog.open(data_dir, readonly=True) as r:
        st = delayed_stats(r)
        assert st["pending"] == 0 and st["next_due_ms"] is None


def test_deleted_target_topic_drops_with_a_line(b, clock, caplog):
    t = b.create_topic("gone")
    t.append(b"x", headers=later(1_000))
    keep = b.create_topic("kept")
    keep.append(b"y", headers=later(1_000))
    b.delete_topic("gone")
    clock.advance(2)
    with caplog.at_level(logging.WARNING, logger="umlog.delivery.delay"):
        b.hooks.delay.scheduler.run_once()
    assert [v for _, v in values(keep.partition(0))] == [b"y"]
    assert "gone-0 dropped" in caplog.text


def test_internal_topic_and_readonly_opener(b, data_dir):
    t = b.create_topic("t")
    t.append(b"x", headers=later(1_000))
    assert DELAYED_TOPIC in b.topics(internal=True) and DELAYED_TOPIC not in b.topics()
    with pytest.raises(ValueError):
        b.delete_topic(DELAYED_TOPIC)
    b.flush()
    with umlog.open(data_dir, readonly=True) as r:
        assert r.hooks.delay is None
        assert delayed_stats(r)["pending"] + delayed_stats(r)["not_indexed"] == 1


def test_the_thread_delivers_on_a_real_clock(data_dir):
    from helpers import wait_until

    with umlog.open(data_dir, cleaner_interval_ms=None) as b:
        t = b.create_topic("t")
        t.append(b"soon", headers=later(50))
        p = t.partition(0)
        wait_until(lambda: values(p) != [], 10, "the delayed record")
        assert [v for _, v in values(p)] == [b"soon"]


def test_drop_records_keeps_offsets_and_producer_fields():
    from umlog._native.core import decode_records, drop_records, validate_batch

    for codec in (0, 3):
        batch = encode_batch([b"a", b"b", b"c"], None, None, base_offset=10, producer_id=5, producer_epoch=2,
                             base_sequence=40, codec=codec)
        out = drop_records(batch, 0, np.array([0, 1, 0], dtype=np.uint8))
        i = validate_batch(out, check_records=False)
        assert (i.base_offset, i.last_offset, i.record_count, i.producer_id, i.base_sequence) == (10, 12, 1, 5, 40)
        assert [(r.offset, r.value) for r in decode_records(out)[0]] == [(11, b"b")]
        empty = drop_records(batch, 0, np.zeros(3, dtype=np.uint8))
        i = validate_batch(empty, check_records=False)
        assert (i.size, i.last_offset, i.record_count, i.codec, i.producer_epoch) == (61, 12, 0, 0, 2)
        assert decode_records(empty)[0] == []


def test_cli_describe_delayed_shows_pending_and_next_due(tmp_path):
    from cli.conftest import Cli

    cli = Cli(tmp_path)
    with umlog.open(tmp_path / "umlog-data", cleaner_interval_ms=None) as b:
        t = b.create_topic("t")
        t.append_many([b"a", b"b"], headers=[later(120_000), later(60_000)], partition=0)
        b.hooks.delay.scheduler.run_once()
        nxt = b.hooks.delay.scheduler.next_due()
    d = cli.json("topics", "describe", "__delayed")["delayed"]
    assert d == {"pending": 2, "next_due_ms": nxt, "not_indexed": 0}
    assert "delayed records pending: 2" in cli("topics", "describe", "__delayed").out


def test_an_index_ahead_of_a_log_that_lost_its_tail_is_rebuilt(data_dir, clock, caplog):
    """Under fsync="never" a power cut can keep the index's pages (and the
    delivery checkpoint) and lose the tail of ``__delayed``: the offsets the
    index took in are then written again by new intents, which must be
    delivered, and the lost ones must not be released in their place."""
    import shutil

    opts = {"cleaner_interval_ms": None, "delay_clock": clock, "fsync": "never"}
    with umlog.open(data_dir, **opts) as b:
        t = b.create_topic("t")
        for i in range(5):
            t.append(b"kept%d" % i, headers=later(1_000))
        b.hooks.delay.scheduler.run_once()
    tail = os.path.join(data_dir, DELAYED_TOPIC + "-0")
    shutil.copytree(tail, data_dir + ".delayed")  # the log as the power cut will leave it
    with umlog.open(data_dir, **opts) as b:
        for i in range(5):
            b.topic("t").append(b"lost%d" % i, headers=later(1_000))
        s = b.hooks.delay.scheduler
        s.run_once()
        assert s.pending() == 10 and s.intake_position == 10
    shutil.rmtree(tail)
    shutil.copytree(data_dir + ".delayed", tail)
    with caplog.at_level(logging.WARNING), umlog.open(data_dir, **opts) as b:
        s = b.hooks.delay.scheduler
        assert s.pending() == 5 and s.intake_position == 5
        assert "rebuilding the index" in caplog.text
        for i in range(3):
            b.topic("t").append(b"new%d" % i, headers=later(1_000))
        clock.advance(2)
        s.run_once()
        s.run_once()
        got = sorted(v for _, v in values(b.topic("t").partition(0)))
        assert got == sorted([b"kept%d" % i for i in range(5)] + [b"new%d" % i for i in range(3)])
        assert s.pending() == 0

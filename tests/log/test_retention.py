"""Retention: retention.bytes / retention.ms delete whole closed segments from the front."""

import os
import time

import pytest
from helpers import wait_until

import umlog
from umlog.errors import OffsetOutOfRangeError
from umlog.log.retention import RetentionResult

DAY = 86_400_000


def fill(t, chunks, per_chunk=20, size=50, ts=None):
    """append_many calls of ``per_chunk`` records (values carry their offset)."""
    p = t.partition(0)
    for _ in range(chunks):
        base = p.end_offset
        vals = [f"{base + i:08d}".encode() + b"x" * (size - 8) for i in range(per_chunk)]
        p.append_many(vals, timestamps=None if ts is None else [ts] * per_chunk)
    return p


def files(p):
    return sorted(os.listdir(p.directory))


def test_by_size_deletes_the_oldest_while_over_and_never_the_active(data_dir):
    with umlog.open(data_dir, cleaner_interval_ms=None) as b:
        t = b.create_topic("t", config={"segment.bytes": 4096})
        p = fill(t, 40)
        sizes = [s.size for s in p.segments]
        assert len(sizes) > 5
        limit = sum(sizes) - sizes[0] - sizes[1] - 1  # two segments must go, not three
        b.alter_topic_config("t", {"retention.bytes": limit})
        bases = [s.base_offset for s in p.segments]
        res = b.run_retention("t")[("t", 0)]
        assert (res.segments, res.bytes) == (2, sizes[0] + sizes[1])
        assert [s.base_offset for s in p.segments] == bases[2:]
        assert p.start_offset == bases[2] == res.start_offset
        assert p.size_in_bytes() > limit  # Kafka: stop before going under
        assert [r.offset for r in p.read()] == list(range(bases[2], p.end_offset))
        with pytest.raises(OffsetOutOfRangeError):
            p.read(0)
        with pytest.raises(OffsetOutOfRangeError):
            p.read_table(bases[2] - 1)
        assert not any(n.endswith(".deleted") for n in files(p))
        assert f"{bases[0]:020d}.log" not in files(p)
        # retention.bytes=0 empties everything but the active segment.
        b.alter_topic_config("t", {"retention.bytes": 0})
        b.run_retention()
        assert len(p.segments) == 1 and p.start_offset == p.active.base_offset
        assert p.active.size > 0
        end = p.end_offset
    with umlog.open(data_dir, cleaner_interval_ms=None) as b:
        p = b.topic("t").partition(0)
        assert (p.start_offset, p.end_offset) == (p.active.base_offset, end)
        p.append_many([b"more"])
        assert p.end_offset == end + 1


def test_by_time_uses_each_segments_largest_timestamp(data_dir):
    now = int(time.time() * 1000)
    with umlog.open(data_dir, cleaner_interval_ms=None) as b:
        t = b.create_topic("t", config={"segment.bytes": 4096, "retention.ms": DAY})
        p = t.partition(0)
        fill(t, 12, ts=now - 3 * DAY)
        p.roll()
        old = [s.base_offset for s in p.segments[:-1]]
        fill(t, 1, ts=now - 3 * DAY)
        fill(t, 1, ts=now)  # the segment holding these is young because of its last records
        p.roll()
        young = p.segments[-2].base_offset
        fill(t, 6, ts=now - 5 * DAY)  # old records in the active segment stay
        res = b.run_retention("t", now_ms=now)[("t", 0)]
        assert res.segments == len(old)
        assert p.segments[0].base_offset == young and p.start_offset == young
        assert b.run_retention("t", now_ms=now)[("t", 0)].segments == 0
        # Even when everything is old, the active segment stays.
        res = b.run_retention("t", now_ms=now + 10 * DAY)[("t", 0)]
        assert len(p.segments) == 1 and p.start_offset == p.active.base_offset
        assert [r.offset for r in p.read()] == list(range(p.start_offset, p.end_offset))


def test_retention_ms_minus_one_and_compact_policy_keep_everything(data_dir):
    with umlog.open(data_dir, cleaner_interval_ms=None) as b:
        t1 = b.create_topic("forever", config={"segment.bytes": 4096, "retention.ms": -1})
        t2 = b.create_topic("compacted", config={"segment.bytes": 4096, "cleanup.policy": "compact",
                                                 "retention.bytes": 0})
        fill(t1, 10, ts=1)
        t2.partition(0).append_many([b"v"] * 200, keys=[b"k%d" % i for i in range(200)])
        t2.partition(0).roll()
        t2.partition(0).append_many([b"v"], keys=[b"z"])
        res = b.run_retention(now_ms=10 * DAY)
        assert res[("forever", 0)].segments == 0 and res[("compacted", 0)].segments == 0
        b.alter_topic_config("compacted", {"cleanup.policy": "compact,delete"})
        assert b.run_retention("compacted")[("compacted", 0)].segments >= 1


def test_a_reader_finishes_the_segment_it_holds_then_gets_out_of_range(data_dir):
    with umlog.open(data_dir, cleaner_interval_ms=None) as b:
        t = b.create_topic("t", config={"segment.bytes": 4096})
        p = fill(t, 30)
        segs = list(p.segments)
        it = p.read(0)
        first = [next(it) for _ in range(5)]
        b.alter_topic_config("t", {"retention.bytes": 0})
        b.run_retention("t")
        assert len(p.segments) == 1
        rest = []
        with pytest.raises(OffsetOutOfRangeError, match="deleted by retention"):
            for r in it:
                rest.append(r)
        got = first + rest
        # Everything of the segment it held, in order, then the error.
        assert [r.offset for r in got] == list(range(segs[1].base_offset))
        assert got[3].value.startswith(b"00000003")


def test_a_reader_whose_next_segment_survives_goes_on(data_dir):
    with umlog.open(data_dir, cleaner_interval_ms=None) as b:
        t = b.create_topic("t", config={"segment.bytes": 4096})
        p = fill(t, 30)
        sizes = [s.size for s in p.segments]
        it = p.read(0)
        next(it)
        b.alter_topic_config("t", {"retention.bytes": sum(sizes) - sizes[0]})
        assert b.run_retention("t")[("t", 0)].segments == 1
        assert [r.offset for r in it] == list(range(1, p.end_offset))
        tab_it = p.read_table(p.start_offset)
        assert tab_it.num_rows == p.end_offset - p.start_offset


def test_background_thread_applies_retention(data_dir):
    with umlog.open(data_dir, cleaner_interval_ms=20) as b:
        t = b.create_topic("t", config={"segment.bytes": 4096, "retention.bytes": 8192})
        p = fill(t, 40)
        wait_until(lambda: len(p.segments) <= 3, 10, "retention in the background")
        assert [r.offset for r in p.read()] == list(range(p.start_offset, p.end_offset))


def test_loader_removes_what_an_interrupted_deletion_left(data_dir):
    with umlog.open(data_dir, cleaner_interval_ms=None) as b:
        t = b.create_topic("t", config={"segment.bytes": 4096})
        p = fill(t, 20)
        d = p.directory
        first = p.segments[0].base_offset
        end = p.end_offset
    # A crash between the renames: the log renamed, its indexes not yet.
    os.rename(os.path.join(d, f"{first:020d}.log"), os.path.join(d, f"{first:020d}.log.deleted"))
    with umlog.open(data_dir, cleaner_interval_ms=None) as b:
        p = b.topic("t").partition(0)
        assert p.start_offset > first and p.end_offset == end
        assert [n for n in files(p) if n.startswith(f"{first:020d}")] == []


def test_retention_result_and_config_validation(data_dir):
    with umlog.open(data_dir, cleaner_interval_ms=None) as b:
        b.create_topic("t")
        with pytest.raises(umlog.InvalidConfigError):
            b.alter_topic_config("t", {"retention.bytes": -2})
        with pytest.raises(umlog.UnknownTopicError):
            b.run_retention("nope")
        assert b.run_retention("t")[("t", 0)] == RetentionResult(0, 0, 0)
    with pytest.raises(ValueError):
        umlog.open(data_dir, cleaner_interval_ms=-1)

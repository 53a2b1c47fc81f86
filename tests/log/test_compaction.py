"""Compaction: the newest record per key in closed segments, offsets unchanged,
crash-safe swaps, keyless records refused."""

import os
import shutil
import threading
import time

import pytest
from helpers import wait_until
from hypothesis import given, settings
from hypothesis import strategies as st

import umlog
from umlog._native import core
from umlog.errors import InvalidConfigError, InvalidRecordError
from umlog.log import cleaner

DAY = 86_400_000
T0 = 1_700_000_000_000
NOW = T0 + 10 * DAY

op = st.tuples(
    st.integers(0, 7),  # key index
    st.one_of(st.none(), st.binary(min_size=1, max_size=30)),  # value (None: tombstone)
    st.booleans(),  # with a header
)


def append_ops(p, ops, data, start):
    """Append ops as append_many chunks and single appends; returns the records written."""
    i = 0
    while i < len(ops):
        n = data.draw(st.integers(1, 5), label="chunk")
        chunk = ops[i:i + n]
        keys = [b"key-%d" % k for k, _, _ in chunk]
        values = [v for _, v, _ in chunk]
        headers = [[("h", b"%d" % (start + i + j))] if h else None for j, (_, _, h) in enumerate(chunk)]
        p.append_many(values, keys, headers, [T0 + start + i + j for j in range(len(chunk))])
        i += n
    return list(p.read(start))


def expected(records, boundary, drop_tombstones):
    """Records after compacting everything below ``boundary`` (a dict model)."""
    newest = {}
    for r in records:
        if r.offset < boundary:
            newest[r.key] = r.offset
    out = []
    for r in records:
        if r.offset >= boundary:
            out.append(r)
        elif newest[r.key] == r.offset and not (r.value is None and drop_tombstones):
            out.append(r)
    return out


@settings(max_examples=40, deadline=None)
@given(st.lists(op, min_size=1, max_size=120), st.lists(op, max_size=60), st.booleans(), st.data())
def test_keeps_exactly_the_newest_record_per_key(tmp_path_factory, ops1, ops2, drop_tombstones, data):
    path = tmp_path_factory.mktemp("compact")
    cfg = {"cleanup.policy": "compact", "segment.bytes": data.draw(st.sampled_from([300, 700, 2000])),
           "delete.retention.ms": DAY if drop_tombstones else 100 * DAY,
           "compression.type": data.draw(st.sampled_from(["none", "lz4", "zstd"]))}
    with umlog.open(path, cleaner_interval_ms=None) as b:
        t = b.create_topic("t", config=cfg)
        p = t.partition(0)
        written = append_ops(p, ops1, data, 0)
        boundary = p.active.base_offset
        b.compact("t", now_ms=NOW)
        want = expected(written, boundary, drop_tombstones)
        assert list(p.read()) == want
        assert p.read_table().column("offset").to_pylist() == [r.offset for r in want]
        assert p.end_offset == len(ops1)
        # More records, then an incremental cleaning (the background kind: the
        # map covers only what came after the last cleaning).
        written = want + append_ops(p, ops2, data, len(ops1))
        boundary2 = p.active.base_offset
        cleaner.compact_partition(p, NOW, full=False)
        want = expected(written, boundary2, drop_tombstones)
        assert list(p.read()) == want
        b.compact("t", now_ms=NOW)  # idempotent
        assert list(p.read()) == want
        end = p.end_offset
    with umlog.open(path, cleaner_interval_ms=None) as b:  # reopen cleanly
        p = b.topic("t").partition(0)
        assert list(p.read()) == want and p.end_offset == end
    os.unlink(os.path.join(path, ".clean"))
    os.unlink(os.path.join(p.directory, "recovery-point"))
    with umlog.open(path, cleaner_interval_ms=None) as b:  # recovery validates every segment
        p = b.topic("t").partition(0)
        assert p.recovered_bytes == 0
        assert list(p.read()) == want and p.end_offset == end


def test_merges_small_segments_and_keeps_tombstones_until_delete_retention(data_dir):
    with umlog.open(data_dir, cleaner_interval_ms=None) as b:
        t = b.create_topic("t", config={"cleanup.policy": "compact", "segment.bytes": 1024,
                                        "delete.retention.ms": DAY})
        p = t.partition(0)
        for i in range(60):
            p.append_many([b"v%d" % i] * 5, [b"k%d" % j for j in range(5)], timestamps=[T0] * 5)
        p.append_many([None], [b"k0"], timestamps=[T0])  # a tombstone for k0
        p.roll()
        p.append_many([b"active"], [b"k1"], timestamps=[T0])
        n_before = len(p.segments)
        res = b.compact("t", now_ms=T0 + DAY // 2)[0]
        assert res.records_kept == 5 and len(p.segments) == n_before  # grouped by size before cleaning
        b.compact("t", now_ms=T0 + DAY // 2)  # now small: merged into one
        assert len(p.segments) == 2
        recs = list(p.read())
        assert [(r.key, r.value) for r in recs] == [
            (b"k1", b"v59"), (b"k2", b"v59"), (b"k3", b"v59"), (b"k4", b"v59"), (b"k0", None), (b"k1", b"active")]
        b.compact("t", now_ms=T0 + DAY + 1)
        assert [(r.key, r.value) for r in p.read()][0][0] == b"k1"
        assert b"k0" not in [r.key for r in p.read()]
        # Segments stay contiguous: each one ends where the next begins.
        for a, nxt in zip(p.segments, p.segments[1:]):
            res = core.scan_batches(a.read(0, a.size), 0, -1, a.base_offset, True)
            assert res.error is None and res.next_offset == nxt.base_offset


def test_min_compaction_lag_and_the_active_segment_are_left_alone(data_dir):
    with umlog.open(data_dir, cleaner_interval_ms=None) as b:
        t = b.create_topic("t", config={"cleanup.policy": "compact", "segment.bytes": 1024,
                                        "min.compaction.lag.ms": DAY})
        p = t.partition(0)
        for i in range(20):
            p.append_many([b"old%d" % i] * 4, [b"a", b"b", b"c", b"d"], timestamps=[T0] * 4)
        p.roll()
        young = p.active.base_offset
        for i in range(20):
            p.append_many([b"new%d" % i] * 4, [b"a", b"b", b"c", b"d"], timestamps=[T0 + DAY] * 4)
        b.compact("t", now_ms=T0 + DAY + 1000)
        recs = list(p.read())
        assert [r.offset for r in recs if r.offset < young] == list(range(young - 4, young))
        assert [r.offset for r in recs if r.offset >= young] == list(range(young, p.end_offset))


def test_keyless_records_are_refused_on_every_path(data_dir):
    with umlog.open(data_dir, cleaner_interval_ms=None) as b:
        t = b.create_topic("c", config={"cleanup.policy": "compact"})
        p = t.partition(0)
        with pytest.raises(InvalidRecordError, match="needs a key"):
            t.append(b"v")
        with pytest.raises(InvalidRecordError):
            p.append(b"v")
        with pytest.raises(InvalidRecordError):
            p.append_many([b"v", b"w"], [b"k", None])
        with pytest.raises(InvalidRecordError):
            p.append_many([b"v"])
        with pytest.raises(InvalidRecordError):
            p.append_batches(core.encode_batch([b"v", b"w"], [b"k", None]))
        with pytest.raises(InvalidRecordError):
            t.append_many([b"v"], partition=0)
        assert p.end_offset == 0
        t.append(b"v", key=b"k")
        p.append_batches(core.encode_batch([b"v"], [b"k"], codec=2))
        assert p.end_offset == 2
        # Switching a topic to compact switches its append path too.
        d = b.create_topic("d")
        d.append(b"free")
        b.alter_topic_config("d", {"cleanup.policy": "compact,delete"})
        with pytest.raises(InvalidRecordError):
            d.append(b"keyless")
        b.alter_topic_config("d", delete=["cleanup.policy"])
        d.append(b"free again")
        with pytest.raises(InvalidConfigError):
            b.compact("d")


def test_keyless_records_from_before_a_switch_to_compact_are_dropped(data_dir):
    with umlog.open(data_dir, cleaner_interval_ms=None) as b:
        t = b.create_topic("t", config={"segment.bytes": 1024})
        p = t.partition(0)
        p.append_many([b"x"] * 50)
        p.append_many([b"y"] * 50, [b"k"] * 50)
        p.roll()
        p.append_many([b"z"], [b"k"])
        b.alter_topic_config("t", {"cleanup.policy": "compact"})
        b.compact("t")
        assert [(r.offset, r.value) for r in p.read()] == [(99, b"y"), (100, b"z")]


def test_appends_go_on_while_compacting(data_dir):
    with umlog.open(data_dir, cleaner_interval_ms=None) as b:
        t = b.create_topic("t", config={"cleanup.policy": "compact", "segment.bytes": 20_000})
        p = t.partition(0)
        for i in range(100):
            p.append_many([b"%06d" % i * 10] * 50, [b"k%d" % (j % 30) for j in range(50)])
        stop = threading.Event()
        appended = []

        def writer():
            i = 0
            while not stop.is_set():
                for _ in range(20):
                    appended.append(t.append(b"w%d" % i, key=b"w%d" % (i % 7), partition=0).offset)
                    i += 1
                time.sleep(0.001)  # leave the GIL to the cleaner now and then

        th = threading.Thread(target=writer)
        th.start()
        try:
            for _ in range(3):
                b.compact("t")
        finally:
            stop.set()
            th.join()
        assert appended == list(range(5000, 5000 + len(appended)))
        recs = list(p.read())
        offsets = [r.offset for r in recs]
        assert offsets == sorted(set(offsets))
        active = p.active.base_offset
        assert [o for o in offsets if o >= active] == list(range(active, p.end_offset))
        newest = {b"w%d" % (i % 7): 5000 + i for i in range(len(appended))}
        assert set(newest.values()) <= set(offsets)


class Crash(BaseException):
    """A crash: nothing catches it, nothing cleans up after it."""


class CrashingOs:
    """os for cleaner.py whose (k+1)-th rename/replace crashes."""

    def __init__(self, k):
        self.k, self.n = k, 0

    def __getattr__(self, name):
        return getattr(os, name)

    def _step(self):
        self.n += 1
        if self.n > self.k:
            raise Crash()

    def rename(self, a, b):
        self._step()
        os.rename(a, b)

    def replace(self, a, b):
        self._step()
        os.replace(a, b)


def crash(b):
    """Leave a broker as a killed process would: no .clean, the lock released."""
    b._stop.set()
    if b._flusher is not None:
        b._flusher.join()
    b._cleaner._stop.set()
    b._release_lock()
    b._closed = True


def test_a_crash_at_any_step_of_a_swap_keeps_old_or_new_data(tmp_path, monkeypatch):
    base = str(tmp_path / "base")
    with umlog.open(base, cleaner_interval_ms=None) as b:
        t = b.create_topic("t", config={"cleanup.policy": "compact", "segment.bytes": 2048})
        p = t.partition(0)
        for i in range(40):
            p.append_many([b"a%d" % i] * 8, [b"k%d" % j for j in range(8)])
        b.compact("t")  # small segments now: the next cleaning merges them
        for i in range(40):
            p.append_many([b"b%d" % i] * 8, [b"k%d" % j for j in range(8)])
        old = list(p.read())
    ref = str(tmp_path / "ref")
    shutil.copytree(base, ref)
    with umlog.open(ref, cleaner_interval_ms=None) as b:
        res = b.compact("t")[0]
        new = list(b.topic("t").partition(0).read())
    assert new != old and any(n > 1 for _, n, _, _ in res.groups)
    steps = None
    k = 0
    seen = set()
    while steps is None or k <= steps:
        d = str(tmp_path / f"crash{k}")
        shutil.copytree(base, d)
        b = umlog.open(d, cleaner_interval_ms=None)
        fake = CrashingOs(k)
        monkeypatch.setattr(cleaner, "os", fake)
        try:
            b.compact("t")
            steps = fake.n
            b.close()
        except Crash:
            crash(b)
        finally:
            monkeypatch.setattr(cleaner, "os", os)
        if k % 2:
            os.unlink(os.path.join(d, "t-0", "recovery-point"))  # recover every segment
        with umlog.open(d, cleaner_interval_ms=None) as b:
            got = list(b.topic("t").partition(0).read())
            # Each group's swap is atomic, the cleaning of several groups is
            # not: a crash leaves some groups cleaned. Nothing is invented
            # (every record is the old one at its offset), nothing the
            # cleaning keeps is lost.
            by_offset = {r.offset: r for r in old}
            assert all(by_offset.get(r.offset) == r for r in got), k
            offsets = {r.offset for r in got}
            assert all(r.offset in offsets for r in new), k
            assert [r.offset for r in got] == sorted(offsets)
            seen.add("new" if got == new else "old" if got == old else "some groups")
            left = [n for n in os.listdir(os.path.join(d, "t-0")) if n.endswith((".cleaned", ".swap", ".deleted"))]
            assert left == []
            b.compact("t")
            assert list(b.topic("t").partition(0).read()) == new
        shutil.rmtree(d)
        k += 1
    assert {"old", "new"} <= seen and steps > 6


def test_consumer_offsets_are_compacted(data_dir):
    if not hasattr(umlog.Broker, "group"):
        pytest.skip("consumer groups are not on this branch")
    with umlog.open(data_dir, cleaner_interval_ms=None) as b:
        t = b.create_topic("orders", partitions=2)
        t.append_many([b"x"] * 1000, partition=0)
        t.append_many([b"x"] * 1000, partition=1)
        g = b.group("billing")
        for i in range(1, 1001):
            g.commit("orders", i % 2, i)
        off = b.topic("__consumer_offsets", )
        for p in off.partitions:
            p.roll()
        b.compact("__consumer_offsets")
        total = sum(len(list(p.read())) for p in off.partitions)
        assert total <= 4
        assert (g.committed("orders", 0), g.committed("orders", 1)) == (1000, 999)
    with umlog.open(data_dir, cleaner_interval_ms=None) as b:
        assert (b.group("billing").committed("orders", 0), b.group("billing").committed("orders", 1)) == (1000, 999)


def test_background_thread_compacts_dirty_partitions(data_dir):
    with umlog.open(data_dir, cleaner_interval_ms=None) as b:
        t = b.create_topic("t", config={"cleanup.policy": "compact", "segment.bytes": 2048})
        p = t.partition(0)
        for i in range(30):
            p.append_many([b"v%d" % i] * 10, [b"k%d" % j for j in range(10)])
    with umlog.open(data_dir, cleaner_interval_ms=20) as b:
        p = b.topic("t").partition(0)
        ckpt = os.path.join(p.directory, cleaner.CHECKPOINT)  # written once a cleaning is complete
        wait_until(lambda: os.path.exists(ckpt), 10, "the cleaner's checkpoint")
        recs = list(p.read())
        closed = [r.key for r in recs if r.offset < p.active.base_offset]
        assert len(recs) < 300 and len(closed) == len(set(closed))
        assert {r.key: r.value for r in recs} == {b"k%d" % j: b"v29" for j in range(10)}

"""The embedded API (the contract the README shows), end to end on a real data dir."""

import os
import subprocess
import sys

import pytest
from helpers import subprocess_env, wait_until

import umlog
from umlog.errors import (
    DataDirError,
    DataDirLockedError,
    InvalidConfigError,
    OffsetOutOfRangeError,
    TopicExistsError,
    UnknownTopicError,
)


def test_quick_start(data_dir):
    with umlog.open(data_dir) as b:
        b.create_topic("orders", partitions=4, config={"retention.ms": 86_400_000})
        assert b.topics() == ["orders"]
        t = b.topic("orders")
        md = t.append(b"v", key=b"k", headers=[("h", b"x")], timestamp=1234)
        assert md.partition == umlog.broker.partition_for_key(b"k", 4)
        assert (md.offset, md.timestamp) == (0, 1234)
        offs = t.append_many([b"v1", b"v2"], partition=0)
        assert list(offs) == ([1, 2] if md.partition == 0 else [0, 1])
        p = t.partition(md.partition)
        recs = list(p.read(offset=0, max_records=1000))
        r = recs[0]
        assert (r.offset, r.timestamp, r.key, r.value, r.headers) == (0, 1234, b"k", b"v", (("h", b"x"),))
        assert p.start_offset == 0 and p.end_offset == len(recs)
        b.flush()


def test_reopen_keeps_everything(data_dir):
    with umlog.open(data_dir) as b:
        t = b.create_topic("t", partitions=2)
        for i in range(1000):
            t.append(b"value-%d" % i, partition=i % 2)
        t.append_many([b"x"] * 5000, partition=1)
    with umlog.open(data_dir) as b:
        t = b.topic("t")
        assert t.partition(0).end_offset == 500
        assert t.partition(1).end_offset == 5500
        vals = [r.value for r in t.partition(0).read(0)]
        assert vals == [b"value-%d" % i for i in range(0, 1000, 2)]
        t.append(b"more", partition=0)
        assert t.partition(0).end_offset == 501


def test_offsets_are_dense_across_rolls(data_dir):
    with umlog.open(data_dir) as b:
        t = b.create_topic("t", config={"segment.bytes": 4096, "index.interval.bytes": 256})
        for chunk in range(20):
            t.append_many([b"%06d" % (chunk * 50 + i) for i in range(50)], partition=0)
            for _ in range(10):
                t.append(b"single", partition=0)
        p = t.partition(0)
        assert len(p.segments) >= 4
        recs = list(p.read(0))
        assert [r.offset for r in recs] == list(range(p.end_offset))
        # a read from every offset starts exactly there
        for off in range(0, p.end_offset, 37):
            assert next(iter(p.read(off))).offset == off
        assert list(p.read(p.end_offset)) == []
        with pytest.raises(OffsetOutOfRangeError):
            list(p.read(p.end_offset + 1))


def test_offset_for_time(data_dir):
    with umlog.open(data_dir) as b:
        t = b.create_topic("t", config={"segment.bytes": 2048, "index.interval.bytes": 128})
        for i in range(500):
            t.append(b"x" * 20, timestamp=1_000_000 + i * 10, partition=0)
        p = t.partition(0)
        assert p.offset_for_time(0) == 0
        assert p.offset_for_time(1_000_000 + 2500) == 250
        assert p.offset_for_time(1_000_000 + 2505) == 251
        assert p.offset_for_time(1_000_000 + 4990) == 499
        assert p.offset_for_time(1_000_000 + 4991) is None
    with umlog.open(data_dir) as b:
        assert b.topic("t").partition(0).offset_for_time(1_000_000 + 1234) == 124


def test_bad_input(data_dir):
    with umlog.open(data_dir) as b:
        t = b.create_topic("t")
        with pytest.raises(TypeError):
            t.append("not bytes")
        with pytest.raises(TypeError):
            t.append(b"v", key=12)
        with pytest.raises(TypeError):
            t.append_many([b"a", 3], partition=0)
        for bad in ["", ".", "..", "a" * 250, "white space", "ü"]:
            with pytest.raises(ValueError):
                b.create_topic(bad)
        with pytest.raises(TopicExistsError):
            b.create_topic("t")
        with pytest.raises(UnknownTopicError):
            b.topic("nope")
        with pytest.raises(InvalidConfigError):
            b.create_topic("u", config={"retention.ms": "soon"})
        with pytest.raises(InvalidConfigError):
            b.create_topic("u", config={"no.such.config": 1})
        assert b.topics() == ["t"]
        # a failed append took no offset
        assert t.partition(0).end_offset == 0


def test_foreign_dir_refused(tmp_path):
    d = tmp_path / "x"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    with pytest.raises(DataDirError, match="not a umlog data dir"):
        umlog.open(str(d))
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(DataDirError, match="not a directory"):
        umlog.open(str(f))


def test_second_writer_is_refused_with_pid(data_dir):
    code = (
        "import sys, umlog, time\n"
        "b = umlog.open(sys.argv[1])\n"
        "print('locked', flush=True)\n"
        "time.sleep(30)\n"
    )
    # cwd elsewhere: `python -c` puts cwd first on sys.path, and the source
    # tree's umlog/ (no built extension in CI) must not shadow the installed one
    proc = subprocess.Popen(
        [sys.executable, "-c", code, data_dir],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(data_dir),
        env=subprocess_env(),
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(DataDirLockedError) as e:
            umlog.open(data_dir)
        assert e.value.pid == proc.pid
        assert str(proc.pid) in str(e.value)
        # a read-only opener needs no lock
        with umlog.open(data_dir, readonly=True) as r:
            assert r.topics() == []
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    with umlog.open(data_dir):  # the lock died with its holder
        pass


def test_delete_and_config(data_dir):
    with umlog.open(data_dir) as b:
        b.create_topic("a", partitions=3)
        b.topic("a").append(b"x")
        b.alter_topic_config("a", set={"retention.ms": "1000"})
        assert b.topic("a").config["retention.ms"] == 1000
        with pytest.raises(InvalidConfigError):
            b.alter_topic_config("a", set={"retention.ms": "-5", "segment.bytes": 10**6})
        assert b.topic("a").config["segment.bytes"] == 1 << 30  # nothing half-applied
        b.add_partitions("a", 5)
        assert b.topic("a").num_partitions == 5
        b.delete_topic("a")
        assert b.topics() == []
        assert [n for n in os.listdir(data_dir) if n.startswith("a-")] == []
    with umlog.open(data_dir) as b:
        assert b.topics() == []
        b.create_topic("a")
        assert b.topic("a").partition(0).end_offset == 0


def test_fsync_modes(data_dir):
    for mode in ("never", "interval", "always"):
        d = f"{data_dir}-{mode}"
        with umlog.open(d, fsync=mode) as b:
            t = b.create_topic("t")
            t.append(b"a")
            t.append_many([b"b", b"c"])
            p = t.partition(0)
            if mode == "always":
                assert p.flushed_offset == 3
            b.flush()
            assert p.flushed_offset == p.end_offset == 3
        with pytest.raises(ValueError):
            umlog.open(d, fsync="sometimes")


def test_log_append_time(data_dir):
    with umlog.open(data_dir) as b:
        t = b.create_topic("t", config={"message.timestamp.type": "LogAppendTime"})
        md = t.append(b"x", timestamp=5)
        t.append_many([b"y"], timestamps=[6])
        recs = list(t.partition(0).read(0))
        assert all(r.timestamp > 1_600_000_000_000 for r in recs)
        assert md.offset == 0


def test_readonly_tailer_sees_flushed_records(data_dir):
    with umlog.open(data_dir) as w:
        t = w.create_topic("t", config={"segment.bytes": 1024})
        t.append_many([b"a" * 50] * 10, partition=0)
        w.flush()
        r = umlog.open(data_dir, readonly=True)
        try:
            p = r.topic("t").partition(0)
            assert [x.offset for x in p.read(0)] == list(range(10))
            t.append_many([b"b" * 50] * 40, partition=0)  # rolls into new segments
            w.flush()
            assert [x.offset for x in p.read(0)] == list(range(50))
        finally:
            r.close()


def test_flush_covers_segments_rolled_without_a_sync(data_dir):
    # Under fsync="never" rolls do not sync: a flush afterwards must still make
    # every rolled segment durable, not only the active one.
    with umlog.open(data_dir) as b:
        t = b.create_topic("t", config={"segment.bytes": 1024})
        for _ in range(10):
            t.partition(0).append_batches(umlog._native.core.encode_batch([b"x" * 200]))
        p = t.partition(0)
        assert len(p.segments) > 3
        assert any(s.synced_size < s.size for s in p.segments)
        b.flush()
        assert all(s.synced_size == s.size for s in p.segments)
        assert p.flushed_offset == p.end_offset == 10


def test_append_batches_uses_a_writable_buffer_in_place(data_dir):
    with umlog.open(data_dir) as b:
        p = b.create_topic("t").partition(0)
        p.append(b"first")
        frame = bytearray(b"HDR" + umlog._native.core.encode_batch([b"a", b"b"]))
        view = memoryview(frame)[3:]
        assert p.append_batches(view)[:2] == (1, 2)
        assert int.from_bytes(frame[3:11], "big") == 1  # baseOffset assigned in the caller's buffer
        ro = bytes(umlog._native.core.encode_batch([b"c"]))
        assert p.append_batches(ro)[:2] == (3, 3)
        assert ro[:8] == bytes(8)  # a read-only input is copied, not touched
        assert [r.value for r in p.read(0)] == [b"first", b"a", b"b", b"c"]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_topic_stores_compressed_batches(data_dir, codec):
    from umlog._native.core import scan_batches

    with umlog.open(data_dir) as b:
        t = b.create_topic("t", config={"compression.type": codec})
        t.append_many([b"value %d " % i + b"x" * 100 for i in range(500)], partition=0)
        for i in range(50):
            t.append(b"single %d" % i, key=b"k", partition=0)
        p = t.partition(0)
        b.flush()
        seg = p.active
        res = scan_batches(seg.read(0, seg.size), 0, -1, 0, True)
        assert res.count >= 2 and res.valid_end == seg.size
        assert seg.size < 500 * 100  # compressed on disk
        vals = [r.value for r in p.read(0)]
        assert vals == [b"value %d " % i + b"x" * 100 for i in range(500)] + [b"single %d" % i for i in range(50)]


def test_lookups_across_many_segments_match_a_model_after_reopen(data_dir):
    import bisect
    import random

    rng = random.Random(7)
    timestamps = []
    with umlog.open(data_dir) as b:
        t = b.create_topic("t", config={"segment.bytes": 3000, "index.interval.bytes": 100})
        ts = 1_000_000
        while len(timestamps) < 3000:
            n = rng.choice([1, 1, 5, 40])
            batch_ts = []
            for _ in range(n):
                ts += rng.choice([0, 1, 7])
                batch_ts.append(ts)
            if n == 1:
                t.append(b"v" * rng.randrange(50), timestamp=batch_ts[0], partition=0)
            else:
                t.append_many([b"w" * rng.randrange(30)] * n, timestamps=batch_ts, partition=0)
            timestamps.extend(batch_ts)
    with umlog.open(data_dir) as b:
        p = b.topic("t").partition(0)
        assert len(p.segments) > 20
        for off in rng.sample(range(len(timestamps)), 300):
            assert next(iter(p.read(off, max_records=1))).offset == off
        for target in rng.sample(range(timestamps[0] - 5, timestamps[-1] + 5), 300):
            i = bisect.bisect_left(timestamps, target)  # timestamps never decrease here
            assert p.offset_for_time(target) == (i if i < len(timestamps) else None)


def test_segment_ms_rolls_by_age(data_dir, monkeypatch):
    from umlog.log import partition as partition_mod
    from umlog.log import segment as segment_mod

    # The engine's clock, not the machine's: a busy machine may stall between
    # two appends for longer than any segment.ms a test can afford to wait out.
    now = [1_700_000_000_000]
    for mod in (partition_mod, segment_mod):
        monkeypatch.setattr(mod, "_now_ms", lambda: now[0])
    with umlog.open(data_dir) as b:
        t = b.create_topic("t", config={"segment.ms": 50})
        t.append_many([b"a"], partition=0)
        now[0] += 49
        t.append_many([b"b"], partition=0)
        assert len(t.partition(0).segments) == 1
        now[0] += 1  # 50 ms after the segment's first append
        t.append_many([b"c"], partition=0)
        p = t.partition(0)
        assert [s.base_offset for s in p.segments] == [0, 2]
        assert [r.value for r in p.read(0)] == [b"a", b"b", b"c"]


def test_fsync_interval_syncs_in_the_background(data_dir):
    with umlog.open(data_dir, fsync="interval", interval_ms=30, linger_ms=10) as b:
        t = b.create_topic("t")
        t.append(b"x", partition=0)  # sits in the open batch until the flusher seals and syncs it
        p = t.partition(0)
        wait_until(lambda: p.flushed_offset >= 1, 5, "the flusher to sync")
        assert p.flushed_offset == p.end_offset == 1
        assert p.active.synced_size == p.active.size > 0

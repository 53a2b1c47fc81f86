"""Readers that keep up: read(follow=True) in the writer's process, and read-only
tailers (another process) under rolls, retention and compaction."""

import os
import subprocess
import sys
import threading
import time

import pytest
from helpers import scaled, subprocess_env

import umlog
from umlog.errors import OffsetOutOfRangeError


def value(offset: int) -> bytes:
    return b"%d-" % offset + b"v" * 30


# -- follow in the writer's process ------------------------------------------------------


def test_follow_sees_every_append_path_then_stops_when_idle(data_dir):
    with umlog.open(data_dir, cleaner_interval_ms=None) as b:
        t = b.create_topic("t", config={"segment.bytes": 1024})
        p = t.partition(0)
        p.append_many([value(0), value(1)])
        got = []

        end = 2 + sum(2 if i % 3 == 0 else 1 for i in range(30))  # the end offset after the appends below
        deadline = time.monotonic() + scaled(30)

        def follower():
            # An idle stop while the writer is descheduled (a busy machine) is not
            # the end: follow again from there until every record came; the last
            # read is the one that stops when idle.
            while len(got) < end and time.monotonic() < deadline:
                for r in p.read(len(got), follow=True, timeout=0.5):
                    got.append(r.offset)

        th = threading.Thread(target=follower, daemon=True)
        th.start()
        o = 2
        for i in range(30):
            if i % 3 == 0:
                p.append_many([value(o), value(o + 1)])
                o += 2
            elif i % 3 == 1:
                t.append(value(o), partition=0)  # the native path: seen within a tick
                o += 1
            else:
                p.append_batches(umlog._native.core.encode_batch([value(o)]))
                o += 1
            time.sleep(0.005)
        th.join(scaled(40))
        assert not th.is_alive()
        assert o == end and got == list(range(o))
        assert len(p.segments) > 2


def test_follow_with_max_records_and_an_offset_in_the_future_of_a_wait(data_dir):
    with umlog.open(data_dir, cleaner_interval_ms=None) as b:
        p = b.create_topic("t").partition(0)
        it = p.read(None, max_records=3, follow=True, timeout=scaled(5))
        threading.Timer(0.05, lambda: p.append_many([b"a", b"b", b"c", b"d"])).start()
        assert [r.value for r in it] == [b"a", b"b", b"c"]
        assert [r.value for r in p.read(3, follow=True, timeout=0.05)] == [b"d"]
        with pytest.raises(OffsetOutOfRangeError):
            p.read(5, follow=True)


def test_a_follower_stops_when_the_broker_closes(data_dir):
    b = umlog.open(data_dir, cleaner_interval_ms=None)
    p = b.create_topic("t").partition(0)
    done = threading.Event()

    def follower():
        for _ in p.read(0, follow=True):
            pass
        done.set()

    th = threading.Thread(target=follower)
    th.start()
    time.sleep(0.05)
    b.close()
    th.join(scaled(5))
    assert done.is_set()


# -- read-only tailers in this process -------------------------------------------------------


def test_tailer_sees_rolls_retention_and_compaction(data_dir):
    with umlog.open(data_dir, cleaner_interval_ms=None) as w:
        t = w.create_topic("t", config={"segment.bytes": 2048, "cleanup.policy": "compact,delete"})
        p = t.partition(0)
        for i in range(30):
            p.append_many([value(i * 10 + j) for j in range(10)], [b"k%d" % (j % 4) for j in range(10)])
        with umlog.open(data_dir, readonly=True) as r:
            rp = r.topic("t").partition(0)
            assert list(rp.read()) == list(p.read())
            held = rp.read(0)
            first = next(held)
            # Rolls: more segments appear.
            for i in range(30, 40):
                p.append_many([value(i * 10 + j) for j in range(10)], [b"k%d" % (j % 4) for j in range(10)])
            p.append_many([b"open"], [b"o"])  # in the active segment's page cache
            assert [x.offset for x in rp.read(300)] == list(range(300, 401))
            # Compaction replaces segments under the tailer (new inodes, fewer files).
            w.compact("t")
            assert list(rp.read()) == list(p.read())
            # The reader started before still sees the old segment it holds.
            rest = list(held)
            originals = {x.offset: x for x in list(p.read()) + [first]}
            assert [first] + rest and all(originals.get(x.offset, x).value == x.value for x in rest)
            # Retention moves the start under the tailer.
            w.alter_topic_config("t", {"retention.bytes": 0})
            w.run_retention("t")
            assert rp.read_table().num_rows == len(list(p.read()))
            assert rp.start_offset == p.start_offset > 0
            with pytest.raises(OffsetOutOfRangeError):
                rp.read(0)
            assert [x.offset for x in rp.read()] == [x.offset for x in p.read()]
            # Nothing is leaked: each segment the tailer dropped closes with its last reader.
            del held
            fds = len(os.listdir("/proc/self/fd"))
            p.append_many([b"x"], [b"k"])
            rp.refresh()
            assert len(os.listdir("/proc/self/fd")) <= fds + 3


def test_tailer_stops_before_a_batch_the_writer_has_not_finished(data_dir):
    with umlog.open(data_dir, cleaner_interval_ms=None) as w:
        p = w.create_topic("t").partition(0)
        p.append_many([b"a", b"b"])
        path = p.active.log_path
    batch = umlog._native.core.encode_batch([b"c", b"d"], base_offset=2)
    with open(path, "ab") as f:
        f.write(batch[:40])
    with umlog.open(data_dir, readonly=True) as r:
        rp = r.topic("t").partition(0)
        assert [x.value for x in rp.read()] == [b"a", b"b"] and rp.end_offset == 2
        with open(path, "ab") as f:
            f.write(batch[40:])
        assert [x.value for x in rp.read(2)] == [b"c", b"d"] and rp.end_offset == 4
        assert rp.read_table(0).column("value").to_pylist() == [b"a", b"b", b"c", b"d"]


# -- a tailer in another process ---------------------------------------------------------------

TAILER = r"""
import sys, time, umlog
path, topic, last, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
b = umlog.open(path, readonly=True)
while True:
    try:
        p = b.topic(topic).partition(0)
        break
    except umlog.UnknownTopicError:
        time.sleep(0.01)
out = sys.stdout
n = 0
try:
    for r in p.read(0, follow=True, timeout=timeout):
        out.write(f"{r.offset} {r.key.decode() if r.key else '-'} {r.value.decode()}\n")
        n += 1
        if n % 50 == 0:
            out.flush()
        if r.offset >= last:
            break
    out.write("done\n")
except umlog.OffsetOutOfRangeError as e:
    out.write(f"out of range: {e}\n")
out.flush()
"""


class Tailer:
    def __init__(self, path, topic, last, timeout=20.0):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", TAILER, path, topic, str(last), str(scaled(timeout))],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
            cwd=os.path.dirname(path),
        )
        self.lines: list[str] = []
        self.progress = -1
        self._t = threading.Thread(target=self._drain, daemon=True)
        self._t.start()

    def _drain(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if line[:1].isdigit():
                self.progress = int(line.split(" ", 1)[0])

    def finish(self, timeout=60):
        self.proc.wait(scaled(timeout))
        self._t.join(scaled(5))
        err = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        assert self.lines and self.lines[-1] == "done", (self.lines[-3:], err)
        return [tuple(x.split(" ", 2)) for x in self.lines[:-1]]


def test_tailer_process_sees_every_record_in_order_under_rolls_and_retention(tmp_path):
    path = str(tmp_path / "data")
    n = 6000
    with umlog.open(path, cleaner_interval_ms=None) as w:
        t = w.create_topic("t", config={"segment.bytes": 4096, "retention.bytes": 6 * 4096})
        p = t.partition(0)
        tailer = Tailer(path, "t", n - 1)
        o = 0
        while o < n:
            while o - tailer.progress > 150 and tailer.proc.poll() is None:  # stay within retention
                time.sleep(0.001)
            if o % 3:
                t.append(value(o), partition=0)
                o += 1
            else:
                k = min(7, n - o)
                p.append_many([value(o + i) for i in range(k)])
                o += k
            if o % 20 < 3:
                w.flush(durable=False)
                w.run_retention("t")
        w.flush(durable=False)
        got = tailer.finish()
        assert p.start_offset > 0  # retention did delete under the tailer
    assert [int(x[0]) for x in got] == list(range(n))
    assert all(x[2].encode() == value(int(x[0])) for x in got)


def test_tailer_process_under_compaction_sees_consistent_records(tmp_path):
    path = str(tmp_path / "data")
    n = 4000
    with umlog.open(path, cleaner_interval_ms=None) as w:
        t = w.create_topic("t", config={"segment.bytes": 4096, "cleanup.policy": "compact"})
        p = t.partition(0)
        tailer = Tailer(path, "t", n - 1)
        for o in range(0, n, 8):
            p.append_many([value(o + i) for i in range(8)], [b"k%d" % ((o + i) % 37) for i in range(8)])
            if o % 400 == 0:
                w.compact("t")
            if tailer.progress < o - 1000:
                time.sleep(0.002)
        got = tailer.finish()
        final = {r.key: r.value for r in p.read()}
    offsets = [int(x[0]) for x in got]
    assert offsets == sorted(set(offsets)) and offsets[-1] == n - 1
    for off, key, val in got:
        assert val.encode() == value(int(off)) and key == f"k{int(off) % 37}"
    seen = {}
    for _, key, val in got:
        seen[key.encode()] = val.encode()
    assert seen == final

"""Recovery: random appends, flushes, rolls and crashes that cut or garble the
unflushed tail; after every reopen the log must be a dense prefix of what was
appended that holds every flushed record byte for byte, and the indexes must
agree with a scan of the log."""

import os
import random
import signal
import subprocess
import sys
import time

from helpers import subprocess_env
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import umlog
from umlog._native.core import batch_info

CONFIG = {"segment.bytes": 6000, "index.interval.bytes": 200}


def crash(broker):
    """Simulate SIGKILL of the writer: no seal, no sync, no trim, no .clean."""
    broker._stop.set()
    if broker._flusher is not None:
        broker._flusher.join()
    for t in broker._topics.values():
        for p in t.partitions:
            for seg in p.segments:
                seg.offset_index.close()
                seg.time_index.close()
                os.close(seg.fd)
                seg.fd = -1
            p.recovery_point.close()
    broker._closed = True
    broker._release_lock()


def check_indexes(partition):
    for seg in partition.segments:
        oi = seg.offset_index
        for slot in range(oi.entries):
            off, pos = oi.entry(slot)
            assert pos < seg.size
            info = batch_info(seg.read(pos, 61), 0)
            assert info.last_offset == off, (seg, slot, off, pos, info.last_offset)
        ti = seg.time_index
        for slot in range(ti.entries):
            ts, off = ti.entry(slot)
            assert seg.base_offset <= off < seg.next_offset or off < partition.end_offset


class LogMachine(RuleBasedStateMachine):
    @initialize(seed=st.integers(0, 2**32 - 1))
    def setup(self, seed):
        import tempfile

        self.rng = random.Random(seed)
        self.dir = tempfile.mkdtemp(prefix="umlog-recovery-")
        self.b = umlog.open(self.dir)
        self.b.create_topic("t", config=CONFIG)
        self.model = []  # (key, value, headers) in offset order
        self.flushed = 0

    def teardown(self):
        import shutil

        if not self.b._closed:
            self.b.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def p(self):
        return self.b.topic("t").partition(0)

    @rule(value=st.binary(max_size=300), key=st.none() | st.binary(max_size=20), with_header=st.booleans())
    def append(self, value, key, with_header):
        headers = [("h", value[:5])] if with_header else None
        md = self.b.topic("t").append(value, key=key, headers=headers, partition=0)
        assert md.offset == len(self.model)
        self.model.append((key, value, tuple(headers or ())))

    @rule(values=st.lists(st.binary(max_size=200), min_size=1, max_size=60))
    def append_many(self, values):
        offs = self.b.topic("t").append_many(values, partition=0)
        assert list(offs) == list(range(len(self.model), len(self.model) + len(values)))
        self.model.extend((None, v, ()) for v in values)

    @rule()
    def flush(self):
        self.b.flush()
        self.flushed = len(self.model)

    @rule()
    def roll(self):
        self.p.roll()

    @rule(mode=st.sampled_from(["cut", "garble", "none"]), frac=st.floats(0, 1))
    def crash_and_reopen(self, mode, frac):
        p = self.p
        seg = p.active
        synced = seg.synced_size
        log_path, size = seg.log_path, seg.size
        crash(self.b)
        if size > synced:
            at = synced + int((size - synced) * frac)
            if mode == "cut":
                os.truncate(log_path, at)
            elif mode == "garble" and at < size:
                with open(log_path, "r+b") as f:
                    f.seek(at)
                    f.write(bytes(self.rng.randrange(256) for _ in range(min(8, size - at))))
        self.b = umlog.open(self.dir)
        n = self.p.end_offset
        assert self.flushed <= n <= len(self.model), (self.flushed, n, len(self.model))
        del self.model[n:]

    @invariant()
    def log_is_the_model(self):
        if self.b._closed:
            return
        recs = list(self.p.read(0))
        assert [r.offset for r in recs] == list(range(len(self.model)))
        assert [(r.key, r.value, r.headers) for r in recs] == self.model

    @precondition(lambda self: not self.b._closed)
    @invariant()
    def indexes_agree_with_scan(self):
        check_indexes(self.p)


TestRecovery = LogMachine.TestCase
TestRecovery.settings = __import__("hypothesis").settings(
    max_examples=int(os.environ.get("UMLOG_RECOVERY_EXAMPLES", "25")), stateful_step_count=30, deadline=None
)


def test_torn_tail_is_truncated_and_never_served(data_dir):
    with umlog.open(data_dir) as b:
        t = b.create_topic("t")
        t.append_many([b"a" * 100] * 10, partition=0)
        t.append_many([b"b" * 100] * 10, partition=0)
        path = t.partition(0).active.log_path
        size = t.partition(0).active.size
    os.remove(os.path.join(data_dir, ".clean"))
    os.truncate(path, size - 7)
    with umlog.open(data_dir) as b:
        p = b.topic("t").partition(0)
        assert p.end_offset == 10
        assert [r.value for r in p.read(0)] == [b"a" * 100] * 10
        assert p.recovered_bytes > 0
        p2 = b.topic("t")
        p2.append(b"c", partition=0)
        assert p.end_offset == 11


WRITER = r"""
import sys, umlog
b = umlog.open(sys.argv[1], fsync="always")
t = b.topic("t") if "t" in b.topics() else b.create_topic("t", config={"segment.bytes": 200000})
i = 0
while True:
    if i % 3 == 0:
        offs = t.append_many([b"m%d-%d" % (i, j) for j in range(20)], partition=0)
        print("A", offs[0], offs[-1], i, flush=True)
    else:
        md = t.append(b"s%d" % i, partition=0)
        print("A", md.offset, md.offset, i, flush=True)
    i += 1
"""


def test_sigkill_with_fsync_always_loses_no_acknowledged_append(data_dir):
    acked = {}
    for cycle in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, data_dir],
            stdout=subprocess.PIPE,
            text=True,
            cwd=os.path.dirname(data_dir), env=subprocess_env(),  # not the source tree: see test_broker.py
        )
        deadline = time.monotonic() + 0.4 + cycle * 0.2
        lines = []
        while time.monotonic() < deadline:
            lines.append(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        for line in lines:
            if line.startswith("A "):
                _, first, last, i = line.split()
                acked[int(first)] = (int(last), int(i))
        assert acked, "the writer acknowledged nothing"
        with umlog.open(data_dir) as b:
            recs = {r.offset: r.value for r in b.topic("t").partition(0).read(0)}
        for first, (last, i) in acked.items():
            if first == last and i % 3:
                assert recs[first] == b"s%d" % i
            else:
                assert [recs[o] for o in range(first, last + 1)] == [b"m%d-%d" % (i, j) for j in range(20)]

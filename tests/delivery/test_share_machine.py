"""The share group against a model, with a fake clock and in-process crashes.

Every record appended is eventually acked or dead-lettered exactly once; no
acked record is handed out again; delivery counts only grow (each hand-out is
exactly the model's count + 1, across crashes too); no two handles hold the
same record at once; dead letters carry the original's place, timestamp,
key, value, headers and delivery count.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile

from delivery.share_helpers import FakeClock, dead_letters
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule
from log.test_recovery import crash

import umlog
from umlog.delivery import InvalidRecordStateError

LOCK_S = 1.0
MAX_ATTEMPTS = 3
TTL_MS = 500


class ShareMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        # tmpfs when there is one: every example opens and closes brokers, whose
        # fsyncs on a busy disk would be most of the run (crashes keep the page
        # cache either way, which is all an in-process crash is).
        shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self.dir = tempfile.mkdtemp(prefix="umlog-share-", dir=shm)
        self.clock = FakeClock()
        self.b = umlog.open(self.dir, cleaner_interval_ms=None)
        self.b.create_topic("t", partitions=2)
        self.records: dict = {}  # (partition, offset) -> {"count", "done", "value", "ttl"}
        self.held: dict = {}  # (partition, offset) -> (handle index, ShareRecord, lock deadline)
        self.stale: list = []  # (handle index, ShareRecord) that no longer hold a lock
        self.rejected: dict = {}  # (partition, offset) -> reason
        self.n = 0
        self._open_group()

    def _open_group(self):
        self.handles = [self.b.share_group("g", topics=["t"], dead_letter="t.dlq", start="earliest",
                                           max_attempts=MAX_ATTEMPTS, lock_ms=int(LOCK_S * 1000),
                                           backoff_ms=(100, 400), max_in_flight=6, clock=self.clock,
                                           rng=random.Random(7)) for _ in range(2)]

    def teardown(self):
        try:
            if not self.b.closed:
                self._drain_and_check()
        finally:
            if not self.b.closed:
                self.b.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- rules --------------------------------------------------------------------------

    @rule(partition=st.integers(0, 1), n=st.integers(1, 4), ttl=st.booleans())
    def append(self, partition, n, ttl):
        values = [f"v{self.n + i}".encode() for i in range(n)]
        self.n += n
        headers = [[("h", b"x")] + ([("umlog-ttl-ms", str(TTL_MS).encode())] if ttl else []) for _ in values]
        offsets = self.b.topic("t").append_many(values, None, headers, [self.clock.ms] * n, partition=partition)
        for o, v in zip(offsets, values):
            self.records[(partition, o)] = {"count": 0, "done": None, "value": v,
                                            "ttl": self.clock.ms + TTL_MS if ttl else None}

    @rule(h=st.integers(0, 1), n=st.integers(1, 5))
    def acquire(self, h, n):
        got = self.handles[h].acquire(n, timeout=0)
        assert len(got) <= n
        now = self.clock()
        for r in got:
            k = (r.partition, r.offset)
            m = self.records[k]
            assert m["done"] is None, f"{k} handed out after it was {m['done']}"
            assert r.value == m["value"] and r.topic == "t"
            if k in self.held:
                other = self.held.pop(k)
                assert other[2] <= now, f"{k} handed out while its lock is held"
                self.stale.append((other[0], other[1]))
            assert r.delivery_count == m["count"] + 1, (k, r.delivery_count, m["count"])
            assert r.delivery_count <= MAX_ATTEMPTS
            assert m["ttl"] is None or self.clock.ms < m["ttl"], f"{k} handed out after its TTL"
            m["count"] = r.delivery_count
            self.held[k] = (h, r, now + LOCK_S)

    def _settle(self, data, how):
        k = data.draw(st.sampled_from(sorted(self.held)))
        h, r, deadline = self.held.pop(k)
        if self.clock() >= deadline:
            try:
                how(self.handles[h], r)
            except InvalidRecordStateError:
                self.stale.append((h, r))
                return None
            raise AssertionError(f"{k} settled after its lock expired")
        how(self.handles[h], r)
        return k

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def ack(self, data):
        k = self._settle(data, lambda q, r: q.ack(r))
        if k is not None:
            self.records[k]["done"] = "acked"

    @precondition(lambda self: self.held)
    @rule(data=st.data(), delay=st.sampled_from([None, 0, 200]))
    def release(self, data, delay):
        k = self._settle(data, lambda q, r: q.release(r, delay_ms=delay))
        if k is not None and self.records[k]["count"] >= MAX_ATTEMPTS:
            self.records[k]["done"] = "dead"

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def reject(self, data):
        reason = f"bad {self.n}"
        k = self._settle(data, lambda q, r: q.reject(r, reason=reason))
        if k is not None:
            self.records[k]["done"] = "dead"
            self.rejected[k] = reason

    @rule(h=st.integers(0, 1))
    def consumer_goes_away(self, h):
        """Its share session closes, it leaves, or its connection drops: what it
        holds is released at once, delivery counts kept (at the limit: dead)."""
        mine = [k for k, (owner, _, _) in self.held.items() if owner == h]
        self.handles[h].release_held()
        for k in mine:
            _, r, _ = self.held.pop(k)
            self.stale.append((h, r))
            if self.records[k]["count"] >= MAX_ATTEMPTS:
                self.records[k]["done"] = "dead"

    @precondition(lambda self: self.stale)
    @rule(data=st.data())
    def settle_stale(self, data):
        h, r = data.draw(st.sampled_from(self.stale))
        try:
            self.handles[h].ack(r)
        except InvalidRecordStateError:
            return
        raise AssertionError(f"a stale delivery {r} was acked")

    @rule(ms=st.sampled_from([50, 300, 1100]))
    def advance(self, ms):
        self.clock.advance(ms / 1000)

    @rule()
    def crash_and_reopen(self):
        crash(self.b)
        self.b = umlog.open(self.dir, cleaner_interval_ms=None)
        self.held.clear()
        self.stale.clear()
        self._open_group()

    @rule()
    def close_and_reopen(self):
        self.b.close()
        self.b = umlog.open(self.dir, cleaner_interval_ms=None)
        self.held.clear()
        self.stale.clear()
        self._open_group()

    # -- the end --------------------------------------------------------------------------

    def _drain_and_check(self):
        empty = 0
        for _ in range(100):
            self.clock.advance(120)  # past every lock, backoff and TTL
            got = self.handles[0].acquire(50, timeout=0)
            # An expired lock found by this acquire backs off first: the next one gets it.
            empty = 0 if got else empty + 1
            if empty == 2:
                break
            for r in got:
                m = self.records[(r.partition, r.offset)]
                assert m["done"] is None and r.delivery_count == m["count"] + 1
                m["count"] = r.delivery_count
            self.handles[0].ack(got)
            for r in got:
                self.records[(r.partition, r.offset)]["done"] = "acked"
        letters = dead_letters(self.b, "t.dlq") if "t.dlq" in self.b.topics() else []
        seen = set()
        for d in letters:
            k = (d["partition"], d["offset"])
            assert d["topic"] == "t" and k not in seen, f"{k} dead-lettered twice"
            seen.add(k)
            m = self.records[k]
            assert m["done"] != "acked", f"{k} acked and dead-lettered"
            assert d["value"] == m["value"] and d["key"] is None
            assert d["headers"][0] == ("h", b"x")
            assert d["count"] == m["count"], (k, d["count"], m["count"])
            if k in self.rejected:
                assert d["reason"] == self.rejected[k]
            elif d["reason"] == "expired":
                assert m["ttl"] is not None
            else:
                assert m["count"] == MAX_ATTEMPTS, d
        for k, m in self.records.items():
            assert (m["done"] == "acked") != (k in seen), f"{k}: {m['done']}, dead-lettered: {k in seen}"
            if m["done"] == "dead":
                assert k in seen


ShareMachine.TestCase.settings = settings(ShareMachine.TestCase.settings, stateful_step_count=30)
TestShareMachine = ShareMachine.TestCase

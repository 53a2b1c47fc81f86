"""Crashes of the writer: nothing acked is handed out again, nothing unacked is
lost, no dead letter is lost or written twice."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from delivery.share_helpers import dead_letters
from helpers import scaled, subprocess_env
from log.test_recovery import crash

import umlog

N = 600

CHILD = textwrap.dedent("""
    import sys, umlog
    b = umlog.open(sys.argv[1], fsync="never")
    q = b.share_group("g", topics=["orders"], start="earliest", dead_letter="orders.dlq", backoff_ms=None)
    while True:
        for r in q.acquire(7, timeout=5):
            n = int(r.value)
            print("T", r.partition, r.offset, flush=True)
            if n % 11 == 0:
                q.reject(r, reason="eleven")
            elif n % 5 == 0 and r.delivery_count == 1:
                q.release(r, delay_ms=0)
                continue
            else:
                q.ack(r)
            print("A", r.partition, r.offset, flush=True)
""")


def test_sigkill_of_the_writer_mid_way(tmp_path):
    data = str(tmp_path / "data")
    with umlog.open(data) as b:
        t = b.create_topic("orders", partitions=2)
        for p in range(2):
            t.append_many([b"%d" % (p * N + i) for i in range(N)], partition=p)
    child = subprocess.Popen([sys.executable, "-c", CHILD, data], stdout=subprocess.PIPE, env=subprocess_env(),
                             cwd=tmp_path)
    lines = []
    try:
        while len(lines) < N // 2:  # mid-way: about a quarter of the records settled
            line = child.stdout.readline()
            assert line, f"the child ended early (exit {child.wait(scaled(10))})"
            lines.append(line.split())
    finally:
        child.kill()  # SIGKILL; no error if the child already ended
        rest = child.stdout.read()
        child.stdout.close()
        child.wait(scaled(30))
    lines += [ln.split() for ln in rest.splitlines()]
    lines = [ln for ln in lines if len(ln) == 3]  # the kill may cut the last line short
    tried = {(int(p), int(o)) for w, p, o in lines if w == b"T"}
    settled = {(int(p), int(o)) for w, p, o in lines if w == b"A"}
    assert settled
    with umlog.open(data) as b:
        q = b.share_group("g", topics=["orders"], start="earliest", dead_letter="orders.dlq", backoff_ms=None)
        again = set()
        while got := q.acquire(100, timeout=0):
            for r in got:
                k = (r.partition, r.offset)
                assert k not in settled, f"{k} was settled before the crash and handed out again"
                again.add(k)
            q.ack(got)
        letters = [(d["partition"], d["offset"]) for d in dead_letters(b, "orders.dlq")]
    assert len(letters) == len(set(letters)), "a record was dead-lettered twice"
    assert not set(letters) & again
    everything = {(p, o) for p in range(2) for o in range(N)}
    # What was neither handed out after the crash nor dead-lettered was settled by the child.
    assert everything - again - set(letters) <= tried
    rejected = {(p, o) for p in range(2) for o in range(N) if (p * N + o) % 11 == 0}
    assert set(letters) <= rejected


def test_a_crash_between_pending_and_the_dead_letter(data_dir, monkeypatch):
    from umlog.delivery.group import LOST_REASON, _Core

    b = umlog.open(data_dir)
    b.create_topic("orders").append_many([b"a", b"b"], partition=0)
    q = b.share_group("g", topics=["orders"], start="earliest", dead_letter="orders.dlq")
    ra, rb = q.acquire(2, timeout=0)
    q.reject(ra, reason="first")  # written whole

    def die(self, dlq, letters):
        raise SystemExit("crash")

    monkeypatch.setattr(_Core, "_append_letters", die)
    with pytest.raises(SystemExit):
        q.reject(rb, reason="second")  # pending written, no dead letter
    monkeypatch.undo()
    crash(b)
    with umlog.open(data_dir) as b:
        q = b.share_group("g", topics=["orders"], start="earliest", dead_letter="orders.dlq")
        assert q.acquire(2, timeout=0) == []
        assert [(d["offset"], d["reason"]) for d in dead_letters(b, "orders.dlq")] == [(0, "first"), (1, LOST_REASON)]
    with umlog.open(data_dir) as b:  # and once only
        b.share_group("g", topics=["orders"], start="earliest", dead_letter="orders.dlq")
        assert len(dead_letters(b, "orders.dlq")) == 2


def test_a_crash_after_the_dead_letter_before_archived(data_dir, monkeypatch):
    from umlog.delivery.group import _Core

    b = umlog.open(data_dir)
    b.create_topic("orders").append_many([b"a"], partition=0)
    q = b.share_group("g", topics=["orders"], start="earliest", dead_letter="orders.dlq")
    (r,) = q.acquire(1, timeout=0)
    real = _Core._append_letters

    def then_die(self, dlq, letters):
        real(self, dlq, letters)
        raise SystemExit("crash")

    monkeypatch.setattr(_Core, "_append_letters", then_die)
    with pytest.raises(SystemExit):
        q.reject(r, reason="bad")
    monkeypatch.undo()
    crash(b)
    with umlog.open(data_dir) as b:
        q = b.share_group("g", topics=["orders"], start="earliest", dead_letter="orders.dlq")
        assert q.acquire(1, timeout=0) == []
        assert [(d["offset"], d["reason"]) for d in dead_letters(b, "orders.dlq")] == [(0, "bad")]

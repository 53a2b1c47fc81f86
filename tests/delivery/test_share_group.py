"""Share groups in one process: the API's promises one by one, the state's
bytes, competing threads, and ``umlog share-groups``."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time

import pytest
from delivery.share_helpers import dead_letters
from helpers import scaled, subprocess_env

import umlog
from umlog.broker import INTERNAL_TOPICS
from umlog.delivery import STATE_TOPIC, InvalidRecordStateError
from umlog.delivery.state import (
    ACKED,
    ACQUIRED,
    AVAILABLE,
    Entry,
    Window,
    decode_key,
    decode_window,
    encode_key,
    encode_window,
)


def group(b, clock, **kw):
    kw.setdefault("start", "earliest")
    return b.share_group("g", topics=["orders"], clock=clock, rng=random.Random(1), **kw)


def test_latest_starts_at_the_end_and_earliest_at_the_start(broker, clock):
    t = broker.create_topic("orders", partitions=2)
    t.append_many([b"old"], partition=0)
    late = broker.share_group("late", topics=["orders"], clock=clock)
    early = broker.share_group("early", topics=["orders"], clock=clock, start="earliest")
    t.append_many([b"new"], partition=1)
    assert [r.value for r in late.acquire(10, timeout=0)] == [b"new"]
    assert sorted(r.value for r in early.acquire(10, timeout=0)) == [b"new", b"old"]
    assert STATE_TOPIC in INTERNAL_TOPICS and STATE_TOPIC in broker.topics(internal=True)
    assert STATE_TOPIC not in broker.topics()


def test_latest_is_kept_across_a_restart(data_dir, clock):
    with umlog.open(data_dir) as b:
        b.create_topic("orders").append_many([b"before"], partition=0)
        b.share_group("g", topics=["orders"], clock=clock)
        b.topic("orders").append_many([b"while closed"], partition=0)
    with umlog.open(data_dir) as b:
        assert [r.value for r in b.share_group("g", topics=["orders"], clock=clock).acquire(10, timeout=0)] == [
            b"while closed"]


def test_a_deleted_topic_takes_its_share_state_with_it(data_dir, clock):
    with umlog.open(data_dir) as b:
        b.create_topic("orders").append_many([b"a", b"b", b"c"], partition=0)
        b.create_topic("other").append_many([b"x"], partition=0)
        q = b.share_group("g", topics=["orders", "other"], clock=clock, start="earliest")
        got = q.acquire(10, timeout=0)
        q.ack(got)
        b.delete_topic("orders")
        assert q.acquire(10, timeout=0) == []  # the open group goes on with what is left
        b.topic("other").append_many([b"y"], partition=0)
        got = q.acquire(10, timeout=0)
        assert [r.value for r in got] == [b"y"]
        q.ack(got)
        assert {t for t, _ in b._share_groups().store.group_values("g")} == {"other"}
        b.create_topic("orders").append_many([b"new"], partition=0)
        # Created again: a partition of a topic the group knows starts at its beginning.
        got = q.acquire(10, timeout=0)
        assert [r.value for r in got] == [b"new"]
        q.ack(got)
    with umlog.open(data_dir) as b:  # and the tombstones were written, not only forgotten
        b.delete_topic("orders")
        b.create_topic("orders").append_many([b"again"], partition=0)
        q = b.share_group("g", topics=["orders", "other"], clock=clock, start="earliest")
        assert [r.value for r in q.acquire(10, timeout=0)] == [b"again"]


def test_a_group_whose_only_topic_is_deleted_hands_out_nothing(broker, clock):
    broker.create_topic("orders").append_many([b"a"], partition=0)
    q = group(broker, clock)
    q.ack(q.acquire(10, timeout=0))
    broker.delete_topic("orders")
    assert q.acquire(10, timeout=0) == []


def test_ack_release_reject_and_the_dead_letter(broker, clock):
    t = broker.create_topic("orders", partitions=1)
    t.append_many([b"a", b"b", b"c"], [b"ka", b"kb", b"kc"], [[("h", b"1")], [], []], partition=0)
    q = group(broker, clock, dead_letter="orders.dlq", max_attempts=2, backoff_ms=None)
    a, b_, c = q.acquire(10, timeout=0)
    assert [(r.offset, r.delivery_count, r.topic, r.partition) for r in (a, b_, c)] == [
        (0, 1, "orders", 0), (1, 1, "orders", 0), (2, 1, "orders", 0)]
    assert q.acquire(10, timeout=0) == []  # all locked
    q.ack(a)
    q.reject(c, reason="no such customer")
    q.release(b_)
    (b2,) = q.acquire(10, timeout=0)
    assert (b2.offset, b2.delivery_count) == (1, 2)
    with pytest.raises(InvalidRecordStateError):
        q.ack(b_)  # the first delivery's lock is gone
    with pytest.raises(InvalidRecordStateError):
        q.ack(a)  # settled
    q.release(b2)  # the second failure of max_attempts=2: dead
    assert q.acquire(10, timeout=0) == []
    letters = dead_letters(broker, "orders.dlq")
    assert [(d["offset"], d["count"], d["reason"], d["key"], d["value"]) for d in letters] == [
        (2, 1, "no such customer", b"kc", b"c"),
        (1, 2, "released after 2 deliveries (max_attempts 2)", b"kb", b"b")]
    d = letters[0]
    assert (d["topic"], d["partition"]) == ("orders", 0)
    raw = dict(letters[0]["headers"])
    assert len(raw["kafka_dlt-original-partition"]) == 4 and len(raw["kafka_dlt-original-offset"]) == 8
    assert d["timestamp"] == next(t.partitions[0].read(2)).timestamp
    assert "orders.dlq" in broker.topics()
    assert q.describe()["partitions"][0]["start_offset"] == 3


def test_release_with_a_delay_hides_the_record_until_then(broker, clock):
    broker.create_topic("orders").append_many([b"a"], partition=0)
    q = group(broker, clock, backoff_ms=(60_000, 60_000))
    (r,) = q.acquire(1, timeout=0)
    q.release(r, delay_ms=500)  # the caller's delay, not the group's backoff
    assert q.acquire(1, timeout=0) == []
    clock.advance(0.499)
    assert q.acquire(1, timeout=0) == []
    clock.advance(0.002)
    (again,) = q.acquire(1, timeout=0)
    assert (again.offset, again.delivery_count) == (0, 2)


def test_a_lock_expires_and_the_count_is_kept(broker, clock):
    broker.create_topic("orders").append_many([b"x"], partition=0)
    q1 = group(broker, clock, lock_ms=1000, backoff_ms=None)
    q2 = group(broker, clock, lock_ms=1000, backoff_ms=None)
    (r,) = q1.acquire(1, timeout=0)
    clock.advance(0.999)
    assert q2.acquire(1, timeout=0) == []
    clock.advance(0.001)
    (r2,) = q2.acquire(1, timeout=0)
    assert r2.delivery_count == 2
    with pytest.raises(InvalidRecordStateError):
        q1.ack(r)
    with pytest.raises(InvalidRecordStateError):
        q1.ack(r2)  # held by the other handle
    q2.ack(r2)


def test_backoff_doubles_with_jitter_up_to_the_maximum(broker, clock):
    broker.create_topic("orders").append_many([b"x"], partition=0)
    q = group(broker, clock, backoff_ms=(1000, 4000), max_attempts=10)
    (r,) = q.acquire(1, timeout=0)
    waits = []
    for n in range(1, 6):
        assert r.delivery_count == n
        q.release(r)  # the n-th failure
        waited = 0
        while not (got := q.acquire(1, timeout=0)):
            clock.advance(0.05)
            waited += 50
        waits.append(waited)
        (r,) = got
    for n, w in enumerate(waits, 1):
        d = min(4000, 1000 * 2 ** (n - 1))
        assert d // 2 <= w <= d + 50, (n, waits)
    q.release(r, delay_ms=0)  # no backoff asked for
    assert q.acquire(1, timeout=0)[0].delivery_count == 7


def test_ttl_expired_records_are_never_handed_out(broker, clock):
    t = broker.create_topic("orders")
    ttl = [("umlog-ttl-ms", b"1000")]
    t.append_many([b"stale", b"fresh", b"no ttl"], None, [ttl, ttl, []],
                  [clock.ms - 1000, clock.ms, clock.ms - 10**6], partition=0)
    q = group(broker, clock, dead_letter="orders.dlq")
    assert [r.value for r in q.acquire(10, timeout=0)] == [b"fresh", b"no ttl"]
    assert [(d["value"], d["reason"], d["count"]) for d in dead_letters(broker, "orders.dlq")] == [
        (b"stale", "expired", 0)]
    # Without a dead-letter topic an expired record is dropped (acked).
    q2 = broker.share_group("nodlq", topics=["orders"], start="earliest", clock=clock)
    clock.advance(1.0)
    assert [r.value for r in q2.acquire(10, timeout=0)] == [b"no ttl"]
    row = q2.describe()["partitions"][0]
    assert (row["start_offset"], row["in_flight"], row["unacked"]) == (2, 1, 1)


def test_an_amqp_expiration_is_a_ttl_and_expire_false_leaves_expiry_to_the_caller(broker, clock):
    t = broker.create_topic("orders")
    both = [("umlog-ttl-ms", b"60000"), ("amqp-expiration", b"1000")]  # the earlier deadline counts
    t.append_many([b"amqp stale", b"both stale", b"amqp fresh"], None,
                  [[("amqp-expiration", b"1000")], both, [("amqp-expiration", b"5000")]],
                  [clock.ms - 1000, clock.ms - 2000, clock.ms - 1000], partition=0)
    q = group(broker, clock, dead_letter="orders.dlq")
    assert [r.value for r in q.acquire(10, timeout=0)] == [b"amqp fresh"]
    assert [(d["value"], d["reason"]) for d in dead_letters(broker, "orders.dlq")] == [
        (b"amqp stale", "expired"), (b"both stale", "expired")]
    # expire=False (an AMQP queue, which dead-letters through its exchange): handed out as they are
    q2 = broker.share_group("as-is", topics=["orders"], start="earliest", clock=clock, expire=False)
    assert [r.value for r in q2.acquire(10, timeout=0)] == [b"amqp stale", b"both stale", b"amqp fresh"]


def test_a_full_window_fetches_nothing_new_but_redelivers(broker, clock):
    broker.create_topic("orders").append_many([b"%d" % i for i in range(10)], partition=0)
    q = group(broker, clock, max_in_flight=4, backoff_ms=None)
    got = q.acquire(10, timeout=0)
    assert [r.offset for r in got] == [0, 1, 2, 3]
    q.ack(got[1:])
    assert q.acquire(10, timeout=0) == []  # offset 0 holds the window
    q.release(got[0])
    assert [(r.offset, r.delivery_count) for r in q.acquire(10, timeout=0)] == [(0, 2)]


def test_settings_of_an_open_group_are_fixed(broker, clock):
    broker.create_topic("orders")
    group(broker, clock, max_attempts=3)
    group(broker, clock, max_attempts=3)
    with pytest.raises(ValueError, match="max_attempts"):
        group(broker, clock, max_attempts=4)
    with pytest.raises(umlog.UnknownTopicError):
        broker.share_group("other", topics=["nope"])
    with pytest.raises(ValueError):
        broker.share_group("other", topics=["orders"], start="middle")


def test_fsync_always_state_is_durable_when_ack_returns(data_dir, clock):
    with umlog.open(data_dir, fsync="always") as b:
        b.create_topic("orders").append_many([b"x"], partition=0)
        q = group(b, clock)
        (r,) = q.acquire(1, timeout=0)
        q.ack(r)
        p = b._share.store.partition_of("g")
        assert p.flushed_offset == p.end_offset


def test_state_bytes_round_trip():
    assert decode_key(encode_key("g/1", "orders", 7)) == ("g/1", "orders", 7)
    w = Window("orders", 7, 100, 104, {100: Entry(ACQUIRED, 3), 102: Entry(ACKED, 1), 103: Entry(AVAILABLE, 2, 555)})
    buf = encode_window(w)
    assert len(buf) == 2 + 8 + 8 + 4 + 3 * 15
    assert buf[:22] == b"\x00\x00" + (100).to_bytes(8, "big") + (104).to_bytes(8, "big") + (3).to_bytes(4, "big")
    assert buf[22:37] == (0).to_bytes(4, "big") + bytes([ACQUIRED]) + (3).to_bytes(2, "big") + bytes(8)
    back = decode_window("orders", 7, buf)
    assert (back.start, back.end) == (100, 104)
    # A restart finds the acquired record available, its count kept.
    assert {o: (e.state, e.count, e.aux) for o, e in back.entries.items()} == {
        100: (AVAILABLE, 3, 0), 102: (ACKED, 1, 0), 103: (AVAILABLE, 2, 555)}


def test_acquire_waits_for_an_append(broker):
    t = broker.create_topic("orders")
    q = broker.share_group("g", topics=["orders"])
    threading.Thread(target=lambda: t.append_many([b"late"], partition=0)).start()
    got = q.acquire(1, timeout=scaled(10))
    assert [r.value for r in got] == [b"late"]


def test_competing_threads_never_hold_one_record_at_once(broker):
    n, workers = 400, 4
    t = broker.create_topic("orders", partitions=3)
    for p in range(3):
        t.append_many([b"%d-%d" % (p, i) for i in range(n // 4)], partition=p)
    t.append_many([b"last-%d" % i for i in range(n - 3 * (n // 4))], partition=0)
    # Releases are random (one in five), so a record released five times running
    # would be dropped by the default max_attempts and never acked: room enough.
    shared = broker.share_group("g", topics=["orders"], start="earliest", lock_ms=600_000, backoff_ms=None,
                                max_attempts=1_000)
    guard = threading.Lock()
    holding: set = set()
    acked: list = []
    errors: list = []

    def work(i):
        q = shared if i % 2 else broker.share_group("g", topics=["orders"], start="earliest", lock_ms=600_000,
                                                   backoff_ms=None)
        rng = random.Random(i)
        try:
            while True:
                with guard:
                    # Done, or a worker failed (the records it held stay locked
                    # for lock_ms): stop, so the assertions below say why.
                    if len(acked) >= n or errors:
                        return
                got = q.acquire(rng.randint(1, 8), timeout=scaled(0.2))
                with guard:
                    for r in got:
                        k = (r.partition, r.offset)
                        if k in holding:
                            errors.append(f"{k} held twice")
                        holding.add(k)
                for r in got:
                    with guard:
                        holding.discard((r.partition, r.offset))
                    if rng.random() < 0.2:
                        q.release(r, delay_ms=0)
                    else:
                        q.ack(r)
                        with guard:
                            acked.append((r.partition, r.offset))
        except Exception as e:  # reported below, on the test's thread
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for th in threads:
        th.start()
    deadline = time.monotonic() + scaled(60)  # one deadline for all, inside the suite's own timeout
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
    assert errors == []
    assert not any(th.is_alive() for th in threads)
    assert len(acked) == n and len(set(acked)) == n


def umlog_cli(cwd, *args):
    r = subprocess.run([sys.executable, "-m", "umlog", *args], cwd=cwd, capture_output=True,
                       env=subprocess_env(), timeout=120)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def test_cli_share_groups_list_and_describe(tmp_path, clock):
    data = str(tmp_path / "data")
    with umlog.open(data) as b:
        b.create_topic("orders", partitions=2).append_many([b"a", b"b", b"c"], partition=0)
        q = b.share_group("billing", topics=["orders"], start="earliest", backoff_ms=None)
        r1, r2, _ = q.acquire(3, timeout=0)
        q.ack(r1)
        q.release(r2)
        q.acquire(1, timeout=0)  # r2 again: delivery 2
    rc, out, err = umlog_cli(tmp_path, "share-groups", "list", "--data-dir", data, "--json")
    assert rc == 0, err
    assert [(g["group"], g["topics"], g["partitions"], g["unacked"]) for g in json.loads(out)] == [
        ("billing", ["orders"], 2, 2)]
    rc, out, err = umlog_cli(tmp_path, "share-groups", "describe", "billing", "--data-dir", data, "--json")
    assert rc == 0, err
    p0 = json.loads(out)["partitions"][0]
    assert (p0["start_offset"], p0["end_offset"], p0["available"], p0["unacked"]) == (1, 3, 2, 2)
    assert p0["delivery_counts"] == {"1": 1, "2": 1}
    assert p0["oldest_unacked_age_ms"] is not None
    assert (p0["in_flight"], p0["acked"], p0["archived"]) == (0, 0, 0)  # locks do not outlive the process
    rc, out, err = umlog_cli(tmp_path, "share-groups", "describe", "billing", "--data-dir", data)
    assert rc == 0 and "billing" in out
    rc, out, err = umlog_cli(tmp_path, "share-groups", "describe", "nope", "--data-dir", data)
    assert rc == 1 and err.strip() == f"error: unknown share group 'nope' in {data}"

"""Exactly-once forwarding (umlog/delivery/forward.py): whatever the crash point,
every derived record is on its target once, in source order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from log.test_recovery import crash

import umlog
from umlog.delivery.forward import PRODUCER_ID_BASE, Derived, ForwardStream, forward_producer_id, service_group
from umlog.groups.offsets import SERVICE_GROUP_PREFIX

GROUP = service_group("test", "split")


def derive(r):
    """Even values to 'even' (partition by value), the rest to 'odd' partition 0; multiples of 3 twice."""
    n = int(r.value)
    out = [Derived("even" if n % 2 == 0 else "odd", n % 3 if n % 2 == 0 else 0, r.value, r.key,
                   [("from", b"%d" % r.offset)], r.timestamp)]
    if n % 3 == 0:
        out.append(Derived("odd", 0, r.value + b"!", None, None, None))
    return out


def run(b, stop_after: int | None, checkpoint_every: int, batch: int) -> None:
    """Forward source-0 through derive, checkpointing every few sends; stop (as a
    crash would) once ``stop_after`` sends are done."""
    s = ForwardStream(b, GROUP, "src", 0)
    pos = 0 if s.position is None else s.position
    p = b.topic("src").partition(0)
    sends = 0
    while pos < p.end_offset:
        recs = list(p.read(pos, max_records=batch))
        pos = recs[-1].offset + 1
        s.send([d for r in recs for d in derive(r)], pos)
        sends += 1
        if sends % checkpoint_every == 0:
            s.checkpoint()
        if stop_after is not None and sends >= stop_after:
            return
    s.checkpoint()


def expected(n):
    even, odd = {0: [], 1: [], 2: []}, []
    for i in range(n):
        v = b"%d" % i
        if i % 2 == 0:
            even[i % 3].append(v)
        else:
            odd.append(v)
        if i % 3 == 0:
            odd.append(v + b"!")
    return even, odd


def values(b, topic, partition):
    return [r.value for r in b.topic(topic).partition(partition).read(0)]


def setup(b, n):
    b.create_topic("src").append_many([b"%d" % i for i in range(n)], partition=0)
    b.create_topic("even", partitions=3)
    b.create_topic("odd")


@settings(max_examples=25)
@given(n=st.integers(1, 200), cuts=st.lists(st.integers(1, 8), max_size=4), every=st.integers(1, 4),
       batch=st.integers(1, 17), reopen=st.booleans())
def test_any_number_of_crashes_gives_each_record_once(tmp_path_factory, n, cuts, every, batch, reopen):
    data = str(tmp_path_factory.mktemp("fw"))
    b = umlog.open(data, cleaner_interval_ms=None)
    setup(b, n)
    for cut in cuts:
        run(b, cut, every, batch)
        if reopen:  # the producer state comes back from the log, as after SIGKILL
            crash(b)
            b = umlog.open(data, cleaner_interval_ms=None)
    run(b, None, every, batch)
    even, odd = expected(n)
    for i in range(3):
        assert values(b, "even", i) == even[i]
    assert values(b, "odd", 0) == odd
    assert b.group(GROUP).committed("src", 0) == n
    b.close()


def test_headers_keys_and_timestamps_are_kept(broker):
    setup(broker, 0)
    broker.topic("src").append(b"4", key=b"k", timestamp=1234, partition=0)
    run(broker, None, 1, 10)
    (r,) = broker.topic("even").partition(1).read(0)
    assert (r.key, r.value, r.timestamp, r.headers) == (b"k", b"4", 1234, (("from", b"0"),))


def test_a_target_created_again_is_appended_to_not_skipped(broker):
    setup(broker, 4)
    run(broker, None, 1, 10)
    broker.delete_topic("odd")
    broker.create_topic("odd")
    broker.topic("src").append_many([b"5", b"7"], partition=0)
    run(broker, None, 1, 10)
    assert values(broker, "odd", 0) == [b"5", b"7"]


def test_producer_ids_are_stable_and_out_of_the_kafka_range():
    a = forward_producer_id("umlog.route.x", "t", 0)
    assert a == forward_producer_id("umlog.route.x", "t", 0) != forward_producer_id("umlog.route.x", "t", 1)
    assert a >= PRODUCER_ID_BASE and a < 1 << 63


def test_service_checkpoints_never_expire(broker):
    setup(broker, 2)
    run(broker, None, 1, 10)
    broker.group("consumer").commit("src", 0, 1)
    gone = broker.offsets.expire(0, now_ms=1 << 60)
    assert "consumer" in gone and GROUP not in gone
    assert GROUP.startswith(SERVICE_GROUP_PREFIX)
    assert broker.group(GROUP).committed("src", 0) == 2


@pytest.mark.parametrize("fsync", ["always", "interval"])
def test_targets_are_synced_before_the_checkpoint(data_dir, fsync):
    b = umlog.open(data_dir, fsync=fsync, cleaner_interval_ms=None)
    setup(b, 10)
    run(b, None, 1, 3)
    for t, parts in (("even", 3), ("odd", 1)):
        for i in range(parts):
            p = b.topic(t).partition(i)
            assert p.flushed_offset == p.end_offset
    b.close()

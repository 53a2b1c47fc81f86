"""What a protocol door asks of share groups besides handing records out:
what waits in a group (``available``), the groups with saved state, and
deleting a group so that one made again under its name starts afresh."""

from __future__ import annotations

import umlog
from umlog.delivery.group import delete_share_group, saved_share_groups


def test_available_lists_released_records_and_the_window_end(broker, clock):
    t = broker.create_topic("orders", partitions=1)
    t.append_many([b"a", b"b", b"c"], partition=0)
    g = broker.share_group("g", topics=["orders"], clock=clock, start="earliest", backoff_ms=None)
    a, b = g.acquire(2, timeout=0)
    assert g.available() == [("orders", 0, [], 2)]
    g.release([b], delay_ms=0)
    g.ack([a])
    [(topic, partition, released, end)] = g.available()
    assert (topic, partition, [r.value for r in released], end) == ("orders", 0, [b"b"], 2)


def test_a_deleted_group_has_no_saved_state_and_starts_afresh(data_dir, clock):
    b = umlog.open(data_dir, cleaner_interval_ms=None)
    try:
        t = b.create_topic("orders", partitions=1)
        t.append_many([b"a", b"b"], partition=0)
        g = b.share_group("g", topics=["orders"], clock=clock, start="earliest")
        g.ack(g.acquire(10, timeout=0))
        b.share_group("other", topics=["orders"], clock=clock)
        assert sorted(saved_share_groups(b)) == ["g", "other"]
        delete_share_group(b, "g")
        assert saved_share_groups(b) == ["other"]
        again = b.share_group("g", topics=["orders"], clock=clock, start="earliest")
        assert [r.value for r in again.acquire(10, timeout=0)] == [b"a", b"b"]
        delete_share_group(b, "g")
        delete_share_group(b, "never-made")  # nothing to delete: no error
    finally:
        b.close()
    b = umlog.open(data_dir, cleaner_interval_ms=None)  # the tombstones hold across a restart
    try:
        assert saved_share_groups(b) == ["other"]
    finally:
        b.close()

"""Committed offsets go with their topic, and expire (Kafka's
offsets.retention.minutes) once their group has had no member for that long."""

from __future__ import annotations

import os
import time

import pytest
from helpers import scaled, wait_until

import umlog
from umlog.groups.coordinator import Coordinator
from umlog.groups.offsets import OffsetAndMetadata

from .test_coordinator import join_member, sync

DAY_MS = 86_400_000


def _now_ms():
    return time.time_ns() // 1_000_000


def test_deleting_a_topic_deletes_its_committed_offsets(broker, data_dir):
    broker.create_topic("t", partitions=2)
    broker.create_topic("keep")
    broker.group("a").commit_many({("t", 0): 0, ("t", 1): 0, ("keep", 0): 0})
    broker.group("b").commit("t", 1, 0)
    broker.delete_topic("t")
    assert broker.offsets.group_offsets("a") == {("keep", 0): broker.offsets.committed("a", "keep", 0)}
    assert not broker.offsets.has_group("b")
    broker.create_topic("t")  # again: it starts with no committed offsets
    assert broker.group("a").committed("t", 0) is None
    broker.close()
    with umlog.open(data_dir) as b:  # the tombstones are in the log: a replay agrees
        assert b.group("a").committed_all() == {("keep", 0): 0}
        assert b.groups() == ["a"]


def test_deleting_a_topic_without_groups_creates_no_offsets_topic(broker):
    broker.create_topic("t")
    broker.delete_topic("t")
    assert broker.topics(internal=True) == []


def test_expiry_by_last_commit_and_empty_time(broker):
    broker.create_topic("t", partitions=3)
    now = _now_ms()
    s = broker.offsets
    s.commit("old", {("t", 0): OffsetAndMetadata(0, commit_timestamp=now - 8 * DAY_MS)})
    s.commit("recent", {("t", 0): OffsetAndMetadata(0, commit_timestamp=now - 1 * DAY_MS)})
    s.commit("live", {("t", 0): OffsetAndMetadata(0, commit_timestamp=now - 30 * DAY_MS)})
    s.commit("emptied", {("t", 0): OffsetAndMetadata(0, commit_timestamp=now - 30 * DAY_MS)})
    # mixed: the newest commit of the group counts
    s.commit("mixed", {("t", 1): OffsetAndMetadata(0, commit_timestamp=now - 30 * DAY_MS),
                       ("t", 2): OffsetAndMetadata(0, commit_timestamp=now - 2 * DAY_MS)})
    gone = s.expire(7 * DAY_MS, now, live={"live"}, empty_since_ms={"emptied": now - DAY_MS})
    assert gone == {"old": [("t", 0)]}
    assert s.groups() == ["emptied", "live", "mixed", "recent"]


def test_the_coordinator_keeps_offsets_of_groups_with_members(broker, sched):
    broker.create_topic("t")
    c = Coordinator(broker.offsets, sched, initial_rebalance_delay_ms=0)
    try:
        j = join_member(c, "members").result
        sync(c, j, {j.member_id: b""}, group="members")
        old = OffsetAndMetadata(5, commit_timestamp=_now_ms() - 30 * DAY_MS)
        broker.offsets.commit("members", {("t", 0): old})
        broker.offsets.commit("nobody", {("t", 0): old})
        assert c.expire_offsets(7 * DAY_MS) == {"nobody": [("t", 0)]}
        assert broker.offsets.has_group("members")
        c.leave("members", [(j.member_id, None)])  # now empty: the clock starts now, not at the old commit
        assert c.expire_offsets(7 * DAY_MS) == {}
        sched.advance(8 * 86_400)
        assert c.expire_offsets(7 * DAY_MS) == {"members": [("t", 0)]}
    finally:
        c.shutdown()


@pytest.mark.clients
def test_a_running_server_expires_old_offsets_on_its_own(tmp_path):
    from server.kafka.serve_process import ServeProcess

    data = os.path.join(str(tmp_path), "data")
    with umlog.open(data) as b:
        b.create_topic("t")
        b.offsets.commit("stale", {("t", 0): OffsetAndMetadata(1, commit_timestamp=_now_ms() - 2 * 60_000)})
        b.offsets.commit("fresh", {("t", 0): OffsetAndMetadata(1)})
    s = ServeProcess(data, "--offsets-retention-minutes", "1", "--offsets-retention-check-interval-ms", "200")
    try:
        def stale_gone():
            with umlog.open(data, readonly=True) as r:
                return not r.offsets.has_group("stale")

        wait_until(stale_gone, scaled(20), "the stale group's offsets to expire")
    finally:
        s.stop()
    with umlog.open(data, readonly=True) as r:
        assert r.groups() == ["fresh"]

"""Committed offsets, embedded: Kafka's record schema, the store in
``__consumer_offsets``, crash and reopen, compaction, ``Broker.group`` and
``Broker.consume``."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import threading
import time

import pytest
from helpers import scaled, subprocess_env, wait_until
from hypothesis import given
from hypothesis import strategies as st

import umlog
from umlog.errors import DecodeError, InvalidOffsetError, ReadOnlyError, UnknownTopicError
from umlog.groups.offsets import OFFSETS_PARTITIONS, OFFSETS_TOPIC, OffsetAndMetadata
from umlog.groups.schema import (
    GroupKey,
    OffsetKey,
    OffsetValue,
    decode_key,
    decode_offset_value,
    encode_offset_key,
    encode_offset_value,
    java_string_hash,
    partition_for_group,
    subscribed_topics,
)

# --- the schema ------------------------------------------------------------------------------------


def test_key_and_value_bytes_are_kafkas():
    # OffsetCommitKey v1: int16 version, string group, string topic, int32 partition
    assert encode_offset_key("g", "tp", 3) == b"\x00\x01" + b"\x00\x01g" + b"\x00\x02tp" + b"\x00\x00\x00\x03"
    # OffsetCommitValue v3: int16 version, int64 offset, int32 leader epoch, string metadata, int64 timestamp
    assert encode_offset_value(42, -1, "m", 7) == (b"\x00\x03" + struct.pack(">q", 42) + b"\xff\xff\xff\xff"
                                                  + b"\x00\x01m" + struct.pack(">q", 7))
    assert encode_offset_value(1, 5, None, 0)[14:16] == b"\x00\x00"  # None metadata is ""


def test_every_value_version_decodes():
    body0 = struct.pack(">hq", 0, 9) + b"\x00\x02md" + struct.pack(">q", 11)
    assert decode_offset_value(body0) == OffsetValue(9, -1, "md", 11)
    body1 = struct.pack(">hq", 1, 9) + b"\x00\x00" + struct.pack(">qq", 11, 99)  # + expire timestamp
    assert decode_offset_value(body1) == OffsetValue(9, -1, "", 11)
    body2 = struct.pack(">hq", 2, 9) + b"\x00\x00" + struct.pack(">q", 11)
    assert decode_offset_value(body2) == OffsetValue(9, -1, "", 11)
    body4 = struct.pack(">hqi", 4, 9, 2) + b"\x03ab" + struct.pack(">q", 11) + b"\x00"  # flexible
    assert decode_offset_value(body4) == OffsetValue(9, 2, "ab", 11)
    assert decode_key(b"\x00\x00\x00\x01g\x00\x01t\x00\x00\x00\x01") == OffsetKey("g", "t", 1)  # key v0
    assert decode_key(b"\x00\x02\x00\x03grp") == GroupKey("grp")


@pytest.mark.parametrize("bad", [b"", b"\x00", b"\x00\x01\x00\x05ab", b"\x00\x07\x00\x00", b"\x00\x01\xff\xff"])
def test_bad_keys_raise_decode_error(bad):
    with pytest.raises(DecodeError):
        decode_key(bad)


@given(st.binary(max_size=40))
def test_garbage_values_never_crash(data):
    try:
        decode_offset_value(data)
    except DecodeError:
        pass


@given(st.text(max_size=50), st.text(max_size=50), st.integers(0, 2**31 - 1), st.integers(-1, 2**63 - 1),
       st.integers(-1, 2**31 - 1), st.text(max_size=100), st.integers(0, 2**63 - 1))
def test_round_trips(group, topic, partition, offset, epoch, metadata, ts):
    assert decode_key(encode_offset_key(group, topic, partition)) == OffsetKey(group, topic, partition)
    assert decode_offset_value(encode_offset_value(offset, epoch, metadata, ts)) == OffsetValue(offset, epoch,
                                                                                                metadata, ts)


def test_group_partition_is_kafkas():
    assert java_string_hash("") == 0
    assert java_string_hash("a") == 97
    assert java_string_hash("hello") == 99162322
    assert java_string_hash("Aa") == java_string_hash("BB") == 2112
    assert java_string_hash("polygenelubricants") == -(2**31)  # Utils.abs(MIN_VALUE) is 0 in Kafka
    assert partition_for_group("polygenelubricants", 50) == 0
    assert partition_for_group("hello", 50) == 99162322 % 50


def test_subscribed_topics_of_every_subscription_version():
    from kio.serial import entity_writer

    for v in range(4):
        mod = __import__(f"kio.schema.consumer_protocol_subscription.v{v}", fromlist=["x"])
        cls = mod.ConsumerProtocolSubscription
        kw = {"topics": ("a", "b"), "user_data": None}
        if v >= 1:
            kw["owned_partitions"] = ()
        if v >= 2:
            kw["generation_id"] = 3
        if v >= 3:
            kw["rack_id"] = None
        out = io.BytesIO()
        entity_writer(cls)(out, cls(**kw))
        assert subscribed_topics(struct.pack(">h", v) + out.getvalue()) == {"a", "b"}
    assert subscribed_topics(b"\x00") is None


# --- the store and Broker.group ------------------------------------------------------------------------


@pytest.fixture
def b(broker):
    broker.create_topic("orders", partitions=3)
    t = broker.topic("orders")
    for p in range(3):
        t.append_many([b"v%d" % i for i in range(10)], partition=p)
    return broker


def test_commit_committed_lag_delete(b):
    g = b.group("billing")
    assert g.committed("orders", 0) is None and not g.exists()
    g.commit("orders", 0, 4, metadata="hi")
    g.commit_many({("orders", 1): 10, ("orders", 2): 0})
    assert g.committed("orders", 0) == 4 and g.committed_metadata("orders", 0).metadata == "hi"
    assert g.committed_all() == {("orders", 0): 4, ("orders", 1): 10, ("orders", 2): 0}
    assert g.lag() == {("orders", 0): 6, ("orders", 1): 0, ("orders", 2): 10}
    assert g.lag("orders") == g.lag()
    assert b.groups() == ["billing"]
    assert g.delete("orders", 1) == [("orders", 1)]
    assert g.committed_all() == {("orders", 0): 4, ("orders", 2): 0}
    assert b.group("other").lag("orders") == {("orders", 0): 10, ("orders", 1): 10, ("orders", 2): 10}
    assert g.delete() == [("orders", 0), ("orders", 2)]
    assert b.groups() == [] and not g.exists()


def test_bad_commits_are_refused(b):
    g = b.group("g")
    with pytest.raises(InvalidOffsetError, match=r"outside \[0, 10\]"):
        g.commit("orders", 0, 11)
    with pytest.raises(InvalidOffsetError):
        g.commit("orders", 0, -1)
    with pytest.raises(InvalidOffsetError, match="no partition 3"):
        g.commit("orders", 3, 0)
    with pytest.raises(UnknownTopicError):
        g.commit("nope", 0, 0)
    with pytest.raises(ValueError):
        g.commit("orders", 0, 1, metadata="x" * 5000)
    with pytest.raises(InvalidOffsetError):  # all-or-nothing
        g.commit_many({("orders", 0): 1, ("orders", 1): 99})
    assert g.committed_all() == {}
    with pytest.raises(ValueError):
        b.group("")


def test_commit_below_the_start_offset_is_refused(broker):
    t = broker.create_topic("short", partitions=1, config={"retention.bytes": 1, "segment.bytes": 200})
    p = t.partition(0)
    for _ in range(20):
        t.append_many([b"x" * 50], partition=0)
    broker.run_retention("short")
    assert p.start_offset > 0
    with pytest.raises(InvalidOffsetError, match="outside"):
        broker.group("g").commit("short", 0, p.start_offset - 1)
    broker.group("g").commit("short", 0, p.start_offset)


def test_internal_topic_is_hidden_compacted_and_not_deletable(b):
    b.group("g").commit("orders", 0, 1)
    assert OFFSETS_TOPIC not in b.topics()
    assert OFFSETS_TOPIC in b.topics(internal=True)
    t = b.topic(OFFSETS_TOPIC)
    assert t.num_partitions == OFFSETS_PARTITIONS and t.config["cleanup.policy"] == "compact"
    with pytest.raises(ValueError, match="internal"):
        b.delete_topic(OFFSETS_TOPIC)
    # The record is Kafka's, in the group's partition.
    p = t.partition(partition_for_group("g", OFFSETS_PARTITIONS))
    (r,) = list(p.read(0))
    assert decode_key(r.key) == OffsetKey("g", "orders", 0)
    assert decode_offset_value(r.value).offset == 1


def test_asking_for_the_internal_topic_by_name_creates_it_properly(broker):
    t = broker.topic(OFFSETS_TOPIC)  # what a Kafka client's Metadata request does
    assert t.config["cleanup.policy"] == "compact" and t.num_partitions == OFFSETS_PARTITIONS


CRASHER = """
import os, sys, umlog
b = umlog.open(sys.argv[1])
g = b.group("crashy")
for i in range(1, 11):
    g.commit("orders", i % 3, i)
g.delete("orders", 0)
b.flush()   # the page cache is enough to survive a process crash; flush() for good measure
os._exit(0)  # no close(): no .clean
"""


def test_offsets_survive_a_crash_and_reopen(data_dir):
    with umlog.open(data_dir) as b:
        t = b.create_topic("orders", partitions=3)
        for p in range(3):
            t.append_many([b"x"] * 20, partition=p)
    r = subprocess.run([sys.executable, "-c", CRASHER, data_dir], env=subprocess_env(), cwd="/",
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    with umlog.open(data_dir) as b:
        assert not b.was_clean
        assert b.group("crashy").committed_all() == {("orders", 1): 10, ("orders", 2): 8}
    with umlog.open(data_dir, readonly=True) as ro:  # and a tailer sees them too
        assert ro.group("crashy").committed_all() == {("orders", 1): 10, ("orders", 2): 8}


def test_replay_after_compaction_is_the_same_map(data_dir):
    with umlog.open(data_dir) as b:
        t = b.create_topic("orders", partitions=2)
        t.append_many([b"x"] * 1000, partition=0)
        t.append_many([b"x"] * 1000, partition=1)
        for i in range(300):
            b.group(f"g{i % 7}").commit("orders", i % 2, i)
        b.group("g3").delete()
        want = {f"g{i}": b.group(f"g{i}").committed_all() for i in range(7)}
        ot = b.topic(OFFSETS_TOPIC)
        for p in ot.partitions:
            p.roll()
        before = sum(len(list(p.read(p.start_offset))) for p in ot.partitions)
        b.compact(OFFSETS_TOPIC)
        after = sum(len(list(p.read(p.start_offset))) for p in ot.partitions)
        assert after < before / 5
    with umlog.open(data_dir) as b:
        assert {f"g{i}": b.group(f"g{i}").committed_all() for i in range(7)} == want
        assert "g3" not in b.groups()


def test_a_readonly_tailer_follows_the_writers_commits(b):
    ro = umlog.open(b.path, readonly=True)
    try:
        assert ro.groups() == []
        b.group("g").commit("orders", 0, 3)
        b.flush()
        assert ro.group("g").committed("orders", 0) == 3
        b.group("g").commit("orders", 0, 5)
        b.flush()
        assert ro.group("g").committed_all() == {("orders", 0): 5}
        with pytest.raises(ReadOnlyError):
            ro.group("g").commit("orders", 0, 1)
    finally:
        ro.close()


def test_undecodable_records_are_skipped_not_fatal(data_dir):
    with umlog.open(data_dir) as b:
        b.create_topic("orders", partitions=1).append_many([b"x"] * 5, partition=0)
        b.group("g").commit("orders", 0, 2)
        p = b.topic(OFFSETS_TOPIC).partition(partition_for_group("g", OFFSETS_PARTITIONS))
        p.append_many([b"junk", b"\x00\x09junk"], [b"\x00\x09??", encode_offset_key("g", "orders", 0)])
        b.group("g").commit("orders", 0, 3)
    with umlog.open(data_dir) as b:
        assert b.group("g").committed("orders", 0) == 3
        assert b.offsets.skipped == 2


# --- Broker.consume ------------------------------------------------------------------------------------


def values(records):
    return [(r.partition, r.offset) for r in records]


def test_consume_resumes_exactly_after_the_last_commit(b):
    c = b.consume("orders", group="g", from_beginning=True, commit_every=4, max_records=3)
    got = []
    for r in c:
        got.append((r.partition, r.offset))
        if len(got) == 13:
            break  # the 13th record is in hand, not consumed
    c.close()
    committed = b.group("g").committed_all()
    assert sum(committed.values()) == 12  # 12 consumed, the 13th comes again
    rest = values(b.consume("orders", group="g"))
    in_hand = got[-1]
    assert [x for x in rest if x[0] == in_hand[0]][0] == in_hand  # that partition resumes with it
    assert sorted(got[:-1] + rest) == sorted((p, o) for p in range(3) for o in range(10))
    assert b.group("g").committed_all() == {("orders", p): 10 for p in range(3)}
    assert values(b.consume("orders", group="g")) == []


def test_explicit_commit_counts_the_record_in_hand(b):
    c = b.consume("orders", group="g", from_beginning=True, commit_every=0)
    it = iter(c)
    first = next(it)
    assert b.group("g").committed_all() == {}
    moved = c.commit()
    assert moved[(first.topic, first.partition)] == first.offset + 1
    c.close()  # does not move it back
    assert b.group("g").committed(first.topic, first.partition) == first.offset + 1


def test_consume_without_group_or_commit_and_from_end(b):
    assert values(b.consume("orders")) == []  # no group, not from_beginning: the end
    assert len(values(b.consume("orders", from_beginning=True))) == 30
    assert b.groups() == []
    assert values(b.consume("orders", group="late")) == []  # starts at the end, and says so
    assert b.group("late").committed_all() == {("orders", p): 10 for p in range(3)}
    with pytest.raises(UnknownTopicError):
        b.consume("nope")


def test_consume_follow_gets_new_records_and_times_out(b):
    got = []
    c = b.consume("orders", group="f", follow=True, timeout=scaled(1.0))

    def appender():
        # Once it has its start positions (the end) it is following: the append
        # comes after them whenever this thread gets to run.
        wait_until(lambda: c.position("orders", 1) is not None, 10, "the consumer started")
        b.topic("orders").append(b"late", partition=1)

    th = threading.Thread(target=appender)
    th.start()
    t0 = time.monotonic()
    for r in c:
        got.append(r.value)
    th.join()
    assert got == [b"late"]
    assert time.monotonic() - t0 < scaled(5)
    assert b.group("f").committed("orders", 1) == 11


def test_a_committed_offset_outside_the_log_is_clamped(broker):
    t = broker.create_topic("short", partitions=1, config={"retention.bytes": 1, "segment.bytes": 200})
    for _ in range(20):
        t.append_many([b"x" * 50], partition=0)
    broker.group("g").commit("short", 0, 0)
    broker.run_retention("short")
    start = t.partition(0).start_offset
    assert [r.offset for r in broker.consume("short", group="g")][0] == start
    broker.offsets.commit("g", {("short", 0): OffsetAndMetadata(10**6)})  # as a Kafka client may
    assert values(broker.consume("short", group="g")) == []
    assert broker.group("g").committed("short", 0) == 20

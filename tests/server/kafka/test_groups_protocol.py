"""The group APIs through the door's real dispatch (kio encodes the requests and
decodes the answers, as the oracle), at every version we advertise, in-process
over a real engine."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from helpers import scaled, wait_until_async
from kio.schema.errors import ErrorCode

import umlog
from umlog.groups.coordinator import GroupState
from umlog.server.kafka import KafkaDoor
from umlog.server.kafka.dispatch import APIS, dispatch

from .kafka_frames import ms, read_response, request_class, request_frame

JOIN, SYNC, HEARTBEAT, LEAVE, COMMIT, FETCH, LIST, DESCRIBE, DELETE, OFFSET_DELETE = (
    11, 14, 12, 13, 8, 9, 16, 15, 42, 47)
SUB = b"\x00\x00\x00\x00\x00\x01\x00\x01t\xff\xff\xff\xff"  # ConsumerProtocolSubscription v0: ["t"]


@pytest.fixture
def broker(tmp_path):
    b = umlog.open(str(tmp_path / "data"))
    b.create_topic("t", partitions=2)
    b.create_topic("u", partitions=1)
    yield b
    b.close()


@pytest.fixture
def door(broker):
    d = KafkaDoor(broker, group_initial_rebalance_delay_ms=0)
    yield d
    d.wake_all()


def build(key, version, cls_name=None, **kw):
    cls = request_class(key, version, cls_name)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in kw.items() if k in names})


async def call(door, body):
    frame = request_frame(body, correlation_id=7)[4:]
    pieces = await dispatch(None, bytearray(frame), door)
    out = b"".join(bytes(p) for p in pieces)
    corr, resp = read_response(out[4:], type(body).__api_key__, type(body).__version__)
    assert corr == 7
    return resp


def join_req(v, member_id="", group="g", instance=None):
    proto = build(JOIN, v, "JoinGroupRequestProtocol", name="range", metadata=SUB)
    return build(JOIN, v, group_id=group, session_timeout=ms(10_000), rebalance_timeout=ms(10_000),
                 member_id=member_id, group_instance_id=instance, protocol_type="consumer", protocols=(proto,),
                 reason=None)


def test_group_apis_are_advertised():
    for key, lo, hi in [(JOIN, 0, 9), (SYNC, 0, 5), (HEARTBEAT, 0, 4), (LEAVE, 0, 5), (COMMIT, 2, 9),
                        (FETCH, 1, 9), (LIST, 0, 5), (DESCRIBE, 0, 6), (DELETE, 0, 2), (OFFSET_DELETE, 0, 0)]:
        assert APIS[key].advertised == (lo, hi)


@pytest.mark.parametrize("v", range(0, 10))
async def test_join_sync_heartbeat_leave_at_every_join_version(door, v):
    r = await call(door, join_req(v))
    if v >= 4:  # KIP-394 handshake
        assert r.error_code == ErrorCode.member_id_required and r.member_id
        r = await call(door, join_req(v, r.member_id))
    assert r.error_code == ErrorCode.none and r.generation_id == 1 and r.leader == r.member_id
    assert [m.member_id for m in r.members] == [r.member_id] and r.members[0].metadata == SUB
    if v >= 7:
        assert (r.protocol_type, r.protocol_name) == ("consumer", "range")
    mid, gen = r.member_id, r.generation_id
    sv = min(v, 5)
    assign = build(SYNC, sv, "SyncGroupRequestAssignment", member_id=mid, assignment=b"A")
    s = await call(door, build(SYNC, sv, group_id="g", generation_id=gen, member_id=mid, group_instance_id=None,
                               protocol_type="consumer", protocol_name="range", assignments=(assign,)))
    assert s.error_code == ErrorCode.none and s.assignment == b"A"
    hv = min(v, 4)
    h = await call(door, build(HEARTBEAT, hv, group_id="g", generation_id=gen, member_id=mid,
                               group_instance_id=None))
    assert h.error_code == ErrorCode.none
    h = await call(door, build(HEARTBEAT, hv, group_id="g", generation_id=gen + 5, member_id=mid,
                               group_instance_id=None))
    assert h.error_code == ErrorCode.illegal_generation
    lv = min(v, 5)
    if lv >= 3:
        ident = build(LEAVE, lv, "MemberIdentity", member_id=mid, group_instance_id=None, reason=None)
        lr = await call(door, build(LEAVE, lv, group_id="g", members=(ident,)))
        assert lr.error_code == ErrorCode.none and [m.error_code for m in lr.members] == [ErrorCode.none]
    else:
        lr = await call(door, build(LEAVE, lv, group_id="g", member_id=mid))
        assert lr.error_code == ErrorCode.none
    h = await call(door, build(HEARTBEAT, hv, group_id="g", generation_id=gen, member_id=mid,
                               group_instance_id=None))
    assert h.error_code == ErrorCode.unknown_member_id


async def test_second_member_waits_for_the_round(door):
    a = await call(door, join_req(1))
    sync = build(SYNC, 1, group_id="g", generation_id=1, member_id=a.member_id, assignments=())
    await call(door, sync)
    b_task = asyncio.ensure_future(call(door, join_req(1)))
    await wait_until_async(lambda: door.coordinator.groups["g"].state is GroupState.PREPARING_REBALANCE, 10,
                           "b's join to start a round")
    assert not b_task.done()  # held until a rejoins
    h = await call(door, build(HEARTBEAT, 1, group_id="g", generation_id=1, member_id=a.member_id))
    assert h.error_code == ErrorCode.rebalance_in_progress
    a2 = await call(door, join_req(1, a.member_id))
    b = await asyncio.wait_for(b_task, scaled(5))
    assert a2.generation_id == b.generation_id == 2
    assert len(a2.members) == 2 and b.members == ()


@pytest.mark.parametrize("v", range(2, 10))
async def test_offset_commit_then_fetch_every_version(door, broker, v):
    part = build(COMMIT, v, "OffsetCommitRequestPartition", partition_index=1, committed_offset=42,
                 committed_leader_epoch=3, committed_metadata="m")
    bad = build(COMMIT, v, "OffsetCommitRequestPartition", partition_index=7, committed_offset=1,
                committed_leader_epoch=-1, committed_metadata=None)
    topic = build(COMMIT, v, "OffsetCommitRequestTopic", name="t", partitions=(part, bad))
    r = await call(door, build(COMMIT, v, group_id=f"g{v}", generation_id_or_member_epoch=-1, member_id="",
                               group_instance_id=None, retention_time=ms(-1), topics=(topic,)))
    codes = [p.error_code for p in r.topics[0].partitions]
    assert codes == [ErrorCode.none, ErrorCode.unknown_topic_or_partition]
    assert broker.group(f"g{v}").committed("t", 1) == 42  # the embedded view: one store
    # generation >= 0 without a live group: refused
    r = await call(door, build(COMMIT, v, group_id=f"g{v}", generation_id_or_member_epoch=3, member_id="x",
                               group_instance_id=None, retention_time=ms(-1), topics=(topic,)))
    assert r.topics[0].partitions[0].error_code == ErrorCode.illegal_generation
    for fv in sorted({min(v, 9), 1, 7, 8}):
        if fv < 8:
            t = build(FETCH, fv, "OffsetFetchRequestTopic", name="t", partition_indexes=(0, 1))
            f = await call(door, build(FETCH, fv, group_id=f"g{v}", topics=(t,), require_stable=False))
            parts = f.topics[0].partitions
        else:
            t = build(FETCH, fv, "OffsetFetchRequestTopics", name="t", partition_indexes=(0, 1))
            g = build(FETCH, fv, "OffsetFetchRequestGroup", group_id=f"g{v}", member_id=None, member_epoch=-1,
                      topics=(t,))
            f = await call(door, build(FETCH, fv, groups=(g,), require_stable=True))
            parts = f.groups[0].topics[0].partitions
        got = {p.partition_index: (p.committed_offset, p.metadata) for p in parts}
        assert got == {0: (-1, ""), 1: (42, "m")}
        if fv >= 5:
            assert [p.committed_leader_epoch for p in parts] == [-1, 3 if v >= 6 else -1]
    # all topics (null)
    f = await call(door, build(FETCH, 7, group_id=f"g{v}", topics=None))
    assert [(t.name, [p.partition_index for p in t.partitions]) for t in f.topics] == [("t", [1])]


async def test_embedded_commit_is_what_offset_fetch_returns(door, broker):
    broker.group("emb").commit("u", 0, 0)
    t = build(FETCH, 6, "OffsetFetchRequestTopic", name="u", partition_indexes=(0,))
    f = await call(door, build(FETCH, 6, group_id="emb", topics=(t,)))
    assert f.topics[0].partitions[0].committed_offset == 0


@pytest.mark.parametrize("v", range(0, 7))
async def test_list_and_describe_every_version(door, broker, v):
    broker.group("offsets-only").commit("t", 0, 0)
    a = await call(door, join_req(5, group="live"))
    a = await call(door, join_req(5, a.member_id, group="live"))
    assign = build(SYNC, 5, "SyncGroupRequestAssignment", member_id=a.member_id, assignment=b"AS")
    await call(door, build(SYNC, 5, group_id="live", generation_id=1, member_id=a.member_id,
                           protocol_type="consumer", protocol_name="range", assignments=(assign,)))
    lv = min(v, 5)
    lr = await call(door, build(LIST, lv, states_filter=(), types_filter=()))
    rows = {g.group_id: g for g in lr.groups}
    assert set(rows) == {"live", "offsets-only"}
    assert (rows["live"].protocol_type, rows["offsets-only"].protocol_type) == ("consumer", "")
    if lv >= 4:
        assert (rows["live"].group_state, rows["offsets-only"].group_state) == ("Stable", "Empty")
        lr = await call(door, build(LIST, lv, states_filter=("Empty",), types_filter=()))
        assert [g.group_id for g in lr.groups] == ["offsets-only"]
    d = await call(door, build(DESCRIBE, v, groups=("live", "offsets-only", "nosuch"),
                               include_authorized_operations=False))
    live, off, none = d.groups
    assert (live.group_state, live.protocol_type, live.protocol_data) == ("Stable", "consumer", "range")
    (m,) = live.members
    assert (m.member_id, m.client_id, m.member_assignment, m.member_metadata) == (a.member_id, "test", b"AS", SUB)
    assert (off.group_state, off.members) == ("Empty", ())
    if v >= 6:
        assert none.error_code == ErrorCode.group_id_not_found
    else:
        assert (none.error_code, none.group_state) == (ErrorCode.none, "Dead")


@pytest.mark.parametrize("v", range(0, 3))
async def test_delete_groups_and_offset_delete(door, broker, v):
    broker.group("old").commit("t", 0, 0)
    broker.group("old").commit("u", 0, 0)
    a = await call(door, join_req(5, group="busy"))
    await call(door, join_req(5, a.member_id, group="busy"))
    r = await call(door, build(DELETE, v, groups_names=("old", "busy", "nosuch")))
    assert [(x.group_id, x.error_code) for x in r.results] == [
        ("old", ErrorCode.none), ("busy", ErrorCode.non_empty_group), ("nosuch", ErrorCode.group_id_not_found)]
    assert broker.group("old").committed_all() == {}
    # OffsetDelete: busy subscribes to "t" (SUB), not to "u"
    broker.offsets.commit("busy", {("t", 0): 5, ("u", 0): 0})
    def parts(*ix):
        return tuple(build(OFFSET_DELETE, 0, "OffsetDeleteRequestPartition", partition_index=i) for i in ix)

    topics = (build(OFFSET_DELETE, 0, "OffsetDeleteRequestTopic", name="t", partitions=parts(0)),
              build(OFFSET_DELETE, 0, "OffsetDeleteRequestTopic", name="u", partitions=parts(0)))
    r = await call(door, build(OFFSET_DELETE, 0, group_id="busy", topics=topics))
    assert r.error_code == ErrorCode.none
    assert [(t.name, t.partitions[0].error_code) for t in r.topics] == [
        ("t", ErrorCode.group_subscribed_to_topic), ("u", ErrorCode.none)]
    assert broker.group("busy").committed_all() == {("t", 0): 5}
    r = await call(door, build(OFFSET_DELETE, 0, group_id="nosuch", topics=topics))
    assert r.error_code == ErrorCode.group_id_not_found


async def test_shutdown_answers_a_held_join(door):
    a = await call(door, join_req(1))
    await call(door, build(SYNC, 1, group_id="g", generation_id=1, member_id=a.member_id, assignments=()))
    held = asyncio.ensure_future(call(door, join_req(1)))
    await wait_until_async(lambda: door.coordinator.groups["g"].state is GroupState.PREPARING_REBALANCE, 10,
                           "the join to be held")
    door.wake_all()  # what the server does on SIGTERM
    r = await asyncio.wait_for(held, scaled(5))
    assert r.error_code == ErrorCode.not_coordinator


async def test_offset_commit_under_fsync_always_answers_after_the_fdatasync(tmp_path):
    from umlog.groups.offsets import OFFSETS_TOPIC

    broker = umlog.open(str(tmp_path / "always"), fsync="always")
    broker.create_topic("t")
    door = KafkaDoor(broker, group_initial_rebalance_delay_ms=0)  # appends on the loop defer to the hub's gate
    part = build(COMMIT, 8, "OffsetCommitRequestPartition", partition_index=0, committed_offset=0,
                 committed_leader_epoch=-1, committed_metadata=None)
    topic = build(COMMIT, 8, "OffsetCommitRequestTopic", name="t", partitions=(part,))
    r = await call(door, build(COMMIT, 8, group_id="durable", generation_id_or_member_epoch=-1, member_id="",
                               group_instance_id=None, topics=(topic,)))
    assert r.topics[0].partitions[0].error_code == ErrorCode.none
    for p in broker.topic(OFFSETS_TOPIC).partitions:
        assert p.flushed_offset == p.end_offset
    door.wake_all()
    broker.close()

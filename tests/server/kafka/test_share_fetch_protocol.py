"""Share groups through the Kafka door, frame by frame (kio builds the requests and
reads the answers): the happy path's AcquiredRecords and delivery counts, the
error paths against the response Kafka sends (unknown member, fenced epoch, bad
or missing share session, records not held), and the releases Kafka makes at
once: a closed share session, a member leaving, its connection closing.

Each member sends over its own connection, kept open as a consumer keeps it: a
share session lives as long as the connection that opened it."""

from __future__ import annotations

import sys
import weakref

import pytest
from helpers import wait_until_async
from kio.index import load_response_schema
from kio.schema.errors import ErrorCode

from umlog.server.kafka.handlers._util import make

from .kafka_frames import ms, read_response, request_class, request_frame
from .test_protocol import broker, connect, door  # noqa: F401  (fixtures)

_conns: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # door -> {member id: (protocol, transport)}


async def call(door, body):  # noqa: F811
    """One request over the connection of the member it names (opened on its first)."""
    conns = _conns.setdefault(door, {})
    key = getattr(body, "member_id", None)
    if key not in conns:
        conns[key] = connect(door)
    proto, tr = conns[key]
    before = len(tr.frames())
    proto.data_received(request_frame(body, before + 1))
    await wait_until_async(lambda: len(tr.frames()) > before, 10, "the response")
    return read_response(tr.frames()[before], type(body).__api_key__, type(body).__version__)[1]


def hang_up(door, member: str) -> None:  # noqa: F811
    """Close the member's connection (as a consumer process that dies)."""
    proto, _ = _conns[door].pop(member)
    proto.connection_lost(None)


def mod_of(cls):
    return sys.modules[cls.__module__]


@pytest.fixture
def share_door(door):  # noqa: F811
    door.hub.share_settings = {"start": "earliest", "lock_ms": 30_000, "heartbeat_interval_ms": 500}
    return door


def heartbeat(group, member, epoch, topics=None):
    return make(request_class(76, 1), group_id=group, member_id=member, member_epoch=epoch, rack_id=None,
                subscribed_topic_names=topics)


def fetch(group, member, epoch, topics=(), forgotten=(), max_wait=0, max_records=100, version=1):
    cls = request_class(78, version)
    m = mod_of(cls)
    return make(cls, group_id=group, member_id=member, share_session_epoch=epoch, max_wait=ms(max_wait),
                min_bytes=1, max_bytes=1 << 20, max_records=max_records, batch_size=max_records,
                topics=tuple(make(m.FetchTopic, topic_id=tid, partitions=tuple(
                    make(m.FetchPartition, partition_index=p, acknowledgement_batches=tuple(
                        make(m.AcknowledgementBatch, first_offset=a, last_offset=b, acknowledge_types=tuple(t))
                        for a, b, t in acks)) for p, acks in parts)) for tid, parts in topics),
                forgotten_topics_data=tuple(make(m.ForgottenTopic, topic_id=tid, partitions=tuple(ps))
                                            for tid, ps in forgotten))


def acknowledge(group, member, epoch, topics, version=1):
    cls = request_class(79, version)
    m = mod_of(cls)
    return make(cls, group_id=group, member_id=member, share_session_epoch=epoch,
                topics=tuple(make(m.AcknowledgeTopic, topic_id=tid, partitions=tuple(
                    make(m.AcknowledgePartition, partition_index=p, acknowledgement_batches=tuple(
                        make(m.AcknowledgementBatch, first_offset=a, last_offset=b, acknowledge_types=tuple(t))
                        for a, b, t in acks)) for p, acks in parts)) for tid, parts in topics))


def fetch_error(version, code, message):
    """The ShareFetch answer Kafka gives to a request refused whole."""
    return load_response_schema(78, version)(throttle_time=ms(0), error_code=code, error_message=message,
                                acquisition_lock_timeout=ms(0), responses=(), node_endpoints=())


async def joined(door, broker, group="g", member="m1", topic="t", n=5):  # noqa: F811
    t = broker.create_topic(topic)
    t.partition(0).append_many([b"v%d" % i for i in range(n)])
    resp = await call(door, heartbeat(group, member, 0, [topic]))
    assert resp.error_code == ErrorCode.none
    return door.topic_id(topic), resp


async def test_heartbeat_assigns_every_partition_with_topic_ids(share_door, broker):  # noqa: F811
    broker.create_topic("t2", 3)
    resp = await call(share_door, heartbeat("g", "m1", 0, ["t2", "missing"]))
    assert resp.error_code == ErrorCode.none and resp.member_id == "m1" and resp.member_epoch >= 1
    assert resp.heartbeat_interval == ms(500)
    [tp] = resp.assignment.topic_partitions
    assert tp.topic_id == share_door.topic_id("t2") and tp.partitions == (0, 1, 2)
    # a second member gets every partition too (the engine's locks share the records)
    other = await call(share_door, heartbeat("g", "m2", 0, ["t2"]))
    assert other.assignment.topic_partitions[0].partitions == (0, 1, 2)
    again = await call(share_door, heartbeat("g", "m1", resp.member_epoch))
    assert again.error_code == ErrorCode.none and again.member_epoch == other.member_epoch


async def test_heartbeat_errors_are_kafkas(share_door, broker):  # noqa: F811
    broker.create_topic("t")
    unknown = await call(share_door, heartbeat("g", "nobody", 3))
    assert unknown == load_response_schema(76, 1)(
        throttle_time=ms(0), error_code=ErrorCode.unknown_member_id, error_message=unknown.error_message,
        member_id=None, member_epoch=0, heartbeat_interval=ms(500), assignment=None)
    ok = await call(share_door, heartbeat("g", "m1", 0, ["t"]))
    fenced = await call(share_door, heartbeat("g", "m1", ok.member_epoch + 5))
    assert fenced.error_code == ErrorCode.fenced_member_epoch and fenced.member_id is None
    left = await call(share_door, heartbeat("g", "m1", -1))
    assert (left.error_code, left.member_epoch, left.assignment) == (ErrorCode.none, -1, None)
    gone = await call(share_door, heartbeat("g", "m1", ok.member_epoch))
    assert gone.error_code == ErrorCode.unknown_member_id


@pytest.mark.parametrize("version", [1, 2])
async def test_fetch_acquires_stored_batches_and_counts_deliveries(share_door, broker, version):  # noqa: F811
    tid, _ = await joined(share_door, broker)
    r = await call(share_door, fetch("g", "m1", 0, [(tid, [(0, [])])], version=version))
    assert r.error_code == ErrorCode.none and r.acquisition_lock_timeout == ms(30_000)
    [topic] = r.responses
    [p] = topic.partitions
    assert topic.topic_id == tid and p.error_code == ErrorCode.none and p.acknowledge_error_code == 0
    assert [(a.first_offset, a.last_offset, a.delivery_count) for a in p.acquired_records] == [(0, 4, 1)]
    assert p.records == bytes(broker.topic("t").partition(0).read_batches(0, 1 << 20)[0])  # as stored
    # accept 0-1, release 2, reject 3, renew 4 (piggy-backed), then the released one comes back
    acks = [(0, 1, [1]), (2, 4, [2, 3, 4])]
    r = await call(share_door, fetch("g", "m1", 1, [(tid, [(0, acks)])], version=version))
    [p] = r.responses[0].partitions
    assert p.acknowledge_error_code == 0
    assert [(a.first_offset, a.last_offset, a.delivery_count) for a in p.acquired_records] == [(2, 2, 2)]
    # accepting what is not held any more (3 was rejected): the partition's INVALID_RECORD_STATE, nothing applied
    r = await call(share_door, acknowledge("g", "m1", 2, [(tid, [(0, [(2, 3, [1])])])], version=version))
    assert r.error_code == ErrorCode.none
    [p] = r.responses[0].partitions
    assert p.error_code == ErrorCode.invalid_record_state
    r = await call(share_door, acknowledge("g", "m1", 3, [(tid, [(0, [(2, 2, [1]), (4, 4, [1])])])],
                                           version=version))
    assert r.responses[0].partitions[0].error_code == ErrorCode.none
    d = broker.share_group("g", topics=["t"], max_attempts=5, lock_ms=30_000, backoff_ms=None, dead_letter=None,
                           start="earliest", max_in_flight=2_000).describe()
    assert (d["unacked"], d["in_flight"], d["partitions"][0]["start_offset"]) == (0, 0, 5)


async def test_a_second_member_gets_other_records(share_door, broker):  # noqa: F811
    tid, _ = await joined(share_door, broker, n=4)
    await call(share_door, heartbeat("g", "m2", 0, ["t"]))
    a = await call(share_door, fetch("g", "m1", 0, [(tid, [(0, [])])], max_records=2))
    b = await call(share_door, fetch("g", "m2", 0, [(tid, [(0, [])])], max_records=10))
    ra = [(x.first_offset, x.last_offset) for x in a.responses[0].partitions[0].acquired_records]
    rb = [(x.first_offset, x.last_offset) for x in b.responses[0].partitions[0].acquired_records]
    assert ra == [(0, 1)] and rb == [(2, 3)]
    # m2 may not settle m1's records
    r = await call(share_door, acknowledge("g", "m2", 1, [(tid, [(0, [(0, 0, [1])])])]))
    assert r.responses[0].partitions[0].error_code == ErrorCode.invalid_record_state
    # m1 leaves: its records go back and m2 gets them
    await call(share_door, heartbeat("g", "m1", -1))
    b = await call(share_door, fetch("g", "m2", 2, [], max_records=10))
    got = [(x.first_offset, x.last_offset, x.delivery_count) for x in b.responses[0].partitions[0].acquired_records]
    assert got == [(0, 1, 2)]


@pytest.mark.parametrize("version", [1, 2])
async def test_fetch_of_an_unknown_member_is_kafkas(share_door, broker, version):  # noqa: F811
    broker.create_topic("t")
    r = await call(share_door, fetch("g", "nobody", 0, [(share_door.topic_id("t"), [(0, [])])], version=version))
    assert r == fetch_error(version, ErrorCode.unknown_member_id, r.error_message)
    assert "nobody" in r.error_message


@pytest.mark.parametrize("version", [1, 2])
async def test_share_session_epochs_are_kafkas(share_door, broker, version):  # noqa: F811
    tid, _ = await joined(share_door, broker)
    await call(share_door, fetch("g", "m1", 0, [(tid, [(0, [])])], version=version))
    bad = await call(share_door, fetch("g", "m1", 7, version=version))
    assert bad == fetch_error(version, ErrorCode.invalid_share_session_epoch, None)
    # as Kafka: a wrong epoch leaves the session as it was, the right epoch goes on with it
    r = await call(share_door, fetch("g", "m1", 1, version=version))
    assert r.error_code == ErrorCode.none
    r = await call(share_door, acknowledge("g", "m1", 1, [], version=version))
    assert r.error_code == ErrorCode.invalid_share_session_epoch
    r = await call(share_door, acknowledge("g", "m1", 2, [], version=version))
    assert r.error_code == ErrorCode.none
    # a member without a session: SHARE_SESSION_NOT_FOUND
    await call(share_door, heartbeat("g", "m9", 0, ["t"]))
    gone = await call(share_door, fetch("g", "m9", 1, version=version))
    assert gone == fetch_error(version, ErrorCode.share_session_not_found, None)
    # acknowledgements never open a session
    r = await call(share_door, acknowledge("g", "m1", 0, [(tid, [(0, [(0, 0, [1])])])], version=version))
    assert (r.error_code, r.responses) == (ErrorCode.invalid_share_session_epoch, ())
    # opening with acknowledgements, closing with forgotten topics: INVALID_REQUEST
    r = await call(share_door, fetch("g", "m1", 0, [(tid, [(0, [(0, 0, [1])])])], version=version))
    assert r.error_code == ErrorCode.invalid_request
    await call(share_door, fetch("g", "m1", 0, [(tid, [(0, [])])], version=version))
    r = await call(share_door, fetch("g", "m1", -1, forgotten=[(tid, [0])], version=version))
    assert r.error_code == ErrorCode.invalid_request
    # malformed batches: a type count that fits neither form
    r = await call(share_door, fetch("g", "m1", 1, [(tid, [(0, [(0, 2, [1, 1])])])], version=version))
    assert r.error_code == ErrorCode.invalid_request


async def test_closing_the_session_releases_what_is_held(share_door, broker):  # noqa: F811
    tid, _ = await joined(share_door, broker, n=3)
    r = await call(share_door, fetch("g", "m1", 0, [(tid, [(0, [])])]))
    assert len(r.responses[0].partitions[0].acquired_records) == 1
    # close: accept offset 0, the rest is released at once
    r = await call(share_door, acknowledge("g", "m1", -1, [(tid, [(0, [(0, 0, [1])])])]))
    assert r.responses[0].partitions[0].error_code == ErrorCode.none
    await call(share_door, heartbeat("g", "m2", 0, ["t"]))
    r = await call(share_door, fetch("g", "m2", 0, [(tid, [(0, [])])]))
    got = [(x.first_offset, x.last_offset, x.delivery_count) for x in r.responses[0].partitions[0].acquired_records]
    assert got == [(1, 2, 2)]


def ranges(r) -> list[tuple[int, int, int]]:
    """(first, last, delivery count) of the first partition's AcquiredRecords."""
    if not r.responses:
        return []
    return [(x.first_offset, x.last_offset, x.delivery_count) for x in r.responses[0].partitions[0].acquired_records]


async def taken_by_another(door, tid) -> list[tuple[int, int, int]]:  # noqa: F811
    """What a second member acquires (without waiting) right now."""
    await call(door, heartbeat("g", "m2", 0, ["t"]))
    return ranges(await call(door, fetch("g", "m2", 0, [(tid, [(0, [])])])))


async def test_closing_the_session_by_share_fetch_releases_what_is_held(share_door, broker):  # noqa: F811
    tid, _ = await joined(share_door, broker, n=3)
    assert ranges(await call(share_door, fetch("g", "m1", 0, [(tid, [(0, [])])]))) == [(0, 2, 1)]
    r = await call(share_door, fetch("g", "m1", -1, [(tid, [(0, [(0, 0, [1])])])]))
    assert (r.error_code, r.responses[0].partitions[0].acknowledge_error_code) == (ErrorCode.none, 0)
    assert ranges(r) == []  # a closing fetch acquires nothing
    # released at once, not after the 30 s lock; the release itself did not count a delivery
    assert await taken_by_another(share_door, tid) == [(1, 2, 2)]
    r = await call(share_door, fetch("g", "m1", 1))
    assert r.error_code == ErrorCode.share_session_not_found


async def test_leaving_the_group_releases_what_is_held(share_door, broker):  # noqa: F811
    tid, _ = await joined(share_door, broker, n=3)
    assert ranges(await call(share_door, fetch("g", "m1", 0, [(tid, [(0, [])])]))) == [(0, 2, 1)]
    r = await call(share_door, heartbeat("g", "m1", -1))
    assert (r.error_code, r.member_epoch) == (ErrorCode.none, -1)
    assert await taken_by_another(share_door, tid) == [(0, 2, 2)]


async def test_a_closed_connection_releases_its_sessions_records(share_door, broker):  # noqa: F811
    tid, _ = await joined(share_door, broker, n=3)
    assert ranges(await call(share_door, fetch("g", "m1", 0, [(tid, [(0, [])])]))) == [(0, 2, 1)]
    hang_up(share_door, "m1")
    assert share_door.share_sessions.get(("g", "m1")) is None
    assert await taken_by_another(share_door, tid) == [(0, 2, 2)]
    # the member itself is still in the group (its heartbeats decide that): a new
    # connection opens a new session
    r = await call(share_door, fetch("g", "m1", 0, [(tid, [(0, [])])]))
    assert r.error_code == ErrorCode.none


async def test_a_new_session_keeps_what_the_member_holds(share_door, broker):  # noqa: F811
    """Epoch 0 over the same connection replaces the session (Kafka removes the
    old one); the member's records stay its own, to acknowledge in the new one."""
    tid, _ = await joined(share_door, broker, n=3)
    assert ranges(await call(share_door, fetch("g", "m1", 0, [(tid, [(0, [])])]))) == [(0, 2, 1)]
    assert ranges(await call(share_door, fetch("g", "m1", 0, [(tid, [(0, [])])]))) == []
    r = await call(share_door, acknowledge("g", "m1", 1, [(tid, [(0, [(0, 2, [1])])])]))
    assert r.responses[0].partitions[0].error_code == ErrorCode.none


async def test_a_release_wakes_a_waiting_share_fetch(share_door, broker):  # noqa: F811
    import asyncio
    import time

    from helpers import scaled

    tid, _ = await joined(share_door, broker, n=2)
    assert ranges(await call(share_door, fetch("g", "m1", 0, [(tid, [(0, [])])]))) == [(0, 1, 1)]
    await call(share_door, heartbeat("g", "m2", 0, ["t"]))
    await call(share_door, fetch("g", "m2", 0, [(tid, [(0, [])])]))
    t0 = time.monotonic()
    wait = asyncio.ensure_future(call(share_door, fetch("g", "m2", 1, max_wait=int(scaled(20) * 1000))))
    await asyncio.sleep(0.05)  # the pacing of the scenario: the member leaves while m2 waits
    await call(share_door, heartbeat("g", "m1", -1))
    assert ranges(await wait) == [(0, 1, 2)]
    assert time.monotonic() - t0 < scaled(10)


async def test_long_poll_is_woken_by_an_append(share_door, broker):  # noqa: F811
    import asyncio
    import time

    from helpers import scaled

    tid, _ = await joined(share_door, broker, n=0)
    await call(share_door, fetch("g", "m1", 0, [(tid, [(0, [])])]))
    t0 = time.monotonic()
    task = asyncio.ensure_future(call(share_door, fetch("g", "m1", 1, max_wait=int(scaled(20) * 1000))))
    await asyncio.sleep(0.05)  # the pacing of the scenario: the append comes while the fetch waits
    broker.topic("t").partition(0).append_many([b"late"])
    r = await task
    assert r.responses[0].partitions[0].acquired_records[0].first_offset == 0
    assert time.monotonic() - t0 < scaled(10)


async def test_describe_shows_members_and_assignments(share_door, broker):  # noqa: F811
    tid, hb = await joined(share_door, broker)
    cls = request_class(77, 1)
    r = await call(share_door, make(cls, group_ids=("g", "nope"), include_authorized_operations=False))
    g, nope = r.groups
    assert (g.error_code, g.group_state, g.assignor_name) == (ErrorCode.none, "Stable", "simple")
    [m] = g.members
    assert (m.member_id, m.member_epoch, m.subscribed_topic_names) == ("m1", hb.member_epoch, ("t",))
    assert [(tp.topic_id, tp.topic_name, tp.partitions) for tp in m.assignment.topic_partitions] == [(tid, "t", (0,))]
    assert nope.error_code == ErrorCode.group_id_not_found


async def test_no_offset_is_handed_out_twice_at_one_count(share_door, broker):  # noqa: F811
    """What a client sees across new share sessions, a bad epoch and a re-join:
    an offset comes back only after it was released (its lock gone with the
    member, or a release), each time with the next delivery count."""
    tid, _ = await joined(share_door, broker, n=6)
    seen: list = []

    def took(r):
        assert r.error_code == ErrorCode.none, r
        for t in r.responses:
            for p in t.partitions:
                seen.extend((o, a.delivery_count) for a in p.acquired_records
                            for o in range(a.first_offset, a.last_offset + 1))

    took(await call(share_door, fetch("g", "m1", 0, [(tid, [(0, [])])], max_records=2)))  # 0-1
    # a new session (epoch 0 again): what the member holds stays its own, the rest comes
    took(await call(share_door, fetch("g", "m1", 0, [(tid, [(0, [])])], max_records=2)))  # 2-3
    # a wrong epoch ends the session; the next one hands out only what is left
    bad = await call(share_door, fetch("g", "m1", 5))
    assert bad.error_code == ErrorCode.invalid_share_session_epoch
    took(await call(share_door, fetch("g", "m1", 0, [(tid, [(0, [])])], max_records=10)))  # 4-5
    assert sorted(seen) == [(o, 1) for o in range(6)]
    # the member joins again under its id: everything it held is released, then handed out at count 2
    await call(share_door, heartbeat("g", "m1", 0, ["t"]))
    took(await call(share_door, fetch("g", "m1", 0, [(tid, [(0, [])])], max_records=10)))
    # released by acknowledgement: count 3
    took(await call(share_door, fetch("g", "m1", 1, [(tid, [(0, [(0, 5, [2])])])], max_records=10)))
    assert sorted(seen) == [(o, c) for o in range(6) for c in (1, 2, 3)]


async def test_records_of_several_stored_batches_are_sent_once(share_door, broker):  # noqa: F811
    """Acquired records spanning stored batches: each batch is in the answer once.
    (read_batches answers whole batches back to back in one buffer; taking that
    buffer for its first batch alone sent the later batches again, and a client
    delivered their records twice, each time at delivery count 1.)"""
    from umlog._native.core import decode_records

    t = broker.create_topic("t")
    for values in ([b"a", b"b"], [b"c", b"d", b"e"], [b"f"]):  # three stored batches
        t.partition(0).append_many(values)
    await call(share_door, heartbeat("g", "m1", 0, ["t"]))
    tid = share_door.topic_id("t")
    r = await call(share_door, fetch("g", "m1", 0, [(tid, [(0, [])])], max_records=10))
    [p] = r.responses[0].partitions
    assert [(a.first_offset, a.last_offset, a.delivery_count) for a in p.acquired_records] == [(0, 5, 1)]
    records, _ = decode_records(p.records, 0, len(p.records))
    assert [x.offset for x in records] == [0, 1, 2, 3, 4, 5]
    assert p.records == bytes(t.partition(0).read_batches(0, 1 << 20)[0])


def test_stored_batches_hold_each_wanted_offset_once(tmp_path):
    """Any sorted subset of a log of many small batches: the batches sent hold
    every wanted offset, each batch once, in order."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    import umlog
    from umlog._native.core import decode_records
    from umlog.server.kafka.handlers._share import stored_batches

    with umlog.open(str(tmp_path / "data")) as b:
        p = b.create_topic("t").partition(0)
        for k in range(30):
            p.append_many([b"v%d" % j for j in range(k % 5 + 1)])

        @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(st.sets(st.integers(0, p.end_offset - 1), min_size=1))
        def check(wanted):
            out = stored_batches(p, sorted(wanted))
            buf = b"".join(out)
            offsets = [r.offset for r in decode_records(buf, 0, len(buf))[0]]
            assert len(offsets) == len(set(offsets)) and offsets == sorted(offsets)
            assert wanted <= set(offsets)

        check()

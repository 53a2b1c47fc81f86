"""ShareFetch (key 78, KIP-932): acquire records of a share group, acknowledge those held.

One request, in order (``_share`` has the session and acknowledgement rules):

1. Checks: a member the hub knows (else UNKNOWN_MEMBER_ID; a closing request,
   epoch -1, is let through so its acknowledgements answer per partition),
   well-formed acknowledgements (no acknowledgements when opening a session,
   no forgotten topics when closing: INVALID_REQUEST), the share session epoch.
2. The session's partitions: set by epoch 0's topics, then grown by each
   request's topics and shrunk by its forgotten topics.
3. Piggy-backed acknowledgements, one engine call per partition (its
   AcknowledgeErrorCode). Epoch -1 stops here: the member's remaining records
   are released and the session is closed.
4. Acquire through the member's engine handle, only from the session's
   partitions, with ``timeout=0`` on the loop (the engine never blocks the
   loop); up to ``max_records``. Until ``min_bytes`` (value and key bytes of
   what was acquired) or ``max_wait_ms``, wait for an append to one of the
   partitions (the hub's waiters, as Fetch's long poll) or a release, and try
   again.
5. Under ``--fsync always`` the group's state writes (delivery counts, acks)
   are made durable (the hub's gate) before the answer.
6. Answer the partitions named in the request and those with records: the
   stored batches holding the acquired offsets and the AcquiredRecords ranges
   with their delivery counts; ``acquisition_lock_timeout`` is the server's
   lock duration.
"""

from __future__ import annotations

import asyncio

from kio.schema.errors import ErrorCode

from ._share import (
    acquired_ranges,
    apply_acks,
    drop_session,
    release_member,
    requested_acks,
    session_for,
    stored_batches,
)
from ._util import ZERO_MS, make, ms, response_module, to_ms

API_KEY = 78
API_VERSIONS = (1, 2)

MAX_RECORDS = 10_000  # most records one answer acquires, whatever the client asks


def _error(mod, code: ErrorCode, message: str | None = None):
    return make(mod.ShareFetchResponse, throttle_time=ZERO_MS, error_code=code, error_message=message,
                acquisition_lock_timeout=ZERO_MS, responses=(), node_endpoints=())


async def handle_share_fetch(ctx, req):
    door = ctx.door
    mod = response_module(ctx)
    shares = door.hub.shares
    group, member_id, epoch = req.group_id, req.member_id, req.share_session_epoch
    named, acks_by, bad = requested_acks(door, req.topics)
    if bad:
        return _error(mod, ErrorCode.invalid_request, "malformed acknowledgement batches")
    if epoch == 0 and acks_by:
        return _error(mod, ErrorCode.invalid_request, "a request opening a share session carries no acknowledgements")
    if epoch == -1 and any(f.partitions for f in req.forgotten_topics_data):
        return _error(mod, ErrorCode.invalid_request, "a request closing a share session forgets no topics")
    member = shares.member(group or "", member_id or "")
    if member is None and epoch != -1:
        drop_session(door, group, member_id)
        return _error(mod, ErrorCode.unknown_member_id, f"member {member_id} is not in share group {group!r}")
    session, err = session_for(door, group, member_id, epoch, can_open=True, conn=ctx.conn)
    if err is not None:
        return _error(mod, err)
    for tid, index, name in named:
        if name is not None:
            session.partitions[(name, index)] = tid
    for f in req.forgotten_topics_data:
        for index in f.partitions:
            for key in [k for k, v in session.partitions.items() if v == f.topic_id and k[1] == index]:
                del session.partitions[key]

    ack_errors = {key: apply_acks(door, member, key[0], key[1], acks) for key, acks in acks_by.items()}
    got: list = []
    if epoch == -1:
        release_member(door, member)
    elif member.handle is not None and session.partitions:
        got = await _acquire(door, member, set(session.partitions), req)
    await door.hub.durable(shares.state_ends())
    return _answer(door, mod, session, named, ack_errors, got, shares.lock_ms)


async def _acquire(door, member, keys: set, req) -> list:
    loop = asyncio.get_running_loop()
    want = min(req.max_records if req.max_records > 0 else 500, MAX_RECORDS)
    min_bytes = max(req.min_bytes, 1)
    max_bytes = req.max_bytes if req.max_bytes > 0 else 0x7FFFFFFF
    deadline = loop.time() + to_ms(req.max_wait) / 1000
    got: list = []
    size = 0
    while True:
        handle = member.handle
        if handle is None:
            break
        for r in handle.acquire(want - len(got), timeout=0, partitions=keys):
            got.append(r)
            size += len(r.value or b"") + len(r.key or b"")
        if (got and size >= min_bytes) or len(got) >= want or size >= max_bytes or door.shutting_down:
            break
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        fut = loop.create_future()
        door.add_waiter(keys, fut)
        try:
            await asyncio.wait((fut,), timeout=remaining)
        finally:
            door.remove_waiter(keys, fut)
            if not fut.done():
                fut.cancel()
    return got


def _answer(door, mod, session, named, ack_errors, got, lock_ms: int):
    by_part: dict[tuple[str, int], list] = {}
    for r in got:
        by_part.setdefault((r.topic, r.partition), []).append(r)
    rows: dict = {}  # topic id -> [PartitionData]
    seen = set()
    none_leader = make(mod.LeaderIdAndEpoch, leader_id=-1, leader_epoch=-1)

    def row(tid, index, code=ErrorCode.none, message=None, ack=ErrorCode.none, records=b"", ranges=()):
        rows.setdefault(tid, []).append(make(
            mod.PartitionData, partition_index=index, error_code=code, error_message=message,
            acknowledge_error_code=ack.value, acknowledge_error_message=None if ack == ErrorCode.none else ack.name,
            current_leader=none_leader, records=records, acquired_records=ranges))

    for tid, index, name in named:
        if (tid, index) in seen:
            continue
        seen.add((tid, index))
        if name is None:
            row(tid, index, ErrorCode.unknown_topic_id, "no topic has this id")
            continue
        recs = by_part.pop((name, index), None)
        _partition_row(door, mod, row, tid, name, index, ack_errors.get((name, index), ErrorCode.none), recs)
    for (name, index), recs in by_part.items():
        tid = session.partitions.get((name, index)) or door.topic_id(name)
        _partition_row(door, mod, row, tid, name, index, ErrorCode.none, recs)
    topics = tuple(make(mod.ShareFetchableTopicResponse, topic_id=tid, partitions=tuple(ps))
                   for tid, ps in rows.items())
    return make(mod.ShareFetchResponse, throttle_time=ZERO_MS, error_code=ErrorCode.none,
                acquisition_lock_timeout=ms(lock_ms), responses=topics, node_endpoints=())


def _partition_row(door, mod, row, tid, name: str, index: int, ack: ErrorCode, recs) -> None:
    if not recs:
        row(tid, index, ack=ack)
        return
    recs.sort(key=lambda r: r.offset)
    p = door.broker.topic(name).partitions[index]
    batches = stored_batches(p, [r.offset for r in recs])
    ranges = tuple(make(mod.AcquiredRecords, first_offset=a, last_offset=b, delivery_count=c)
                   for a, b, c in acquired_ranges(recs))
    row(tid, index, ack=ack, records=b"".join(batches), ranges=ranges)

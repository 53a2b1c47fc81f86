"""ShareAcknowledge (key 79, KIP-932): settle records without fetching more.

The same acknowledgement batches as ShareFetch's piggy-backed ones (``_share``),
one engine call per partition, each partition answering its own error code
(INVALID_RECORD_STATE when an offset is not held by the member). It never
opens a share session (epoch 0 is INVALID_SHARE_SESSION_EPOCH); epoch -1
applies the acknowledgements, releases the member's remaining records and
closes the session. Durable under ``--fsync always`` before the answer.
"""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from ._share import apply_acks, drop_session, release_member, requested_acks, session_for
from ._util import ZERO_MS, make, ms, response_module

API_KEY = 79
API_VERSIONS = (1, 2)


def _error(mod, code: ErrorCode, message: str | None = None):
    return make(mod.ShareAcknowledgeResponse, throttle_time=ZERO_MS, error_code=code, error_message=message,
                acquisition_lock_timeout=ZERO_MS, responses=(), node_endpoints=())


async def handle_share_acknowledge(ctx, req):
    door = ctx.door
    mod = response_module(ctx)
    shares = door.hub.shares
    group, member_id, epoch = req.group_id, req.member_id, req.share_session_epoch
    named, acks_by, bad = requested_acks(door, req.topics)
    if bad:
        return _error(mod, ErrorCode.invalid_request, "malformed acknowledgement batches")
    member = shares.member(group or "", member_id or "")
    if member is None and epoch != -1:
        drop_session(door, group, member_id)
        return _error(mod, ErrorCode.unknown_member_id, f"member {member_id} is not in share group {group!r}")
    _, err = session_for(door, group, member_id, epoch, can_open=False)
    if err is not None:
        return _error(mod, err)
    rows: dict = {}
    none_leader = make(mod.LeaderIdAndEpoch, leader_id=-1, leader_epoch=-1)
    seen = set()
    for tid, index, name in named:
        if (tid, index) in seen:
            continue
        seen.add((tid, index))
        if name is None:
            code, message = ErrorCode.unknown_topic_id, "no topic has this id"
        else:
            code = apply_acks(door, member, name, index, acks_by.get((name, index), []))
            message = None if code == ErrorCode.none else code.name
        rows.setdefault(tid, []).append(make(mod.PartitionData, partition_index=index, error_code=code,
                                             error_message=message, current_leader=none_leader))
    if epoch == -1:
        release_member(door, member)
    await door.hub.durable(shares.state_ends())
    topics = tuple(make(mod.ShareAcknowledgeTopicResponse, topic_id=tid, partitions=tuple(ps))
                   for tid, ps in rows.items())
    return make(mod.ShareAcknowledgeResponse, throttle_time=ZERO_MS, error_code=ErrorCode.none,
                acquisition_lock_timeout=ms(shares.lock_ms), responses=topics, node_endpoints=())

"""ShareGroupHeartbeat (key 76, KIP-932): join, stay in, and leave a share group.

The membership is the hub's (``hub.shares``, ``umlog.server.shares``): this
handler only maps the request onto ``ShareMembers.heartbeat`` and its answer
onto the response. Every member is assigned every partition of the topics it
subscribes to (those that exist), sent with the topics' ids; which member gets
which record is decided by the engine's locks at ShareFetch time. A
subscription to a topic that does not exist yet is kept, and assigned once the
topic exists (a client's Metadata request creates it when auto-create is on).
A member that leaves (epoch -1) has its acquired records released at once
(``ShareMembers``), and the ShareFetches waiting on its partitions are woken.
"""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from ._groups import client_host
from ._share import error_of, wake_partitions
from ._util import ZERO_MS, make, ms, response_module

API_KEY = 76
API_VERSIONS = (1, 1)


async def handle_share_group_heartbeat(ctx, req):
    door = ctx.door
    mod = response_module(ctx)
    shares = door.hub.shares
    topics = None if req.subscribed_topic_names is None else list(req.subscribed_topic_names)
    before = shares.member(req.group_id, req.member_id or "")
    res = shares.heartbeat(req.group_id, req.member_id, req.member_epoch, topics, rack=req.rack_id,
                           client_id=ctx.client_id or "", client_host=client_host(ctx))
    interval = ms(shares.heartbeat_interval_ms)
    if before is not None and shares.member(req.group_id, req.member_id) is not before:
        wake_partitions(door, before.assignment)  # it left or joined again: what it held was released
    if res.error is not None:
        return make(mod.ShareGroupHeartbeatResponse, throttle_time=ZERO_MS, error_code=error_of(res.error),
                    error_message=res.message, member_id=None, member_epoch=0, heartbeat_interval=interval)
    m = res.member
    if m is None:  # left
        return make(mod.ShareGroupHeartbeatResponse, throttle_time=ZERO_MS, error_code=ErrorCode.none,
                    member_id=req.member_id, member_epoch=-1, heartbeat_interval=interval)
    parts = tuple(make(mod.TopicPartitions, topic_id=door.topic_id(t), partitions=tuple(ps))
                  for t, ps in sorted(m.assignment.items()))
    return make(mod.ShareGroupHeartbeatResponse, throttle_time=ZERO_MS, error_code=ErrorCode.none,
                member_id=m.member_id, member_epoch=m.epoch, heartbeat_interval=interval,
                assignment=make(mod.Assignment, topic_partitions=parts))

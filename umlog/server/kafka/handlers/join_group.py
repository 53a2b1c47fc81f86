"""JoinGroup (key 11): a member joins a group's next round; held until the round completes.

Translates the request into ``Coordinator.join`` (``umlog.groups.coordinator``)
and waits on a future for its answer: at once for MEMBER_ID_REQUIRED (v4+: the
member must come back with the id it is given) and errors, else when every
member has rejoined or the rebalance timeout has passed. The leader's answer
carries every member's metadata for the selected protocol, the others' none.
v0 has no rebalance timeout (the session timeout serves); v5+ carry
``group.instance.id`` (static membership); v9 lets a returning static leader
skip the assignment (KIP-814).
"""

from __future__ import annotations

from umlog.groups.coordinator import JoinRequest

from ._groups import client_host, code, waiter
from ._util import ZERO_MS, make, response_module, to_ms

API_KEY = 11
API_VERSIONS = (0, 9)


async def handle_join_group(ctx, req):
    mod = response_module(ctx)
    v = ctx.version
    session = to_ms(req.session_timeout)
    rebalance = to_ms(req.rebalance_timeout) if v >= 1 else session
    jr = JoinRequest(
        group_id=req.group_id,
        member_id=req.member_id or "",
        instance_id=getattr(req, "group_instance_id", None) or None,
        protocol_type=req.protocol_type,
        protocols=[(p.name, bytes(p.metadata)) for p in req.protocols],
        session_timeout_ms=session,
        rebalance_timeout_ms=rebalance,
        client_id=ctx.client_id or "",
        client_host=client_host(ctx),
        require_known_member_id=v >= 4,
        supports_skip_assignment=v >= 9,
        reason=getattr(req, "reason", None),
    )
    fut, respond = waiter()
    ctx.door.coordinator.join(jr, respond)
    r = await fut
    members = tuple(make(mod.JoinGroupResponseMember, member_id=mid, group_instance_id=iid, metadata=meta)
                    for mid, iid, meta in r.members)
    name = r.protocol_name
    if name is None and v < 7:  # nullable from v7 only
        name = ""
    return make(mod.JoinGroupResponse, throttle_time=ZERO_MS, error_code=code(r.error),
                generation_id=r.generation, protocol_type=r.protocol_type, protocol_name=name,
                leader=r.leader, skip_assignment=r.skip_assignment, member_id=r.member_id, members=members)

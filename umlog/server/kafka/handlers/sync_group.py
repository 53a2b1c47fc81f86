"""SyncGroup (key 14): the round's second step; the leader brings the assignments.

Held (a future) until the leader's SyncGroup arrives; answered at once in a
Stable group, or with an error. v5 checks the protocol type and name.
"""

from __future__ import annotations

from ._groups import code, waiter
from ._util import ZERO_MS, make, response_module

API_KEY = 14
API_VERSIONS = (0, 5)


async def handle_sync_group(ctx, req):
    mod = response_module(ctx)
    assignments = {a.member_id: bytes(a.assignment) for a in req.assignments}
    fut, respond = waiter()
    ctx.door.coordinator.sync(req.group_id, req.generation_id, req.member_id,
                              getattr(req, "group_instance_id", None) or None, assignments, respond,
                              protocol_type=getattr(req, "protocol_type", None),
                              protocol_name=getattr(req, "protocol_name", None))
    r = await fut
    return make(mod.SyncGroupResponse, throttle_time=ZERO_MS, error_code=code(r.error),
                protocol_type=r.protocol_type, protocol_name=r.protocol_name, assignment=r.assignment)

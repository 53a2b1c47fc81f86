"""Heartbeat (key 12): keeps a member alive; REBALANCE_IN_PROGRESS asks it to rejoin."""

from __future__ import annotations

from ._groups import code
from ._util import ZERO_MS, make, response_module

API_KEY = 12
API_VERSIONS = (0, 4)


async def handle_heartbeat(ctx, req):
    mod = response_module(ctx)
    err = ctx.door.coordinator.heartbeat(req.group_id, req.generation_id, req.member_id,
                                         getattr(req, "group_instance_id", None) or None)
    return make(mod.HeartbeatResponse, throttle_time=ZERO_MS, error_code=code(err))

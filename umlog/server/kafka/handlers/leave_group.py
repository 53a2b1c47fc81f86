"""LeaveGroup (key 13): members leave at once. v0-v2: one member id; v3+: a batch of
members by member id or ``group.instance.id``, each with its own error."""

from __future__ import annotations

from umlog.groups.coordinator import Err

from ._groups import code
from ._util import ZERO_MS, make, response_module

API_KEY = 13
API_VERSIONS = (0, 5)


async def handle_leave_group(ctx, req):
    mod = response_module(ctx)
    coord = ctx.door.coordinator
    if ctx.version < 3:
        err, per = coord.leave(req.group_id, [(req.member_id, None)])
        top = err if per[0] is Err.NONE else per[0]
        return make(mod.LeaveGroupResponse, throttle_time=ZERO_MS, error_code=code(top))
    wanted = [(m.member_id or "", m.group_instance_id or None) for m in req.members]
    err, per = coord.leave(req.group_id, wanted)
    members = tuple(make(mod.MemberResponse, member_id=mid, group_instance_id=iid, error_code=code(e))
                    for (mid, iid), e in zip(wanted, per))
    return make(mod.LeaveGroupResponse, throttle_time=ZERO_MS, error_code=code(err), members=members)

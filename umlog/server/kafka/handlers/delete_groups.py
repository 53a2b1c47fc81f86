"""DeleteGroups (key 42): groups without members; their committed offsets are tombstoned."""

from __future__ import annotations

from ._groups import code
from ._util import ZERO_MS, make, response_module

API_KEY = 42
API_VERSIONS = (0, 2)


async def handle_delete_groups(ctx, req):
    mod = response_module(ctx)
    res = ctx.door.coordinator.delete_groups(req.groups_names)
    results = tuple(make(mod.DeletableGroupResult, group_id=gid, error_code=code(res[gid]))
                    for gid in req.groups_names)
    return make(mod.DeleteGroupsResponse, throttle_time=ZERO_MS, results=results)

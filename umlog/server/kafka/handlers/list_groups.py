"""ListGroups (key 16): live groups and groups that only have committed offsets
(Empty, protocol type ""), filtered by state (v4+) and type (v5: all ours are
"classic")."""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from ._util import ZERO_MS, make, response_module

API_KEY = 16
API_VERSIONS = (0, 5)


async def handle_list_groups(ctx, req):
    mod = response_module(ctx)
    types = {t.lower() for t in getattr(req, "types_filter", ()) or ()}
    rows = [] if types and "classic" not in types else \
        ctx.door.coordinator.list_groups(getattr(req, "states_filter", None) or None)
    groups = tuple(make(mod.ListedGroup, group_id=gid, protocol_type=ptype, group_state=state.value,
                        group_type="classic")
                   for gid, ptype, state in rows)
    return make(mod.ListGroupsResponse, throttle_time=ZERO_MS, error_code=ErrorCode.none, groups=groups)

"""DescribeGroups (key 15): state, protocol, and members (with their metadata and
assignment when Stable) of each group. A group that neither lives nor has
offsets is Dead (v0-v5) or GROUP_ID_NOT_FOUND (v6, as Kafka 4 answers)."""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from ._util import ZERO_MS, make, response_module

API_KEY = 15
API_VERSIONS = (0, 6)

UNKNOWN_OPERATIONS = -2147483648  # authorized operations not computed (no ACLs)


async def handle_describe_groups(ctx, req):
    mod = response_module(ctx)
    coord = ctx.door.coordinator
    out = []
    for gid in req.groups:
        d = coord.describe_group(gid)
        if d is None:
            if ctx.version >= 6:
                out.append(make(mod.DescribedGroup, error_code=ErrorCode.group_id_not_found,
                                error_message=f"Group {gid} not found.", group_id=gid, group_state="Dead",
                                protocol_type="", protocol_data="", members=(),
                                authorized_operations=UNKNOWN_OPERATIONS))
                continue
            out.append(make(mod.DescribedGroup, error_code=ErrorCode.none, error_message=None, group_id=gid,
                            group_state="Dead", protocol_type="", protocol_data="", members=(),
                            authorized_operations=UNKNOWN_OPERATIONS))
            continue
        members = tuple(make(mod.DescribedGroupMember, member_id=m.member_id, group_instance_id=m.instance_id,
                             client_id=m.client_id, client_host=m.client_host, member_metadata=m.metadata,
                             member_assignment=m.assignment)
                        for m in d.members)
        out.append(make(mod.DescribedGroup, error_code=ErrorCode.none, error_message=None, group_id=gid,
                        group_state=d.state.value, protocol_type=d.protocol_type, protocol_data=d.protocol_name,
                        members=members, authorized_operations=UNKNOWN_OPERATIONS))
    return make(mod.DescribeGroupsResponse, throttle_time=ZERO_MS, groups=tuple(out))

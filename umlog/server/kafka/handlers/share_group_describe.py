"""ShareGroupDescribe (key 77, KIP-932): a share group's members, epochs and assignments.

Answered from the hub's membership (``hub.shares``); a group no member of a
door has joined since the server started is GROUP_ID_NOT_FOUND (its records'
state is on disk: ``umlog share-groups describe NAME``).
"""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from ._util import ZERO_MS, make, response_module

API_KEY = 77
API_VERSIONS = (1, 1)

_NO_OPERATIONS = -2147483648  # "not asked for", as Kafka answers


async def handle_share_group_describe(ctx, req):
    door = ctx.door
    mod = response_module(ctx)
    shares = door.hub.shares
    out = []
    for name in req.group_ids:
        g = shares.group(name)
        if g is None:
            out.append(make(mod.DescribedGroup, error_code=ErrorCode.group_id_not_found,
                            error_message=f"share group {name!r} has no members on this server",
                            group_id=name, group_state="Dead", group_epoch=-1, assignment_epoch=-1,
                            assignor_name="", members=(), authorized_operations=_NO_OPERATIONS))
            continue
        members = []
        for m in g.members.values():
            tps = tuple(make(mod.TopicPartitions, topic_id=door.topic_id(t), topic_name=t, partitions=tuple(ps))
                        for t, ps in sorted(m.assignment.items()))
            members.append(make(mod.Member, member_id=m.member_id, rack_id=m.rack, member_epoch=m.epoch,
                                client_id=m.client_id, client_host=m.client_host,
                                subscribed_topic_names=tuple(m.topics),
                                assignment=make(mod.Assignment, topic_partitions=tps)))
        out.append(make(mod.DescribedGroup, error_code=ErrorCode.none, group_id=name, group_state=g.state,
                        group_epoch=g.epoch, assignment_epoch=g.assignment_epoch, assignor_name="simple",
                        members=tuple(members), authorized_operations=_NO_OPERATIONS))
    return make(mod.ShareGroupDescribeResponse, throttle_time=ZERO_MS, groups=tuple(out))

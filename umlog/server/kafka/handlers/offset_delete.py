"""OffsetDelete (key 47): delete committed offsets of a group, for topics it does not
consume now (GROUP_SUBSCRIBED_TO_TOPIC otherwise; any topic once it is Empty)."""

from __future__ import annotations

from umlog.groups.coordinator import Err

from ._groups import code
from ._util import ZERO_MS, make, response_module

API_KEY = 47
API_VERSIONS = (0, 0)


async def handle_offset_delete(ctx, req):
    mod = response_module(ctx)
    wanted = [(t.name, p.partition_index) for t in req.topics for p in t.partitions]
    err, per = ctx.door.coordinator.delete_offsets(req.group_id, wanted)
    topics = ()
    if err is Err.NONE:
        topics = tuple(
            make(mod.OffsetDeleteResponseTopic, name=t.name, partitions=tuple(
                make(mod.OffsetDeleteResponsePartition, partition_index=p.partition_index,
                     error_code=code(per.get((t.name, p.partition_index), Err.NONE)))
                for p in t.partitions))
            for t in req.topics)
    return make(mod.OffsetDeleteResponse, error_code=code(err), throttle_time=ZERO_MS, topics=topics)

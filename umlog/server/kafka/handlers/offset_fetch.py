"""OffsetFetch (key 9): a group's committed offsets (also the admin ``list_consumer_group_offsets``).

v1-v7: one group; v8-v9: several. ``topics`` null (v2+) asks for every
committed offset of the group. No offset: -1 and empty metadata. v10 (topic
ids) is not offered. ``require_stable`` needs nothing: there are no pending
transactional offsets.
"""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from ._groups import code
from ._util import ZERO_MS, make, response_module

API_KEY = 9
API_VERSIONS = (1, 9)


def _fetch(coord, group_id, topics):
    """(error, [(topic, [(partition, OffsetAndMetadata | None)])])."""
    wanted = None if topics is None else [(t.name, i) for t in topics for i in t.partition_indexes]
    err, found = coord.fetch_offsets(group_id, wanted)
    by_topic: dict[str, list] = {}
    for (name, index), v in found.items():
        by_topic.setdefault(name, []).append((index, v))
    return err, list(by_topic.items())


def _partitions(cls, rows):
    return tuple(
        make(cls, partition_index=index, committed_offset=-1 if v is None else v.offset,
             committed_leader_epoch=-1 if v is None else v.leader_epoch,
             metadata="" if v is None else v.metadata, error_code=ErrorCode.none)
        for index, v in rows)


async def handle_offset_fetch(ctx, req):
    mod = response_module(ctx)
    coord = ctx.door.coordinator
    if ctx.version < 8:
        err, rows = _fetch(coord, req.group_id, req.topics)
        topics = tuple(make(mod.OffsetFetchResponseTopic, name=name,
                            partitions=_partitions(mod.OffsetFetchResponsePartition, parts))
                       for name, parts in rows)
        return make(mod.OffsetFetchResponse, throttle_time=ZERO_MS, topics=topics, error_code=code(err))
    groups = []
    for g in req.groups:
        err, rows = _fetch(coord, g.group_id, g.topics)
        topics = tuple(make(mod.OffsetFetchResponseTopics, name=name,
                            partitions=_partitions(mod.OffsetFetchResponsePartitions, parts))
                       for name, parts in rows)
        groups.append(make(mod.OffsetFetchResponseGroup, group_id=g.group_id, topics=topics, error_code=code(err)))
    return make(mod.OffsetFetchResponse, throttle_time=ZERO_MS, groups=tuple(groups))

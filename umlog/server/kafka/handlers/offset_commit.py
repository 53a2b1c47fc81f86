"""OffsetCommit (key 8): store a group's offsets in ``__consumer_offsets``.

The coordinator checks the committer (a member of the current generation, or
generation -1 into a group with no members) and each partition (the topic
and partition must exist; metadata at most 4096 bytes), then the shared
``OffsetStore`` appends the records. Offsets are stored as given, as Kafka
does (the embedded ``Group.commit`` checks them against the log; a Kafka
client's offset is its own business). Under ``--fsync always`` the answer
waits for the group-commit fdatasync, like a Produce. v2-v9 (v10 names
topics by id).
"""

from __future__ import annotations

from umlog.groups.coordinator import Err
from umlog.groups.offsets import OffsetAndMetadata

from ._groups import code
from ._util import ZERO_MS, make, response_module

API_KEY = 8
API_VERSIONS = (2, 9)


async def handle_offset_commit(ctx, req):
    mod = response_module(ctx)
    door = ctx.door
    offsets = {}
    for t in req.topics:
        for p in t.partitions:
            offsets[(t.name, p.partition_index)] = OffsetAndMetadata(
                p.committed_offset, getattr(p, "committed_leader_epoch", -1), p.committed_metadata or "")
    err, per = door.coordinator.commit_offsets(req.group_id, req.generation_id_or_member_epoch, req.member_id,
                                               getattr(req, "group_instance_id", None) or None, offsets)
    if any(e is Err.NONE for e in per.values()):
        # --fsync always: answered after the fdatasync that covers the commit
        p = door.broker.offsets.partition_of(req.group_id)
        if p is not None:
            await door.hub.durable({p: p.end_offset})
    topics = tuple(
        make(mod.OffsetCommitResponseTopic, name=t.name, partitions=tuple(
            make(mod.OffsetCommitResponsePartition, partition_index=p.partition_index,
                 error_code=code(err if err is not Err.NONE else per.get((t.name, p.partition_index), Err.NONE)))
            for p in t.partitions))
        for t in req.topics)
    return make(mod.OffsetCommitResponse, throttle_time=ZERO_MS, topics=topics)

"""ListOffsets (key 2): earliest (-2), latest (-1) or first offset at a timestamp.

Latest is the high watermark (``end_offset``: no transactions, so it is also
the last stable offset for read_committed). By timestamp, the answer is the
first offset whose record timestamp is >= the one asked for, with that
record's timestamp (decoded from the one batch that holds it); none: -1/-1.
v1-v6, and v0 (gone from Kafka 4 and kio; Burrow and other old clients ask
with it): its multi-offset answer is ``..legacy.list_offsets_v0``. v7's
max-timestamp query is not offered.
"""

from __future__ import annotations

import logging

from kio.schema.errors import ErrorCode

from umlog import errors

from ..errors import error_code_for
from ..legacy import decode_list_offsets_request, list_offsets_v0
from ._util import ZERO_MS, make, response_module

API_KEY = 2
API_VERSIONS = (0, 6)
# v0: kio has no schema for it
decode_legacy_request = decode_list_offsets_request

EARLIEST = -2
LATEST = -1

log = logging.getLogger("umlog.server.kafka")


def _timestamp_at(p, offset: int) -> int:
    """Timestamp of the record at ``offset`` (-1 if it cannot be read)."""
    try:
        from umlog._native.core import decode_records

        batches = p.read_batches(offset, 1)
        if not batches:
            return -1
        records, _ = decode_records(batches[0], 0, -1, offset, 1)
        return records[0].timestamp if records else -1
    except Exception as e:  # an answer without the timestamp beats no answer
        log.warning("list_offsets: cannot read timestamp at %s-%d@%d: %r", p.topic, p.index, offset, e)
        return -1


def lookup(door, name: str, index: int, timestamp: int) -> tuple[ErrorCode, int, int]:
    """(error_code, timestamp, offset) for one partition."""
    try:
        t = door.broker.topic(name)
    except errors.UnknownTopicError:
        return ErrorCode.unknown_topic_or_partition, -1, -1
    if not 0 <= index < t.num_partitions:
        return ErrorCode.unknown_topic_or_partition, -1, -1
    p = t.partition(index)
    try:
        if timestamp == EARLIEST:
            return ErrorCode.none, -1, p.start_offset
        if timestamp == LATEST:
            return ErrorCode.none, -1, p.end_offset
        if timestamp < 0:
            return ErrorCode.unsupported_version, -1, -1
        offset = p.offset_for_time(timestamp)
        if offset is None:
            return ErrorCode.none, -1, -1
        return ErrorCode.none, _timestamp_at(p, offset), offset
    except Exception as e:
        return error_code_for(e), -1, -1


def _may_describe(ctx, name: str) -> bool:
    """Security on: ListOffsets needs DESCRIBE on the topic (as Kafka)."""
    from ...security.acls import Operation, ResourceType
    from ..authz import allowed

    return allowed(ctx, Operation.DESCRIBE, ResourceType.TOPIC, name)


async def handle_list_offsets(ctx, req):
    secure = ctx.door.security is not None and ctx.conn is not None
    if ctx.version == 0:
        return list_offsets_v0(ctx.door, req, (lambda name: not _may_describe(ctx, name)) if secure else None)
    mod = response_module(ctx)
    topics = []
    for rt in req.topics:
        parts = []
        denied = secure and not _may_describe(ctx, rt.name)
        for rp in rt.partitions:
            if denied:
                code, ts, offset = ErrorCode.topic_authorization_failed, -1, -1
            else:
                code, ts, offset = lookup(ctx.door, rt.name, rp.partition_index, rp.timestamp)
            parts.append(make(mod.ListOffsetsPartitionResponse, partition_index=rp.partition_index,
                              error_code=code, timestamp=ts, offset=offset,
                              leader_epoch=0 if code == ErrorCode.none else -1))
        topics.append(make(mod.ListOffsetsTopicResponse, name=rt.name, partitions=tuple(parts)))
    return make(mod.ListOffsetsResponse, throttle_time=ZERO_MS, topics=tuple(topics))

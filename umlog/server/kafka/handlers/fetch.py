"""Fetch (key 1): stored batches, as stored, with long polling.

Theory of operation
-------------------
1. Read every requested partition (``collect``): ``Partition.read_batches``
   returns whole stored batches starting with the one that *contains* the fetch
   offset (clients skip the records before it). Limits, as Kafka (KIP-74): each
   partition gets at most ``min(partition_max_bytes, bytes left of max_bytes)``,
   except that the first partition that returns data always gets its first whole
   batch, even if larger. A later partition whose first batch does not fit gets
   no records this time.
2. If the bytes found reach ``min_bytes``, or some partition has an error, or
   ``max_wait_ms`` is 0: answer now. Otherwise register one future under every
   requested (topic, partition) with the hub (``add_waiter``) and wait until
   an append to one of them wakes it (the engine's append listeners: through
   any door, or the embedded API in this process) or max_wait passes, then
   read again. There is no await between reading and registering, so an append
   on the loop cannot slip in between; one from another thread is always
   handed to the loop (``call_soon_threadsafe``), so it wakes us after we
   registered.
3. Encode with ``wire.encode_fetch_response``: header pieces and the stored
   buffers, written with one ``writelines`` (no copy or re-encoding here).

Decoded by kio (v4-v12; v13+ address topics by id, not offered). v0-v3 (clients
from before Kafka 0.11) are decoded by ``..legacy`` and answered in the old
message format they imply (magic 0 for v0-1, magic 1 for v2-3), converted from
the stored batches natively in step 1 (``legacy.down_convert``: headers
dropped, sizes those of the converted messages).

Fetch sessions (KIP-227) are not offered: we answer session_id 0, which tells
clients to keep sending full fetch requests; a request naming a session gets
FETCH_SESSION_ID_NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import time

from kio.schema.errors import ErrorCode

from umlog import errors

from ..errors import error_code_for
from ..legacy import decode_fetch_request, down_convert, fetch_magic
from ..wire import FetchPartitionResult, encode_fetch_response
from ._util import to_ms

API_KEY = 1
API_VERSIONS = (0, 12)
# v0-v3: kio has no schema for them
decode_legacy_request = decode_fetch_request

_NONE = ErrorCode.none.value
_UNKNOWN = ErrorCode.unknown_topic_or_partition.value
_OUT_OF_RANGE = ErrorCode.offset_out_of_range.value
_DENIED = ErrorCode.topic_authorization_failed.value
# Error rows carry empty records, never null: Kafka writes MemoryRecords.EMPTY
# there, and librdkafka cannot parse a null records field (it logs PROTOERR and
# never applies auto.offset.reset). The list is never mutated.
_EMPTY: list = []


def collect(door, topics, max_bytes: int, magic: int | None = None, denied: frozenset = frozenset()):
    """Read every requested partition once: (results, total bytes, any error).
    ``magic`` 0 or 1: convert to that old message format (Fetch v0-3); topics in
    ``denied`` (no READ, security on) answer TOPIC_AUTHORIZATION_FAILED."""
    b = door.broker
    results = []
    total = 0
    error = False
    for ft in topics:
        name = ft.topic
        if denied and name in denied:
            results.append((name, [FetchPartitionResult(fp.partition, _DENIED, -1, -1, _EMPTY)
                                   for fp in ft.partitions]))
            error = True
            continue
        try:
            t = b.topic(name)
        except errors.UnknownTopicError:
            t = None
        rows = []
        for fp in ft.partitions:
            index = fp.partition
            if t is None or not 0 <= index < t.num_partitions:
                rows.append(FetchPartitionResult(index, _UNKNOWN, -1, -1, _EMPTY))
                error = True
                continue
            p = t.partition(index)
            hw = p.end_offset
            start = p.start_offset
            offset = fp.fetch_offset
            limit = min(fp.partition_max_bytes, max_bytes - total)
            if offset == hw or limit <= 0 and total > 0:
                rows.append(FetchPartitionResult(index, _NONE, hw, start, []))
                continue
            try:
                batches = p.read_batches(offset, max(limit, 1))
                if magic is not None:
                    converted, size = down_convert(batches, magic, offset, limit, total == 0)
            except errors.OffsetOutOfRangeError:
                rows.append(FetchPartitionResult(index, _OUT_OF_RANGE, hw, start, _EMPTY))
                error = True
                continue
            except Exception as e:
                rows.append(FetchPartitionResult(index, error_code_for(e).value, hw, start, _EMPTY))
                error = True
                continue
            if magic is not None:
                total += size
                rows.append(FetchPartitionResult(index, _NONE, hw, start, converted))
                continue
            keep = []
            size = 0
            for batch in batches:
                n = len(batch)
                if size + n > limit and (keep or total > 0):
                    break
                keep.append(batch)
                size += n
            total += size
            rows.append(FetchPartitionResult(index, _NONE, hw, start, keep))
        results.append((name, rows))
    return results, total, error


async def handle_fetch(ctx, req):
    door = ctx.door
    version = ctx.version
    session_id = getattr(req, "session_id", 0)
    if session_id != 0:
        return encode_fetch_response(version, [], error_code=ErrorCode.fetch_session_id_not_found.value)
    max_bytes = getattr(req, "max_bytes", 0x7FFFFFFF)
    if max_bytes <= 0:
        max_bytes = 0x7FFFFFFF
    # The broker's own cap (--fetch-max-bytes, Kafka's fetch.max.bytes): the
    # answer is read into memory, so a client must not choose its size alone.
    max_bytes = min(max_bytes, door.fetch_max_bytes)
    max_wait_ms = to_ms(req.max_wait)
    min_bytes = req.min_bytes
    deadline = time.monotonic() + max_wait_ms / 1000.0
    keys = [(ft.topic, fp.partition) for ft in req.topics for fp in ft.partitions]
    loop = asyncio.get_running_loop()
    magic = fetch_magic(version)
    denied: frozenset = frozenset()
    if door.security is not None and ctx.conn is not None:
        from ...security.acls import Operation, ResourceType
        from ..authz import allowed

        denied = frozenset(ft.topic for ft in req.topics if not allowed(ctx, Operation.READ, ResourceType.TOPIC,
                                                                        ft.topic))
        keys = [k for k in keys if k[0] not in denied]
    while True:
        results, total, error = collect(door, req.topics, max_bytes, magic, denied)
        if total >= min_bytes or error or not keys or door.shutting_down:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        fut = loop.create_future()
        door.add_waiter(keys, fut)
        try:
            await asyncio.wait((fut,), timeout=remaining)
        finally:
            door.remove_waiter(keys, fut)
            if not fut.done():
                fut.cancel()
    return encode_fetch_response(version, results)

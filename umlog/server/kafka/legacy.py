"""Old Kafka clients: Produce v0-2, Fetch v0-3 and ListOffsets v0.

Clients from before Kafka 0.11 (Sarama and Burrow configured for old
brokers, librdkafka before 1.0, kafka-python with ``api_version=(0, 9)`` or
``(0, 10)``, old Logstash and Beats) speak these versions, whose records are
the old message format ("MessageSet", magic 0 and 1; drawn in
``umlog/_native/legacy.pyx``). umlog stores RecordBatch v2 only, so the door
converts, natively and once per message set or stored range:

* Produce v0-2 (``upconvert_produce``): each partition's message set becomes
  one RecordBatch v2 before the normal produce path sees it (``legacy_to_batch``:
  CRC32 of every message checked, compressed messages opened, the producer's
  codec kept); a bad CRC, a truncated or malformed set is CORRUPT_MESSAGE for
  that partition. Magic 0 has no timestamps: its records are stored with -1,
  as Kafka's up-conversion does.
* Fetch v0-3 (``down_convert``): stored batches become messages of magic 0
  (v0-1) or magic 1 (v2-3, with timestamps), in the batch's codec (gzip,
  snappy, lz4; zstd, which old clients cannot read, uncompressed). Headers are
  dropped: neither format can carry them. Records before the fetch offset are
  left out. Sizes are those of the converted messages: whole messages up to
  the partition's limit (and Fetch v3's max_bytes), the first message of the
  answer whatever its size. Old brokers cut the last message short instead
  (clients skip a partial trailing message) and made a client whose first
  message was larger than its fetch size raise that size; both kinds of
  client take whole messages as well.
* ListOffsets v0 (``list_offsets_v0``): Kafka's old "offsets before" answer,
  ``max_num_offsets`` offsets in descending order from its legacy
  fetchOffsetsBefore: the segments' base offsets (the log start offset for the
  first) and, when the active segment holds data, the end offset, each with
  its segment file's modification time (the end offset: now). Latest (-1) is
  ``[end, newest segment bases...]``, earliest (-2) ``[log start]``, and a
  time t the same list from the newest entry modified at or before t (none:
  ``[]``). Burrow asks latest with max 1: ``[end offset]``.

kio (Kafka 4's schemas) no longer knows these versions, so their requests are
decoded and their answers encoded here and in ``wire``.
"""

from __future__ import annotations

import logging
import os
import struct
import time

from kio.schema.errors import ErrorCode

from umlog import errors
from umlog._native.core import batch_to_legacy, legacy_to_batch

from .errors import error_code_for
from .wire import _Cursor, _put_array_len, _put_string

__all__ = [
    "fetch_magic",
    "decode_fetch_request",
    "down_convert",
    "upconvert_produce",
    "decode_list_offsets_request",
    "list_offsets_v0",
    "offsets_before",
]

log = logging.getLogger("umlog.server.kafka")

_i16 = struct.Struct(">h")
_i32 = struct.Struct(">i")
_i64 = struct.Struct(">q")

EARLIEST = -2
LATEST = -1


# --- Produce v0-2 -------------------------------------------------------------------


def upconvert_produce(req) -> dict:
    """Replace every partition's old message set in a Produce v0-2 request by one
    RecordBatch v2, in place. Returns {(topic, partition): error code} for the
    sets refused (the normal path answers empty or missing records itself)."""
    refused: dict = {}
    for name, parts in req.topics:
        for pd in parts:
            if pd.records is None or len(pd.records) == 0:
                continue
            try:
                batch, _count = legacy_to_batch(pd.records)
            except errors.CorruptBatchError as e:
                log.warning("produce (old message format) to %s-%d refused: %s", name, pd.index, e)
                refused[(name, pd.index)] = ErrorCode.corrupt_message
                continue
            pd.records = memoryview(bytearray(batch))  # writable: offsets are assigned in place
    return refused


# --- Fetch v0-3 ---------------------------------------------------------------------


def fetch_magic(version: int) -> int | None:
    """The message format a Fetch version's answer carries: magic 0 (v0-1), 1
    (v2-3), or None for v4+ (RecordBatch v2, sent as stored)."""
    if version >= 4:
        return None
    return 1 if version >= 2 else 0


class FetchPartition:
    __slots__ = ("partition", "fetch_offset", "partition_max_bytes")

    def __init__(self, partition: int, fetch_offset: int, partition_max_bytes: int) -> None:
        self.partition = partition
        self.fetch_offset = fetch_offset
        self.partition_max_bytes = partition_max_bytes


class FetchTopic:
    __slots__ = ("topic", "partitions")

    def __init__(self, topic: str, partitions: list[FetchPartition]) -> None:
        self.topic = topic
        self.partitions = partitions


class FetchRequest:
    """A Fetch v0-3 request, with the attribute names of kio's v4+ request that
    ``handlers/fetch.py`` reads (``max_wait`` in ms)."""

    __slots__ = ("replica_id", "max_wait", "min_bytes", "max_bytes", "topics")

    def __init__(self, replica_id: int, max_wait: int, min_bytes: int, max_bytes: int,
                 topics: list[FetchTopic]) -> None:
        self.replica_id = replica_id
        self.max_wait = max_wait
        self.min_bytes = min_bytes
        self.max_bytes = max_bytes
        self.topics = topics


def decode_fetch_request(buf: memoryview, pos: int, version: int) -> FetchRequest:
    """Fetch v0-3: replica_id, max_wait_ms, min_bytes, [v3: max_bytes],
    [topic, [partition, fetch_offset, partition_max_bytes]]."""
    c = _Cursor(buf, pos, "fetch request")
    replica_id = c.i32("replica_id")
    max_wait = c.i32("max_wait_ms")
    min_bytes = c.i32("min_bytes")
    max_bytes = c.i32("max_bytes") if version >= 3 else 0x7FFFFFFF
    topics = []
    for _ in range(c.array_len("topics", False)):
        name = c.string("topics.topic", False)
        parts = []
        for _ in range(c.array_len("partitions", False)):
            index = c.i32("partitions.partition")
            offset = _i64_at(c, "partitions.fetch_offset")
            parts.append(FetchPartition(index, offset, c.i32("partitions.partition_max_bytes")))
        topics.append(FetchTopic(name, parts))  # type: ignore[arg-type]
    return FetchRequest(replica_id, max_wait, min_bytes, max_bytes, topics)


def _i64_at(c: _Cursor, field: str) -> int:
    c._need(8, field)
    (v,) = _i64.unpack_from(c.buf, c.pos)
    c.pos += 8
    return v


def down_convert(buffers: list, magic: int, offset: int, limit: int, at_least_one: bool) -> tuple[list, int]:
    """Stored batch buffers as an old message set: ([bytes], size), whole
    messages within ``limit`` bytes (the first one whatever its size when
    ``at_least_one``). One native call per buffer (a buffer holds many batches)."""
    out = []
    size = 0
    for buf in buffers:
        data, _next = batch_to_legacy(buf, magic, 0, -1, offset, max(limit - size, 0), at_least_one and size == 0)
        if data:
            out.append(data)
            size += len(data)
        if size >= limit:
            break
    return out, size


# --- ListOffsets v0 -------------------------------------------------------------------


class ListOffsetsPartition:
    __slots__ = ("partition_index", "timestamp", "max_num_offsets")

    def __init__(self, partition_index: int, timestamp: int, max_num_offsets: int) -> None:
        self.partition_index = partition_index
        self.timestamp = timestamp
        self.max_num_offsets = max_num_offsets


class ListOffsetsRequest:
    __slots__ = ("replica_id", "topics")

    def __init__(self, replica_id: int, topics: list[tuple[str, list[ListOffsetsPartition]]]) -> None:
        self.replica_id = replica_id
        self.topics = topics


def decode_list_offsets_request(buf: memoryview, pos: int, version: int) -> ListOffsetsRequest:
    """ListOffsets v0: replica_id, [topic, [partition, timestamp, max_num_offsets]]."""
    c = _Cursor(buf, pos, "list offsets request")
    replica_id = c.i32("replica_id")
    topics = []
    for _ in range(c.array_len("topics", False)):
        name = c.string("topics.name", False)
        parts = []
        for _ in range(c.array_len("partitions", False)):
            index = c.i32("partitions.partition_index")
            ts = _i64_at(c, "partitions.timestamp")
            parts.append(ListOffsetsPartition(index, ts, c.i32("partitions.max_num_offsets")))
        topics.append((name, parts))
    return ListOffsetsRequest(replica_id, topics)  # type: ignore[arg-type]


def _mtime_ms(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns // 1_000_000
    except OSError:  # deleted by retention meanwhile
        return None


def offsets_before(p, timestamp: int, max_num_offsets: int, now_ms: int | None = None) -> list[int]:
    """Kafka's legacy fetchOffsetsBefore for one partition (see the module docstring)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    start = p.start_offset
    end = p.end_offset
    entries: list[tuple[int, int]] = []  # (offset, modification time), oldest segment first
    segments = list(p.segments)
    for seg in segments:
        mtime = _mtime_ms(seg.log_path)
        if mtime is not None:
            entries.append((max(seg.base_offset, start), mtime))
    if segments and segments[-1].size > 0 or not entries:
        entries.append((end, now))
    if timestamp == LATEST:
        first = len(entries) - 1
    elif timestamp == EARLIEST:
        first = 0
    else:
        first = len(entries) - 1
        while first >= 0 and entries[first][1] > timestamp:
            first -= 1
    count = max(0, min(max_num_offsets, first + 1))
    offsets = [entries[first - j][0] for j in range(count)]
    # the high watermark is the end offset (no replication): nothing is above it
    return sorted((min(o, end) for o in offsets), reverse=True)


def list_offsets_v0(door, req: ListOffsetsRequest, denied=None) -> list:
    """The ListOffsets v0 answer, encoded: [name, [partition, error_code, [offset]]].
    ``denied(topic)``: True when the principal may not DESCRIBE it (security on)."""
    out = bytearray(_i32.pack(len(req.topics)))
    for name, parts in req.topics:
        _put_string(out, name, False)
        _put_array_len(out, len(parts), False)
        refused = denied is not None and denied(name)
        try:
            t = door.broker.topic(name)
        except errors.UnknownTopicError:
            t = None
        for rp in parts:
            code = ErrorCode.none
            offsets: list[int] = []
            if refused:
                code = ErrorCode.topic_authorization_failed
            elif t is None or not 0 <= rp.partition_index < t.num_partitions:
                code = ErrorCode.unknown_topic_or_partition
            elif rp.timestamp < 0 and rp.timestamp not in (LATEST, EARLIEST):
                code = ErrorCode.unsupported_version
            else:
                try:
                    offsets = offsets_before(t.partition(rp.partition_index), rp.timestamp, rp.max_num_offsets)
                except Exception as e:
                    code = error_code_for(e)
            out += _i32.pack(rp.partition_index) + _i16.pack(code.value) + _i32.pack(len(offsets))
            for o in offsets:
                out += _i64.pack(o)
    return [out]

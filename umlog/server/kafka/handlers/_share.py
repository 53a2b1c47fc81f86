"""Shared by the share-group handlers (KIP-932): topic ids, share sessions,
acknowledgements, and the stored batches that carry acquired records.

Membership, epochs and session timeouts are the hub's (``hub.shares``,
``umlog.server.shares``); records, locks and delivery counts are the engine's
share group (``umlog.delivery.group``), reached through each member's handle.
What is Kafka's lives here and in the Kafka door:

* **share sessions** (``ShareSession``, in ``door.share_sessions`` by
  (group, member id)): the partitions a member fetches and the epoch its next
  ShareFetch or ShareAcknowledge must carry. Epoch 0 opens one (a new one
  replaces the old; the member's acquired records stay its own), -1 closes it
  (after its acknowledgements, the member's remaining records are released),
  any other epoch must be the session's next (else INVALID_SHARE_SESSION_EPOCH;
  the session stays, so the request can be sent again at the right epoch) and
  needs a session (SHARE_SESSION_NOT_FOUND). A session belongs to the
  connection that opened it: when that connection closes the session is
  dropped and the member's acquired records are released at once, as when it
  closes the session itself (``close_connection_sessions``). A release keeps
  the delivery count the acquisition gave (a record at the limit is dead).
* **acknowledgements**: batches of (first, last, types) per partition, one
  type for the whole range or one per offset (0 gap, 1 accept, 2 release,
  3 reject, 4 renew). A partition's batches of one request are applied as one
  engine call, validated whole: if any offset is not held by the member (never
  acquired by it, settled, lock expired) none is applied and the partition
  answers INVALID_RECORD_STATE.
* **records as stored**: the stored batches holding the acquired offsets
  (``Partition.read_batches``, as Fetch sends them), each sent once, with
  AcquiredRecords ranges (contiguous offsets of one delivery count) saying
  which offsets of them this member holds; the client drops the others.
"""

from __future__ import annotations

import logging
import struct
import uuid
from typing import Any

from kio.schema.errors import ErrorCode

from umlog import errors
from umlog.delivery.group import InvalidRecordStateError

__all__ = ["ShareSession", "sessions", "session_for", "drop_session", "close_connection_sessions",
           "release_member", "wake_partitions", "requested_acks", "topic_name",
           "parse_acks", "apply_acks", "stored_batches", "acquired_ranges", "ACK_KINDS", "error_of"]

log = logging.getLogger("umlog.server.kafka")

# AcknowledgeType of the wire -> the engine's settle kind
ACK_KINDS = {0: "gap", 1: "accept", 2: "release", 3: "reject", 4: "renew"}
_batch_head = struct.Struct(">qi")  # base offset, batch length
_last_delta = struct.Struct(">i")  # at byte 23 of a RecordBatch v2
_BATCH_HEAD_BYTES = 27  # through lastOffsetDelta
READ_BYTES = 1 << 20  # bytes asked of read_batches per call (at least one whole batch comes)


class ShareSession:
    """A member's share session on this node (see the module docstring)."""

    __slots__ = ("group", "member_id", "conn", "epoch", "partitions")

    def __init__(self, group: str, member_id: str, conn: Any = None) -> None:
        self.group = group
        self.member_id = member_id
        self.conn = conn  # the connection that opened it (None in unit tests without one)
        self.epoch = 1  # the epoch the next request must carry
        self.partitions: dict[tuple[str, int], uuid.UUID] = {}  # (topic, partition) -> topic id


def sessions(door) -> dict[tuple[str, str], ShareSession]:
    return door.share_sessions


def error_of(name: str) -> ErrorCode:
    """kio's code for a ``umlog.server.shares`` error name."""
    return ErrorCode[name]


def topic_name(door, topic_id: uuid.UUID | None) -> str | None:
    """The topic of ``topic_id`` (Metadata's ids), or None."""
    return door.topic_by_id(topic_id)


def parse_acks(batches) -> list[tuple[int, str]] | None:
    """[(offset, kind)] of a partition's acknowledgement batches; None if malformed
    (ranges out of order or overlapping, a type count that fits neither form,
    an unknown type)."""
    out: list[tuple[int, str]] = []
    prev = -1
    for b in batches:
        first, last, types = b.first_offset, b.last_offset, b.acknowledge_types
        if first < 0 or last < first or first <= prev:
            return None
        prev = last
        n = last - first + 1
        if len(types) == 1:
            kind = ACK_KINDS.get(types[0])
            if kind is None:
                return None
            out.extend((o, kind) for o in range(first, last + 1))
        elif len(types) == n:
            for i, t in enumerate(types):
                kind = ACK_KINDS.get(t)
                if kind is None:
                    return None
                out.append((first + i, kind))
        else:
            return None
    return out


def apply_acks(door, member, topic: str, partition: int, acks: list[tuple[int, str]]) -> ErrorCode:
    """Settle one partition's acknowledgements through the member's handle; the
    partition's acknowledgement error code."""
    if not acks:
        return ErrorCode.none
    handle = member.handle if member is not None else None
    if handle is None:
        return ErrorCode.invalid_record_state
    try:
        handle.settle(topic, partition, acks, delay_ms=0, reason="rejected by a Kafka share consumer")
    except InvalidRecordStateError:
        return ErrorCode.invalid_record_state
    if any(k == "release" for _, k in acks):
        door.hub.notify_append(topic, partition)  # records available again: wake waiting ShareFetches
    return ErrorCode.none


def acquired_ranges(records) -> list[tuple[int, int, int]]:
    """(first, last, delivery count) runs of one partition's acquired records (sorted)."""
    out: list[list[int]] = []
    for r in records:
        if out and out[-1][1] + 1 == r.offset and out[-1][2] == r.delivery_count:
            out[-1][1] = r.offset
        else:
            out.append([r.offset, r.offset, r.delivery_count])
    return [(a, b, c) for a, b, c in out]


def stored_batches(p: Any, offsets: list[int]) -> list:
    """The stored batches holding ``offsets`` (sorted), each once, in order.

    ``read_batches`` answers whole batches back to back in one buffer, so each
    buffer is walked batch by batch (a batch that holds no wanted offset is
    left out); a wanted offset past the buffer is read again from there."""
    out = []
    i, n = 0, len(offsets)
    while i < n:
        try:
            chunks = p.read_batches(offsets[i], READ_BYTES)
        except errors.OffsetOutOfRangeError:
            break
        if not chunks:
            break
        before = i
        for chunk in chunks:
            i = _take_batches(memoryview(chunk), offsets, i, out)
            if i == n:
                break
        if i == before:
            i += 1  # an offset no stored batch holds (gone meanwhile): skip it
    return out


def _take_batches(buf: memoryview, offsets: list[int], i: int, out: list) -> int:
    """Append to ``out`` the batches of ``buf`` (whole batches back to back) that
    hold ``offsets[i:]``; the index of the first offset not found in ``buf``."""
    pos, end, n = 0, len(buf), len(offsets)
    while i < n and pos + _BATCH_HEAD_BYTES <= end:
        base, length = _batch_head.unpack_from(buf, pos)
        size = 12 + length
        if pos + size > end:
            break
        last = base + _last_delta.unpack_from(buf, pos + 23)[0]
        if offsets[i] < base:
            break  # the wanted offset lies before this batch (a gap): the caller reads from it
        if offsets[i] <= last:
            out.append(buf[pos:pos + size])
            while i < n and offsets[i] <= last:
                i += 1
        pos += size
    return i


def drop_session(door, group: str, member_id: str) -> None:
    door.share_sessions.pop((group, member_id), None)


def close_connection_sessions(door, conn) -> int:
    """A connection closed: drop the share sessions it opened and release what
    their members hold (Kafka releases a session's records when its connection
    goes, rather than when their locks expire); returns how many records."""
    cache = door.share_sessions
    gone = [key for key, s in cache.items() if s.conn is conn] if cache else []
    n = 0
    for key in gone:
        del cache[key]
        if door.shutting_down:
            continue  # the locks outlive no restart: held records come back then
        try:
            n += release_member(door, door.hub.shares.member(*key))
        except Exception:  # a failing disk: the locks expire anyway
            log.exception("share group %s: releasing the records of member %s failed", *key)
    return n


def release_member(door, member) -> int:
    """Release every record ``member`` holds, available again at once with the
    delivery count they have, and wake the ShareFetches waiting on its
    partitions; returns how many records."""
    if member is None or member.handle is None:
        return 0
    n = member.handle.release_held()
    if n:
        wake_partitions(door, member.assignment)
    return n


def wake_partitions(door, assignment: dict) -> None:
    """Wake the long polls waiting on ``{topic: [partition]}`` (records came back)."""
    for topic, parts in assignment.items():
        for p in parts:
            door.hub.notify_append(topic, p)


def session_for(door, group: str, member_id: str, epoch: int, *, can_open: bool, conn: Any = None):
    """(session, None) or (None, error code) for a request's ShareSessionEpoch (module docstring).
    Epoch -1 returns the session taken out of the cache (closed)."""
    key = (group, member_id)
    cache = door.share_sessions
    if epoch == 0:
        if not can_open:
            return None, ErrorCode.invalid_share_session_epoch
        s = cache[key] = ShareSession(group, member_id, conn)
        return s, None
    if epoch == -1:
        s = cache.pop(key, None)
        return (s, None) if s is not None else (None, ErrorCode.share_session_not_found)
    s = cache.get(key)
    if s is None:
        return None, ErrorCode.share_session_not_found
    if epoch != s.epoch:
        return None, ErrorCode.invalid_share_session_epoch
    s.epoch = s.epoch + 1 if s.epoch < 0x7FFFFFFF else 1
    return s, None


def requested_acks(door, topics, partitions_of=lambda t: t.partitions):
    """Walk a request's topics: ([(topic id, index, name or None)], {(name, index): acks}, malformed)."""
    named, acks_by, bad = [], {}, False
    for t in topics:
        name = topic_name(door, t.topic_id)
        for p in partitions_of(t):
            named.append((t.topic_id, p.partition_index, name))
            if p.acknowledgement_batches:
                acks = parse_acks(p.acknowledgement_batches)
                if acks is None:
                    bad = True
                elif name is not None:
                    acks_by.setdefault((name, p.partition_index), []).extend(acks)
    return named, acks_by, bad

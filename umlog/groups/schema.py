"""Kafka's record schemas for ``__consumer_offsets``, and the consumer protocol's.

Committed offsets are stored the way Kafka stores them, so that Kafka's own
tools (``kafka-console-consumer --formatter ...OffsetsMessageFormatter``,
Burrow, kcat with a decoder) can read our internal topic, and so that a
``__consumer_offsets`` copied from Kafka replays here. The layouts, from
Kafka's ``OffsetCommitKey.json``, ``OffsetCommitValue.json`` and
``GroupMetadataKey.json`` (big-endian; ``string`` = int16 length + UTF-8)::

    OffsetCommitKey (record key), written as version 1 (0 is the same bytes)
      0  version     int16   0 or 1
      2  group       string
      .  topic       string
      .  partition   int32

    GroupMetadataKey (record key): only recognised, never written
      0  version     int16   2
      2  group       string

    OffsetCommitValue (record value), written as version 3
      0  version           int16   3
      2  offset            int64
      10 leader_epoch      int32   (v3+; -1 unknown)
      14 metadata          string  (never null in the schema: None is "")
      .  commit_timestamp  int64   (ms)
    v0/v2: offset, metadata, commit_timestamp; v1 adds expire_timestamp int64
    at the end; v4 is v3 in the flexible encoding (compact string, tagged
    fields).

A record with an OffsetCommitKey and a null value (a tombstone) deletes that
committed offset, which compaction eventually removes too.

The partition of ``__consumer_offsets`` that holds a group is Kafka's:
``Utils.abs(groupId.hashCode()) % partitions`` with Java's ``String.hashCode``
(over UTF-16 code units), so a group lands in the same partition number it
would in a Kafka cluster with the same partition count.

Also here: the topics a consumer subscribes to, read from the member metadata
of the ``consumer`` protocol type (ConsumerProtocolSubscription, any version;
OffsetDelete needs it), decoded with kio.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from ..errors import DecodeError

__all__ = [
    "OffsetKey",
    "GroupKey",
    "OffsetValue",
    "encode_offset_key",
    "encode_offset_value",
    "decode_key",
    "decode_offset_value",
    "java_string_hash",
    "partition_for_group",
    "subscribed_topics",
]

OFFSET_KEY_VERSION = 1
GROUP_KEY_VERSION = 2
OFFSET_VALUE_VERSION = 3

_h = struct.Struct(">h")
_i = struct.Struct(">i")
_q = struct.Struct(">q")
_qi = struct.Struct(">qi")


class OffsetKey(NamedTuple):
    group: str
    topic: str
    partition: int


class GroupKey(NamedTuple):
    group: str


class OffsetValue(NamedTuple):
    offset: int
    leader_epoch: int
    metadata: str
    commit_timestamp: int


def _put_str(out: bytearray, s: str) -> None:
    b = s.encode()
    if len(b) > 0x7FFF:
        raise ValueError(f"string of {len(b)} bytes does not fit an int16 length")
    out += _h.pack(len(b))
    out += b


def _get_str(buf: bytes, pos: int, what: str) -> tuple[str, int]:
    if pos + 2 > len(buf):
        raise DecodeError(f"truncated {what} length at byte {pos}")
    n = _h.unpack_from(buf, pos)[0]
    pos += 2
    if n < 0:
        raise DecodeError(f"null {what} at byte {pos - 2}")
    if pos + n > len(buf):
        raise DecodeError(f"truncated {what} at byte {pos}: {n} bytes announced, {len(buf) - pos} left")
    try:
        return bytes(buf[pos:pos + n]).decode(), pos + n
    except UnicodeDecodeError as e:
        raise DecodeError(f"{what} is not UTF-8: {e}") from None


def _get(st: struct.Struct, buf: bytes, pos: int, what: str) -> tuple:
    if pos + st.size > len(buf):
        raise DecodeError(f"truncated {what} at byte {pos}")
    return st.unpack_from(buf, pos), pos + st.size


def encode_offset_key(group: str, topic: str, partition: int) -> bytes:
    out = bytearray(_h.pack(OFFSET_KEY_VERSION))
    _put_str(out, group)
    _put_str(out, topic)
    out += _i.pack(partition)
    return bytes(out)


def encode_offset_value(offset: int, leader_epoch: int = -1, metadata: str | None = None,
                        commit_timestamp: int = 0) -> bytes:
    out = bytearray(_h.pack(OFFSET_VALUE_VERSION))
    out += _qi.pack(offset, leader_epoch)
    _put_str(out, metadata or "")
    out += _q.pack(commit_timestamp)
    return bytes(out)


def decode_key(buf) -> OffsetKey | GroupKey:
    """An ``OffsetKey`` (versions 0, 1) or ``GroupKey`` (version 2); DecodeError otherwise."""
    buf = bytes(buf)
    (version,), pos = _get(_h, buf, 0, "key version")
    if version in (0, 1):
        group, pos = _get_str(buf, pos, "group")
        topic, pos = _get_str(buf, pos, "topic")
        (partition,), pos = _get(_i, buf, pos, "partition")
        return OffsetKey(group, topic, partition)
    if version == GROUP_KEY_VERSION:
        group, pos = _get_str(buf, pos, "group")
        return GroupKey(group)
    raise DecodeError(f"unknown __consumer_offsets key version {version}")


def _read_uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise DecodeError("truncated unsigned varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise DecodeError("unsigned varint longer than 5 bytes")


def decode_offset_value(buf) -> OffsetValue:
    """An OffsetCommitValue of any version 0-4 (trailing bytes of newer
    versions are ignored, as Kafka's readers do)."""
    buf = bytes(buf)
    (version,), pos = _get(_h, buf, 0, "value version")
    if version < 0 or version > 4:
        raise DecodeError(f"unknown OffsetCommitValue version {version}")
    (offset,), pos = _get(_q, buf, pos, "offset")
    epoch = -1
    if version >= 3:
        (epoch,), pos = _get(_i, buf, pos, "leader epoch")
    if version >= 4:  # flexible: compact string (length + 1, as an unsigned varint)
        n, pos = _read_uvarint(buf, pos)
        if n == 0:
            raise DecodeError("null metadata")
        n -= 1
        if pos + n > len(buf):
            raise DecodeError("truncated metadata")
        metadata = buf[pos:pos + n].decode(errors="replace")
        pos += n
    else:
        metadata, pos = _get_str(buf, pos, "metadata")
    (ts,), pos = _get(_q, buf, pos, "commit timestamp")
    return OffsetValue(offset, epoch, metadata, ts)


def java_string_hash(s: str) -> int:
    """Java's ``String.hashCode`` (a signed int32) over the UTF-16 code units of ``s``."""
    h = 0
    data = s.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (31 * h + ((data[i] << 8) | data[i + 1])) & 0xFFFFFFFF
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for_group(group: str, partitions: int) -> int:
    """Kafka's ``Utils.abs(group.hashCode()) % partitions`` (abs(MIN_VALUE) is 0 there)."""
    h = java_string_hash(group)
    return (0 if h == -(1 << 31) else abs(h)) % partitions


def subscribed_topics(metadata: bytes) -> set[str] | None:
    """Topics of a ConsumerProtocolSubscription (member metadata of protocol type
    ``consumer``); None when it does not decode."""
    try:
        from kio.schema.consumer_protocol_subscription.v0 import ConsumerProtocolSubscription
        from kio.serial import entity_reader

        if len(metadata) < 2:
            return None
        # Every version starts with version int16, then the topics array; newer
        # fields follow, so the v0 reader is enough for the topics.
        sub, _ = entity_reader(ConsumerProtocolSubscription)(memoryview(bytes(metadata))[2:].toreadonly(), 0)
        return set(sub.topics)
    except Exception:
        return None

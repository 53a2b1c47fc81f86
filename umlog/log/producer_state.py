"""Idempotent producers' state of one partition, kept by the storage (Kafka's
ProducerStateManager): for each producer id its epoch and the sequence ranges
and offsets of its last ``BATCHES_KEPT`` batches, so that a retried batch is
recognised as a duplicate (and acknowledged with its original offsets) and a
gap in sequences is refused, across rolls and restarts.

Persistence, as Kafka: a snapshot ``<offset, 20 digits>.snapshot`` beside the
segments holds the state of every batch below ``offset``. One is written at
each roll (at the new segment's base offset) and on close (at the end offset).
Opening the state loads the newest snapshot at or below the partition's end
(snapshots above it, left by a torn tail that recovery cut off, are deleted)
and replays the batch headers after it; with no snapshot it replays the whole
log. So after an unclean stop only the batches since the last roll are read.

Snapshot layout (big-endian; the CRC32C covers everything after it)::

    magic "UMPS" | version u16 = 1 | crc32c u32 | count u32
    count x: producer_id i64 | epoch i16 | n u8
             n x: first_seq i32 | last_seq i32 | base_offset i64 | last_offset i64 | timestamp i64

Not thread-safe: the partition calls it under its lock.
"""

from __future__ import annotations

import collections
import os
import struct
from collections.abc import Iterable

from .._native.core import crc32c
from .files import fsync_dir

__all__ = ["ProducerStateManager", "ProducerBatch", "ProducerEntry", "BATCHES_KEPT", "SNAPSHOT_SUFFIX"]

# Kafka keeps the last 5 batches per producer and partition for duplicate
# detection (max.in.flight.requests.per.connection <= 5 for idempotence).
BATCHES_KEPT = 5
SNAPSHOT_SUFFIX = ".snapshot"
SNAPSHOTS_KEPT = 2  # the newest and the one before (Kafka keeps a few)

_MAGIC = b"UMPS"
_VERSION = 1
_HEAD = struct.Struct(">4sHII")  # magic, version, crc, count
_ENTRY = struct.Struct(">qhB")
_BATCH = struct.Struct(">iiqqq")
_INT32_MAX = 0x7FFFFFFF


def seq_add(seq: int, n: int) -> int:
    """Sequences wrap from INT32_MAX to 0 (Kafka DefaultRecordBatch.incrementSequence)."""
    if seq > _INT32_MAX - n:
        return n - (_INT32_MAX - seq) - 1
    return seq + n


class ProducerBatch:
    """Sequence range and offsets of one appended batch."""

    __slots__ = ("first_seq", "last_seq", "base_offset", "last_offset", "timestamp")

    def __init__(self, first_seq: int, last_seq: int, base_offset: int, last_offset: int, timestamp: int) -> None:
        self.first_seq = first_seq
        self.last_seq = last_seq
        self.base_offset = base_offset
        self.last_offset = last_offset
        self.timestamp = timestamp  # the LogAppendTime a duplicate is answered with, or -1


class ProducerEntry:
    __slots__ = ("epoch", "batches")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.batches: collections.deque[ProducerBatch] = collections.deque(maxlen=BATCHES_KEPT)


def snapshot_name(offset: int) -> str:
    return f"{offset:020d}{SNAPSHOT_SUFFIX}"


def parse_snapshot_name(name: str) -> int | None:
    if name.endswith(SNAPSHOT_SUFFIX) and len(name) == 20 + len(SNAPSHOT_SUFFIX) and name[:20].isdigit():
        return int(name[:20])
    return None


class ProducerStateManager:
    """The producers' state of one partition directory (see the module docstring)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.producers: dict[int, ProducerEntry] = {}

    # -- appends ------------------------------------------------------------------------

    def update(self, producer_id: int, epoch: int, first_seq: int, last_seq: int, base_offset: int,
               last_offset: int, timestamp: int) -> None:
        """Record an appended batch; a newer epoch forgets the older one's batches."""
        e = self.producers.get(producer_id)
        if e is None or epoch > e.epoch:
            e = self.producers[producer_id] = ProducerEntry(epoch)
        elif epoch < e.epoch:
            return  # refused before it was appended; replay of an old epoch's batch
        e.batches.append(ProducerBatch(first_seq, last_seq, base_offset, last_offset, timestamp))

    def update_batch(self, info, base_offset: int, timestamp: int) -> None:
        """Record one appended batch from its ``BatchInfo`` and the base offset it was
        stored at (a producer's batch arrives with base offset 0); batches of no
        idempotent producer, and control batches, are not recorded."""
        if info.producer_id < 0 or info.is_control:
            return
        n = info.last_offset - info.base_offset
        self.update(info.producer_id, info.producer_epoch, info.base_sequence, seq_add(info.base_sequence, n),
                    base_offset, base_offset + n, timestamp)

    def update_from_infos(self, infos: Iterable, log_append_time: bool) -> None:
        """Record every idempotent batch among ``BatchInfo``s (offsets as stored)."""
        for i in infos:
            self.update_batch(i, i.base_offset, i.max_timestamp if log_append_time else -1)

    def entry(self, producer_id: int) -> ProducerEntry | None:
        return self.producers.get(producer_id)

    # -- snapshots --------------------------------------------------------------------------

    def snapshots(self) -> list[int]:
        """Offsets of the snapshot files present, ascending."""
        out = []
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return out
        for name in names:
            off = parse_snapshot_name(name)
            if off is not None:
                out.append(off)
            elif name.endswith(SNAPSHOT_SUFFIX + ".tmp"):
                _unlink(os.path.join(self.directory, name))  # a write a crash interrupted
        return sorted(out)

    def encode(self) -> bytes:
        body = bytearray()
        for pid, e in self.producers.items():
            body += _ENTRY.pack(pid, e.epoch, len(e.batches))
            for b in e.batches:
                body += _BATCH.pack(b.first_seq, b.last_seq, b.base_offset, b.last_offset, b.timestamp)
        count = len(self.producers)
        crc = crc32c(struct.pack(">I", count) + body)
        return _HEAD.pack(_MAGIC, _VERSION, crc, count) + bytes(body)

    @staticmethod
    def decode(data: bytes) -> dict[int, ProducerEntry]:
        """The producers of a snapshot; ValueError if it is torn or not one."""
        if len(data) < _HEAD.size:
            raise ValueError("truncated snapshot header")
        magic, version, crc, count = _HEAD.unpack_from(data, 0)
        if magic != _MAGIC or version != _VERSION:
            raise ValueError(f"not a producer snapshot (magic {magic!r}, version {version})")
        if crc32c(data[_HEAD.size - 4:]) != crc:
            raise ValueError("snapshot CRC mismatch")
        out: dict[int, ProducerEntry] = {}
        pos = _HEAD.size
        for _ in range(count):
            pid, epoch, n = _ENTRY.unpack_from(data, pos)
            pos += _ENTRY.size
            e = out[pid] = ProducerEntry(epoch)
            for _ in range(n):
                e.batches.append(ProducerBatch(*_BATCH.unpack_from(data, pos)))
                pos += _BATCH.size
        if pos != len(data):
            raise ValueError(f"{len(data) - pos} bytes after the last producer")
        return out

    def write_snapshot(self, offset: int, durable: bool) -> None:
        """Write the state of every batch below ``offset`` (atomically: temp file,
        rename; with ``durable``, fsyncs of the file and the directory), then
        keep only the newest ``SNAPSHOTS_KEPT``."""
        path = os.path.join(self.directory, snapshot_name(offset))
        tmp = path + ".tmp"
        data = self.encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if durable:
            fsync_dir(self.directory)
        for old in self.snapshots()[:-SNAPSHOTS_KEPT]:
            _unlink(os.path.join(self.directory, snapshot_name(old)))

    def load(self, end_offset: int, replay) -> int:
        """Load the newest usable snapshot at or below ``end_offset`` and replay what
        follows: ``replay(from_offset)`` yields the BatchInfo of every stored batch
        whose last offset is at or after ``from_offset``. Returns the offset
        replayed from (0: the whole log)."""
        self.producers = {}
        start = 0
        for off in reversed(self.snapshots()):
            path = os.path.join(self.directory, snapshot_name(off))
            if off > end_offset:
                _unlink(path)  # beyond a tail that recovery cut off
                continue
            try:
                with open(path, "rb") as f:
                    self.producers = self.decode(f.read())
                start = off
                break
            except (OSError, ValueError, struct.error):
                _unlink(path)  # torn by a crash during its write: an older one, or the log, serves
        for infos, log_append_time in replay(start):
            self.update_from_infos((i for i in infos if i.last_offset >= start), log_append_time)
        return start


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

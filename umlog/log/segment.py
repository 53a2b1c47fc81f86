"""One segment: a ``.log`` file of RecordBatch v2 bytes and its two indexes.

The ``.log`` holds batches back to back exactly as Kafka stores them (see
``umlog/_native/core.pyi`` for the batch layout); nothing else is in the file.
The segment is named after ``base_offset``, the first offset it may hold.

Contract:
- Life cycle: created or loaded active (writable, indexes preallocated);
  appended to by its Partition; made inactive on roll (indexes trimmed,
  data fdatasync'd); closed on shutdown; deleted by retention.
- Not thread-safe: the Partition holds its lock around every call that
  writes. Reads use ``os.pread`` on an immutable prefix (``size`` only grows
  after a write has completed), so readers need no lock.
- Durability: ``append`` returns when the bytes are in the page cache;
  ``sync()`` makes them durable (fdatasync). After a crash ``recover`` keeps
  the longest prefix of whole, CRC-valid, offset-contiguous batches and
  rebuilds the index entries after the last one it can trust.
"""

from __future__ import annotations

import errno
import os
import time

import numpy as np

from .._native.core import BATCH_HEADER_SIZE, LOG_OVERHEAD, batch_info, scan_batches
from ..errors import CorruptBatchError, CorruptIndexError, DecodeError
from .files import INDEX_SUFFIX, LOG_SUFFIX, TIMEINDEX_SUFFIX, segment_name, write_all
from .index import OffsetIndex, TimeIndex

__all__ = ["LogSegment", "SCAN_CHUNK"]

# Bytes read per pread while scanning for batch boundaries (recovery, index
# rebuild). Large enough that a scan of a 1 GiB segment is ~64 calls, small
# enough to stay cache friendly. Unmeasured beyond "recovery of 1 GiB runs at
# disk speed"; see bench/README.md.
SCAN_CHUNK = 16 << 20
# Bytes read ahead to find the batch holding an offset, after the index lookup.
# The index has an entry every index.interval.bytes (4096), so 64 KiB covers
# the gap plus typical batches in one call.
SEEK_CHUNK = 64 << 10


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class LogSegment:
    """A ``.log`` file plus ``.index`` and ``.timeindex`` (Kafka LogSegment)."""

    def __init__(
        self,
        directory: str,
        base_offset: int,
        *,
        index_interval: int = 4096,
        max_index_bytes: int = 10 << 20,
        writable: bool = True,
        active: bool = True,
        create: bool = False,
    ) -> None:
        self.directory = directory
        self.base_offset = base_offset
        self.index_interval = index_interval
        self.writable = writable
        self.active = active and writable
        self.log_path = os.path.join(directory, segment_name(base_offset, LOG_SUFFIX))
        flags = os.O_RDWR | os.O_APPEND if writable else os.O_RDONLY
        if create:
            flags |= os.O_CREAT | os.O_EXCL
        self.fd = os.open(self.log_path, flags | getattr(os, "O_CLOEXEC", 0), 0o644)
        self.offset_index = None
        try:
            self.size = os.fstat(self.fd).st_size
            self.offset_index = OffsetIndex(
                os.path.join(directory, segment_name(base_offset, INDEX_SUFFIX)),
                base_offset, max_index_bytes, writable=writable, active=self.active,
            )
            self.time_index = TimeIndex(
                os.path.join(directory, segment_name(base_offset, TIMEINDEX_SUFFIX)),
                base_offset, max_index_bytes, writable=writable, active=self.active,
            )
        except BaseException:
            # EMFILE, ENOSPC...: release what is open, and leave no half-made new
            # segment behind (a later roll creates it again, O_EXCL).
            if self.offset_index is not None:
                self.offset_index.close()
            os.close(self.fd)
            self.fd = -1
            if create:
                for suffix in (LOG_SUFFIX, INDEX_SUFFIX, TIMEINDEX_SUFFIX):
                    try:
                        os.unlink(os.path.join(directory, segment_name(base_offset, suffix)))
                    except OSError:
                        pass
            raise
        # Set by load()/recover() for existing files; trivially right for new ones.
        self.next_offset = base_offset
        self.max_timestamp = -1
        self.offset_of_max_timestamp = base_offset - 1
        self.bytes_since_index = 0
        self.first_append_ms: int | None = None  # for segment.ms
        self.synced_size = self.size if not create else 0

    def __repr__(self) -> str:
        return f"<LogSegment {self.log_path} size={self.size} offsets=[{self.base_offset}, {self.next_offset})>"

    # -- loading and recovery -------------------------------------------------

    def load(self, clean: bool, trusted: int | None = None) -> int:
        """Find next_offset and the index tail; returns bytes truncated.

        ``clean``: the data dir was closed cleanly; the segment is scanned from
        its last index entry without CRC checks (anything unexpected there
        falls back to recovery). Otherwise ``recover(trusted)``.
        """
        if not clean:
            return self.recover(trusted)
        try:
            self._scan_from_index(check_crc=False, rebuild=False)
        except (CorruptBatchError, CorruptIndexError, DecodeError):
            return self.recover(0)
        return 0

    def recover(self, trusted: int | None = 0) -> int:
        """Keep the valid prefix of the log; truncate the rest; fix the indexes.

        ``trusted`` is a position up to which the log is known durable (the
        partition's recovery point: fdatasync'd before it was recorded); None
        trusts the whole index. The scan starts at the last index entry at or
        before it, checking length, magic, CRC and offset contiguity batch by
        batch. Index entries past that point may name bytes that never
        reached the disk, so they are dropped and rebuilt by the scan.
        Returns the number of bytes truncated.
        """
        reopened = not self.active and self.writable
        if reopened:  # a closed segment's indexes are trimmed: make room again
            self.offset_index.resize_for_append()
            self.time_index.resize_for_append()
        try:
            self.offset_index.sanity_check(self.size)
            self.time_index.sanity_check()
            if trusted is not None:
                self._forget_index_after(trusted)
            return self._scan_from_index(check_crc=True, rebuild=True)
        except (CorruptBatchError, CorruptIndexError, DecodeError):
            self.offset_index.reset()
            self.time_index.reset()
            return self._scan_from_index(check_crc=True, rebuild=True)
        finally:
            if reopened:
                self.make_inactive(sync=False)

    def _forget_index_after(self, position: int) -> None:
        oi = self.offset_index
        keep = int(np.searchsorted(oi.positions(), position, side="left"))  # the batch at `position` is not durable
        oi.truncate_to_entries(keep)
        self.time_index.truncate_to_offset(oi.last_entry[0] + 1 if oi.entries else self.base_offset)

    def _scan_from_index(self, *, check_crc: bool, rebuild: bool) -> int:
        oi, ti = self.offset_index, self.time_index
        entry_offset, pos = oi.last_entry if oi.entries else (self.base_offset, 0)
        # The CRC does not cover baseOffset, so offsets are checked by
        # contiguity from a first batch we can vouch for: the one the index
        # entry names, or at position 0 the segment's base offset (only closed
        # segments are compacted, and only those may start later).
        if pos:
            info = self.batch_info_at(pos)
            if info.last_offset != entry_offset:
                raise CorruptIndexError(
                    f"{oi.path}: entry ({entry_offset}, {pos}) names a batch ending at {info.last_offset}"
                )
            expect = info.base_offset
        elif self.size >= BATCH_HEADER_SIZE:
            expect = self.batch_info_at(0).base_offset
            if expect < self.base_offset or (self.active and expect != self.base_offset):
                expect = self.base_offset  # a garbled first baseOffset: the scan stops at once
        else:
            expect = self.base_offset
        if ti.entries:
            self.max_timestamp, self.offset_of_max_timestamp = ti.last_entry
        else:
            self.max_timestamp, self.offset_of_max_timestamp = -1, self.base_offset - 1
        self.bytes_since_index = 0
        self.next_offset = expect  # the batch at pos is checked like every other
        first_indexed = pos if pos else -1
        end = self.size
        error = None
        while pos < end:
            chunk = os.pread(self.fd, min(SCAN_CHUNK, end - pos), pos)
            res = scan_batches(chunk, 0, len(chunk), expect, check_crc)
            if res.count:
                self._index_batches(res, pos, first_indexed, rebuild)
                expect = self.next_offset = res.next_offset
            chunk_pos, pos = pos, pos + res.valid_end
            if res.error is None:
                continue
            # Stopped early: either the next batch runs past this chunk (read
            # on), or the bytes are damaged (truncate there).
            size = self.batch_size_at(pos, end)
            if size is not None and pos - chunk_pos + size > len(chunk):
                if res.valid_end:
                    continue  # the next chunk starts with that batch
                whole = os.pread(self.fd, size, pos)  # one batch larger than a chunk
                res = scan_batches(whole, 0, size, expect, check_crc)
                if res.count:
                    self._index_batches(res, pos, first_indexed, rebuild)
                    expect = self.next_offset = res.next_offset
                    pos += res.valid_end
                    continue
            error = res.error
            break
        truncated = 0
        if pos < self.size:
            if not rebuild:
                raise CorruptBatchError(f"{self.log_path}: {error}", pos)
            truncated = self.size - pos
            self.truncate_to_position(pos)
            self.time_index.truncate_to_offset(self.next_offset)
            if self.offset_of_max_timestamp >= self.next_offset:
                last = self.time_index.last_entry
                self.max_timestamp, self.offset_of_max_timestamp = last if last else (-1, self.base_offset - 1)
        if self.size and self.first_append_ms is None:
            try:
                self.first_append_ms = self.batch_info_at(0).max_timestamp
            except DecodeError:
                self.first_append_ms = None
        return truncated

    def batch_size_at(self, pos: int, end: int) -> int | None:
        """Total size of the batch at pos if its length is sane and it ends by ``end``
        (None: cut off, or not a batch), from its batchLength field alone."""
        if pos + LOG_OVERHEAD > end:
            return None
        length = int.from_bytes(os.pread(self.fd, 4, pos + 8), "big", signed=True)
        if length < 49 or pos + LOG_OVERHEAD + length > end:
            return None
        return LOG_OVERHEAD + length

    def _index_batches(self, res, chunk_pos: int, skip_position: int, write: bool) -> None:
        """Add index entries for scanned batches, as append() would have."""
        positions = res.positions + chunk_pos
        sizes = res.sizes
        lasts = res.last_offsets
        maxts = res.max_timestamps
        interval = self.index_interval
        oi, ti = self.offset_index, self.time_index
        for i in range(res.count):
            p = int(positions[i])
            ts = int(maxts[i])
            if ts > self.max_timestamp:
                self.max_timestamp = ts
                self.offset_of_max_timestamp = int(lasts[i])
            if p != skip_position and self.bytes_since_index > interval and write and self.writable:
                if not oi.is_full:
                    oi.append(int(lasts[i]), p)
                    ti.maybe_append(self.max_timestamp, self.offset_of_max_timestamp)
                self.bytes_since_index = 0
            self.bytes_since_index += int(sizes[i])

    # -- writing ---------------------------------------------------------------

    def append(self, data, last_offset: int, max_timestamp: int, offset_of_max_timestamp: int) -> None:
        """Append one batch (or several, indexed as one unit) at the end."""
        position = self.size
        self._reserve_index(1)
        self._write(data)
        if self.bytes_since_index > self.index_interval and not self.offset_index.is_full:
            self.offset_index.append(last_offset, position)
            self._note_timestamp(max_timestamp, offset_of_max_timestamp)
            self.time_index.maybe_append(self.max_timestamp, self.offset_of_max_timestamp)
            self.bytes_since_index = 0
        else:
            self._note_timestamp(max_timestamp, offset_of_max_timestamp)
        self.bytes_since_index += len(data)
        self.next_offset = last_offset + 1

    def append_batches(self, data, positions, sizes, last_offsets, max_timestamps) -> None:
        """Append several batches in one write, indexing each as Kafka would."""
        position = self.size
        self._reserve_index(len(positions))
        self._write(data)
        interval = self.index_interval
        oi, ti = self.offset_index, self.time_index
        for i in range(len(positions)):
            ts = int(max_timestamps[i])
            last = int(last_offsets[i])
            if self.bytes_since_index > interval and not oi.is_full:
                oi.append(last, position + int(positions[i]))
                self._note_timestamp(ts, last)
                ti.maybe_append(self.max_timestamp, self.offset_of_max_timestamp)
                self.bytes_since_index = 0
            else:
                self._note_timestamp(ts, last)
            self.bytes_since_index += int(sizes[i])
        self.next_offset = int(last_offsets[-1]) + 1

    def _reserve_index(self, n: int) -> None:
        """Disk blocks for up to ``n`` more index entries (and the time index's
        final one), taken BEFORE the log write: if the disk is full this fails
        with nothing written, never with a batch in the log and no entry."""
        if self.writable:
            self.offset_index.reserve(self.offset_index.entries + n)
            self.time_index.reserve(self.time_index.entries + n + 1)

    def _note_timestamp(self, ts: int, offset: int) -> None:
        if ts > self.max_timestamp:
            self.max_timestamp = ts
            self.offset_of_max_timestamp = offset

    def _write(self, data) -> None:
        if not self.writable:
            raise OSError(errno.EBADF, f"{self.log_path} is open read-only")
        if self.first_append_ms is None:
            self.first_append_ms = _now_ms()
        before = self.size
        try:
            write_all(self.fd, data)
        except BaseException:
            # A short write (ENOSPC, EIO) leaves a torn batch: cut it off so
            # nothing half-written is ever served, then report the failure.
            try:
                os.ftruncate(self.fd, before)
                os.lseek(self.fd, before, os.SEEK_SET)
            except OSError:
                pass
            raise
        self.size = before + len(data)

    def sync(self) -> None:
        """fdatasync the log (releases the GIL); indexes are rebuilt after a crash."""
        size = self.size
        if size != self.synced_size:
            os.fdatasync(self.fd)
            self.synced_size = size

    def truncate_to_position(self, position: int) -> None:
        """Cut the log at a batch boundary and drop offset-index entries past it.

        The caller fixes next_offset and the time index (it knows the offsets).
        """
        os.ftruncate(self.fd, position)
        os.lseek(self.fd, position, os.SEEK_SET)
        self.size = position
        self.synced_size = min(self.synced_size, position)
        self.offset_index.truncate_to_entries(
            int(np.searchsorted(self.offset_index.positions(), position, side="left"))
        )

    def truncate_to_offset(self, offset: int) -> int:
        """Remove every batch whose base offset >= offset; returns bytes removed."""
        pos = self.find_position(offset)
        if pos is None:
            return 0
        position, base = pos
        if base < offset:  # the batch straddles: keep it whole
            info = self.batch_info_at(position)
            position += info.size
        removed = self.size - position
        self.truncate_to_position(position)
        self.time_index.truncate_to_offset(offset)
        self.next_offset = min(self.next_offset, offset)
        return removed

    # -- reading -------------------------------------------------------------------

    def corrupt(self, e: CorruptBatchError, base: int) -> CorruptBatchError:
        """``e``, raised on bytes read from this segment at file position ``base``,
        restated with the segment's path and the batch's file position."""
        at = base + max(getattr(e, "position", 0) or 0, 0)
        return CorruptBatchError(f"{self.log_path}: corrupt batch at byte {at}: {e}", at)

    def batch_info_at(self, position: int):
        """The header of the batch at ``position`` (one read of the header's bytes;
        DecodeError if fewer are written)."""
        return batch_info(os.pread(self.fd, BATCH_HEADER_SIZE, position), 0)

    def read(self, position: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``position`` (never past the written end)."""
        size = min(size, self.size - position)
        if size <= 0:
            return b""
        return os.pread(self.fd, size, position)

    def find_position(self, offset: int) -> tuple[int, int] | None:
        """(position, base offset) of the first batch whose last offset >= offset.

        None when every batch in the segment ends before ``offset``.
        """
        if offset >= self.next_offset or self.size == 0:
            return None
        _, pos = self.offset_index.lookup(offset)
        return self._first_batch_from(pos, "last_offset", offset)

    def _first_batch_from(self, pos: int, field: str, least: int) -> tuple[int, int] | None:
        """(position, base offset) of the first batch at or after ``pos`` whose
        ``field`` ("last_offset" or "max_timestamp") is >= ``least``, or None.

        Batch headers are scanned natively a chunk at a time (the index put
        ``pos`` within index.interval.bytes of the answer, usually).
        """
        column = field + "s"
        end = self.size
        while pos < end:
            chunk = self.read(pos, min(SEEK_CHUNK, end - pos))  # a remote segment reads its own way
            res = scan_batches(chunk, 0, len(chunk), -1, False)
            if res.count:
                hits = np.flatnonzero(getattr(res, column) >= least)
                if len(hits):
                    i = int(hits[0])
                    return pos + int(res.positions[i]), int(res.base_offsets[i])
                pos += res.valid_end
                continue
            # The next batch does not fit the chunk: read its header alone.
            info = batch_info(chunk, 0)
            if getattr(info, field) >= least:
                return pos, info.base_offset
            pos += info.size
        return None

    def batches_from(self, position: int, max_bytes: int) -> memoryview:
        """Whole batches from ``position``, up to max_bytes but at least one batch."""
        data = self.read(position, max(max_bytes, LOG_OVERHEAD))
        if not data:
            return memoryview(b"")
        res = scan_batches(data, 0, len(data), -1, False)
        if res.count:
            return memoryview(data)[: res.valid_end]
        info = batch_info(data, 0) if len(data) >= BATCH_HEADER_SIZE else self.batch_info_at(position)
        return memoryview(self.read(position, info.size))

    def timestamp_lookup(self, timestamp: int) -> tuple[int, int] | None:
        """(position, base offset) of the first batch with max timestamp >= timestamp."""
        if self.size == 0 or self.max_timestamp < timestamp:
            return None
        _, offset = self.time_index.lookup(timestamp)
        found = self.find_position(offset)
        if found is None:
            return None
        return self._first_batch_from(found[0], "max_timestamp", timestamp)

    # -- life cycle --------------------------------------------------------------------

    def make_inactive(self, sync: bool = True) -> None:
        """On roll: data durable (optionally), indexes trimmed to their entries.

        As Kafka does, the time index gets a last entry holding the segment's
        true max timestamp, so a later load knows it without a scan (the
        index keeps one slot free for it: see ``is_full``).
        """
        if sync and self.writable:
            self.sync()
        if self.writable and self.max_timestamp >= 0:
            self.time_index.maybe_append(self.max_timestamp, self.offset_of_max_timestamp, final=True)
        self.active = False
        self.offset_index.trim_to_valid_size()
        self.time_index.trim_to_valid_size()

    def refresh(self) -> None:
        """Read-only tailers: pick up bytes the writer appended since."""
        size = os.fstat(self.fd).st_size
        if size != self.size:
            self.size = size
            self.offset_index.refresh()
            self.time_index.refresh()

    def close(self) -> None:
        if self.fd >= 0:
            if self.active:
                self.offset_index.trim_to_valid_size()
                self.time_index.trim_to_valid_size()
            self.offset_index.close()
            self.time_index.close()
            os.close(self.fd)
            self.fd = -1

    def delete(self) -> None:
        self.close()
        for path in (self.log_path, self.offset_index.path, self.time_index.path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

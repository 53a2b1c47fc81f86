"""Kafka's sparse indexes on memory-mapped files (OffsetIndex, TimeIndex).

Both files are arrays of fixed-size big-endian entries, preallocated to
``segment.index.bytes`` while their segment is active (a sparse file) and
trimmed to their entries when the segment closes::

    .index       slot i at i*8:   relative offset u32 | position u32
    .timeindex   slot i at i*12:  timestamp i64       | relative offset u32

``relative offset`` = offset - segment base offset. An offset-index entry
(rel, pos) says: the batch starting at byte ``pos`` of the .log ends at offset
base+rel; every entry is strictly greater than the one before. A time-index
entry (ts, rel) says: the records up to base+rel have timestamps up to ts; ts
strictly increases. Lookups are a native binary search over the mapped bytes
(umlog._native.core); numpy is not used there because ``searchsorted`` on a
big-endian view copies the whole array on every call (measured: 0.6-1.8 ms on a
10 MiB index).

After a crash the preallocated tail is zeros, and entries may point past the
log's valid end. ``valid_entries()`` finds the last non-zero slot, and the
loader drops entries beyond the recovered log and re-appends the tail.

Not thread-safe: the owning Partition serialises writers. Readers in another
process map the file read-only and may see a slot being written (8 or 12
bytes, not atomic): they only use entries below the count they computed and
verify positions against the log.
"""

from __future__ import annotations

import errno
import mmap
import os
import struct

import numpy as np
import pyarrow as pa

from .._native.core import offset_index_lookup, time_index_lookup
from ..errors import CorruptIndexError

__all__ = ["OffsetIndex", "TimeIndex"]

# Disk blocks allocated under the map at a time (see _Index.reserve): 8192
# offset-index entries, ~32 MiB of log at the default index.interval.bytes.
RESERVE_BYTES = 64 << 10
_fallocate = getattr(os, "posix_fallocate", None)

_OFFSET_ENTRY = struct.Struct(">II")
_TIME_ENTRY = struct.Struct(">qI")


class _Index:
    """Shared life cycle: map, append, truncate, trim, close."""

    entry_size = 0
    _entry: struct.Struct

    def __init__(self, path: str, base_offset: int, max_bytes: int, *, writable: bool, active: bool) -> None:
        self.path = path
        self.base_offset = base_offset
        self.writable = writable
        self.max_entries = max(2, max_bytes // self.entry_size)
        self._mm: mmap.mmap | None = None
        self._buf: pa.Buffer | None = None
        self._reserved = 0
        self.entries = 0
        self._open(active)

    # -- mapping -------------------------------------------------------------

    def _open(self, active: bool) -> None:
        exists = os.path.exists(self.path)
        if self.writable:
            if not exists:
                open(self.path, "wb").close()
            size = os.path.getsize(self.path)
            used = size - size % self.entry_size
            if active and size < self.max_entries * self.entry_size:
                os.truncate(self.path, self.max_entries * self.entry_size)
            elif size % self.entry_size:
                os.truncate(self.path, used)
            self._map("r+")
            self.entries = self.valid_entries(used // self.entry_size)
        else:
            if not exists or os.path.getsize(self.path) == 0:
                self.entries = 0
                return
            self._map("r")
            self.entries = self.valid_entries(self._buf.size // self.entry_size)

    def _map(self, mode: str) -> None:
        # Python's mmap, wrapped zero-copy as a pyarrow Buffer. Not
        # pa.memory_map: its read_buffer() madvise(WILLNEED)s the whole map,
        # which reads a preallocated 10 MiB index into the page cache, holes
        # included: ~5 ms per index, 19 s to open 1,000 partitions (measured
        # with tools/startup_time.py).
        fd = os.open(self.path, (os.O_RDWR if mode == "r+" else os.O_RDONLY) | getattr(os, "O_CLOEXEC", 0))
        try:
            access = mmap.ACCESS_WRITE if mode == "r+" else mmap.ACCESS_READ
            # Length 0: the size when mapping (a tailer's writer may trim the
            # file at any moment; only slots below a pread count are used).
            self._mm = mmap.mmap(fd, 0, access=access)
        except ValueError:  # an empty file: nothing to read or write there
            self._mm, self._buf = None, pa.py_buffer(b"")
            return
        finally:
            os.close(fd)  # the map keeps its own descriptor
        self._buf = pa.py_buffer(self._mm)
        self._reserved = 0  # bytes known to have disk blocks (see reserve)

    def valid_entries(self, limit: int) -> int:
        """Slots before the zero-filled preallocated tail.

        No valid entry is all zeros: an offset entry never points at position 0
        (the first batch of a segment gets no entry), and a time entry after the
        first has a larger offset. So the valid slots are a non-zero prefix and
        a binary search finds its end in O(log n) page touches, which keeps
        opening a thousand partitions after a crash fast.
        """
        if limit <= 0 or self._buf is None:
            return 0
        # With pread for the writer too: probing through the map faults in
        # 64 KiB around every probe (the kernel's fault-around), 1.3 GB of RSS
        # for 1,000 partitions opened after a crash.
        return self._valid_entries_pread(limit)

    def _valid_entries_pread(self, limit: int) -> int:
        """valid_entries for read-only tailers, probing with pread, not the map.

        The writer trims an active index to its entries when it rolls: a
        tailer touching a mapped page past the new end of file would get
        SIGBUS. pread past the end just reads nothing (a zero slot). Slots
        below the count found here are never trimmed away, so lookups in the
        map stay safe.
        """
        size, zero = self.entry_size, bytes(self.entry_size)
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return 0
        try:
            lo, hi = 0, limit
            while lo < hi:
                mid = (lo + hi) // 2
                slot = os.pread(fd, size, mid * size)
                if len(slot) == size and slot != zero:
                    lo = mid + 1
                else:
                    hi = mid
            return lo
        finally:
            os.close(fd)

    def refresh(self) -> None:
        """Re-read the entry count (read-only tailers; the writer may have appended)."""
        if self.writable:
            return
        if self._buf is None or os.path.getsize(self.path) != self._buf.size:
            self.close()
            self._open(False)
        else:
            self.entries = self.valid_entries(self._buf.size // self.entry_size)

    # -- writing ------------------------------------------------------------------

    @property
    def is_full(self) -> bool:
        """One slot stays free for the time index's final entry on roll."""
        return self.entries >= self.max_entries - 1

    def reserve(self, entries: int) -> None:
        """Make sure slots below ``entries`` have disk blocks before anything is
        written through the map (a no-op most calls).

        The preallocated file is sparse, and a store into a hole of a map on a
        full file system is SIGBUS: the whole server dies (on tmpfs even a
        load does). posix_fallocate fails with ENOSPC instead, an error the
        caller reports. Done ``RESERVE_BYTES`` at a time, before the log write
        that the entries describe, so a full disk never leaves a batch in the
        log without its index entry (LogSegment.append).
        """
        end = min(entries, self.max_entries) * self.entry_size
        if end <= self._reserved or self._mm is None:
            return
        stop = min(len(self._mm), max(end, self._reserved + RESERVE_BYTES))
        if _fallocate is not None:
            fd = os.open(self.path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
            try:
                _fallocate(fd, self._reserved, stop - self._reserved)
            except OSError as e:
                if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    pass  # a file system without fallocate: as before
                else:
                    raise
            finally:
                os.close(fd)
        self._reserved = stop

    def _write_slot(self, slot: int, data: bytes) -> None:
        self.reserve(slot + 1)
        mm = self._mm
        mm.seek(slot * self.entry_size)
        mm.write(data)

    def truncate_to_entries(self, n: int) -> None:
        """Forget entries from slot n on (zeroing them, so a reopen agrees)."""
        n = max(0, min(n, self.entries))
        if n < self.entries and self.writable:
            self._mm.seek(n * self.entry_size)
            self._mm.write(bytes((self.entries - n) * self.entry_size))
        self.entries = n

    def reset(self) -> None:
        self.truncate_to_entries(0)

    def trim_to_valid_size(self) -> None:
        """Shrink the file to its entries (on roll and on clean close)."""
        if not self.writable or self._mm is None:
            return
        self.flush()
        self.close()
        os.truncate(self.path, self.entries * self.entry_size)

    def resize_for_append(self) -> None:
        """Grow a trimmed index back to its preallocated size (segment reactivated)."""
        if not self.writable:
            return
        self.close()
        os.truncate(self.path, self.max_entries * self.entry_size)
        self._map("r+")

    def flush(self) -> None:
        if self._mm is not None and self.writable:
            self._mm.flush()

    def close(self) -> None:
        mm, self._mm, self._buf = self._mm, None, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass  # a lookup still holds a view: unmapped when that view goes

    def delete(self) -> None:
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _ensure_mapped(self) -> pa.Buffer | None:
        if self._buf is None and self.entries and os.path.exists(self.path):
            self._map("r+" if self.writable else "r")
        return self._buf


class OffsetIndex(_Index):
    """offset -> position of the batch to start scanning from."""

    entry_size = 8
    _entry = _OFFSET_ENTRY

    def entry(self, slot: int) -> tuple[int, int]:
        """(absolute offset, position) of a slot."""
        rel, pos = _OFFSET_ENTRY.unpack_from(self._ensure_mapped(), slot * 8)
        return self.base_offset + rel, pos

    @property
    def last_entry(self) -> tuple[int, int]:
        if not self.entries:
            return self.base_offset, 0
        return self.entry(self.entries - 1)

    def append(self, offset: int, position: int) -> None:
        """Add (last offset of the batch at position, position)."""
        rel = offset - self.base_offset
        if self.entries:
            last_off, last_pos = self.last_entry
            if offset <= last_off or position <= last_pos:
                raise CorruptIndexError(
                    f"{self.path}: entry ({offset}, {position}) is not after ({last_off}, {last_pos})"
                )
        if not 0 <= rel <= 0xFFFFFFFF or position > 0xFFFFFFFF:
            raise CorruptIndexError(f"{self.path}: entry ({offset}, {position}) does not fit u32")
        if self.is_full:
            raise CorruptIndexError(f"{self.path}: index is full ({self.entries} entries)")
        self._write_slot(self.entries, _OFFSET_ENTRY.pack(rel, position))
        self.entries += 1

    def lookup(self, offset: int) -> tuple[int, int]:
        """(offset, position) of the last entry at or before ``offset``; (base, 0) if none."""
        n = self.entries
        if n == 0 or offset < self.base_offset:
            return self.base_offset, 0
        rel = min(offset - self.base_offset, 0xFFFFFFFF)
        slot = offset_index_lookup(self._ensure_mapped(), n, rel)
        if slot < 0:
            return self.base_offset, 0
        return self.entry(slot)

    def truncate_to_offset(self, offset: int) -> None:
        """Drop entries whose offset >= ``offset`` (they name batches that are gone)."""
        if not self.entries:
            return
        slot = offset_index_lookup(self._ensure_mapped(), self.entries, max(0, offset - self.base_offset))
        if slot >= 0 and self.entry(slot)[0] >= offset:
            slot -= 1
        self.truncate_to_entries(slot + 1)

    def positions(self) -> np.ndarray:
        """All positions, as a numpy view (bulk checks only)."""
        buf = self._ensure_mapped()
        if not self.entries:
            return np.zeros(0, dtype=np.int64)
        arr = np.frombuffer(buf, dtype=">u4", count=self.entries * 2)
        return arr[1::2].astype(np.int64)

    def sanity_check(self, log_size: int) -> None:
        if not self.entries:
            return
        arr = np.frombuffer(self._ensure_mapped(), dtype=">u4", count=self.entries * 2).astype(np.int64)
        rel, pos = arr[0::2], arr[1::2]
        if self.entries > 1 and (np.any(np.diff(rel) <= 0) or np.any(np.diff(pos) <= 0)):
            raise CorruptIndexError(f"{self.path}: entries are not strictly increasing")
        if pos[-1] >= log_size:
            raise CorruptIndexError(f"{self.path}: last entry points at {pos[-1]}, past the log's {log_size} bytes")


class TimeIndex(_Index):
    """timestamp -> offset to start scanning from."""

    entry_size = 12
    _entry = _TIME_ENTRY

    def entry(self, slot: int) -> tuple[int, int]:
        """(timestamp, absolute offset) of a slot."""
        ts, rel = _TIME_ENTRY.unpack_from(self._ensure_mapped(), slot * 12)
        return ts, self.base_offset + rel

    @property
    def last_entry(self) -> tuple[int, int] | None:
        return self.entry(self.entries - 1) if self.entries else None

    def maybe_append(self, timestamp: int, offset: int, final: bool = False) -> None:
        """Add (max timestamp so far, its offset) if the timestamp grew.

        ``final`` (on roll) may use the slot that ``is_full`` keeps free.
        """
        last = self.last_entry
        if last is not None and (timestamp <= last[0] or offset <= last[1]):
            return
        if self.entries >= self.max_entries or (self.is_full and not final):
            return
        rel = offset - self.base_offset
        if not 0 <= rel <= 0xFFFFFFFF:
            raise CorruptIndexError(f"{self.path}: offset {offset} does not fit u32")
        if timestamp == 0 and rel == 0:
            return  # an all-zero slot reads as preallocated space (valid_entries)
        self._write_slot(self.entries, _TIME_ENTRY.pack(timestamp, rel))
        self.entries += 1

    def lookup(self, timestamp: int) -> tuple[int, int]:
        """(timestamp, offset) of the last entry with timestamp <= target; (-1, base) if none."""
        n = self.entries
        if n == 0:
            return -1, self.base_offset
        slot = time_index_lookup(self._ensure_mapped(), n, timestamp)
        if slot < 0:
            return -1, self.base_offset
        return self.entry(slot)

    def truncate_to_offset(self, offset: int) -> None:
        n = self.entries
        while n and self.entry(n - 1)[1] >= offset:
            n -= 1
        self.truncate_to_entries(n)

    def sanity_check(self) -> None:
        if self.entries < 2:
            return
        raw = np.frombuffer(self._ensure_mapped(), dtype=np.uint8, count=self.entries * 12).reshape(-1, 12)
        ts = raw[:, :8].copy().view(">i8").ravel().astype(np.int64)
        if np.any(np.diff(ts) <= 0):
            raise CorruptIndexError(f"{self.path}: timestamps are not strictly increasing")

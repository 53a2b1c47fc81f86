"""Verify a data dir without changing it: every batch (length, magic, CRC32C,
offsets dense within and across segments) and every index entry (it names a
batch that exists, at the offset it says). ``umlog check`` prints the result.

Read-only and lock-free, so it runs beside a live ``umlog serve``: files are
read with pread, nothing is mapped or written. Two things a live (or crashed)
writer leaves that are not damage are told apart:

* the last batch of a partition's last segment cut off while the data dir's
  writer is alive: it is being written (reported only with no writer);
* index entries of a partition's last segment when the data dir was not
  closed cleanly (no ``.clean``): the writer rebuilds them past its recovery
  point at its next start, so they are not trusted and not checked.

Anything else that does not hold is a ``Damage``: where (topic, partition,
file, byte position), the first offset it affects, and what is wrong.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Iterable

import numpy as np

from .._native.core import LOG_OVERHEAD, scan_batches
from .files import INDEX_SUFFIX, LOG_SUFFIX, TIMEINDEX_SUFFIX, parse_partition_dir, parse_segment_name, segment_name
from .segment import SCAN_CHUNK

__all__ = ["Damage", "CheckResult", "check_data_dir"]

_OFFSET_ENTRY = struct.Struct(">II")  # relative offset, position
_TIME_ENTRY = struct.Struct(">qI")  # timestamp, relative offset


@dataclasses.dataclass
class Damage:
    topic: str
    partition: int
    file: str  # the segment's file name (.log, .index, .timeindex)
    position: int  # byte position in that file
    offset: int  # the first offset it affects (-1: not known)
    what: str


@dataclasses.dataclass
class CheckResult:
    topics: int = 0
    partitions: int = 0
    segments: int = 0
    batches: int = 0
    bytes: int = 0
    index_entries: int = 0
    writer_alive: bool = False
    damage: list[Damage] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damage


def writer_alive(data_dir: str) -> bool:
    """Whether a process holds the data dir's writer lock. Looked up in
    ``/proc/locks`` (the lock's inode), so no lock is taken and a starting
    server is never disturbed; elsewhere, a lock that can be taken and let go
    at once means no writer."""
    path = os.path.join(data_dir, ".lock")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    try:
        with open("/proc/locks") as f:
            locks = f.read()
    except OSError:
        locks = None
    if locks is not None:
        for line in locks.splitlines():
            parts = line.split()
            if len(parts) < 6 or parts[1] == "->":  # a waiter, not a holder
                continue
            try:
                major, minor, ino = parts[5].split(":")
                if (int(ino) == st.st_ino and int(major, 16) == os.major(st.st_dev)
                        and int(minor, 16) == os.minor(st.st_dev)):
                    return True
            except ValueError:
                continue
        return False
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def check_data_dir(data_dir: str, topics: Iterable[str] | None = None) -> CheckResult:
    """Check every partition of ``data_dir`` (or of ``topics`` only)."""
    wanted = set(topics) if topics else None
    out = CheckResult()
    out.writer_alive = writer_alive(data_dir)
    clean = os.path.exists(os.path.join(data_dir, ".clean"))
    seen_topics = set()
    for entry in sorted(os.listdir(data_dir)):
        parsed = parse_partition_dir(entry)
        d = os.path.join(data_dir, entry)
        if parsed is None or not os.path.isdir(d) or entry.endswith(".deleting"):
            continue
        topic, index = parsed
        if wanted is not None and topic not in wanted:
            continue
        seen_topics.add(topic)
        out.partitions += 1
        _check_partition(d, topic, index, out, trust_active_index=clean, writer_alive=out.writer_alive)
    out.topics = len(seen_topics)
    if wanted is not None:
        for missing in sorted(wanted - seen_topics):
            out.damage.append(Damage(missing, -1, "", 0, -1, "no such topic in the data dir"))
    return out


def _check_partition(d: str, topic: str, index: int, out: CheckResult, *, trust_active_index: bool,
                     writer_alive: bool) -> None:
    bases = sorted(b for b, suffix in filter(None, map(parse_segment_name, os.listdir(d))) if suffix == LOG_SUFFIX)
    expect = None
    for i, base in enumerate(bases):
        last = i == len(bases) - 1
        name = segment_name(base, LOG_SUFFIX)
        out.segments += 1
        if expect is not None and base != expect:
            out.damage.append(Damage(topic, index, name, 0, expect,
                                     f"segment starts at offset {base}, the one before it ends at {expect}"))
        damaged = len(out.damage)
        positions, lasts, end, nxt = _scan_log(os.path.join(d, name), base, topic, index, out,
                                               tail_may_grow=last and writer_alive)
        if len(out.damage) > damaged:
            expect = None  # what follows the damage is unknown: the next segment is checked on its own
            continue  # and this segment's indexes cannot be checked past it
        expect = nxt
        if not last or trust_active_index:
            _check_offset_index(os.path.join(d, segment_name(base, INDEX_SUFFIX)), base, positions, lasts,
                                topic, index, out)
            _check_time_index(os.path.join(d, segment_name(base, TIMEINDEX_SUFFIX)), base, nxt, topic, index, out)


def _scan_log(path: str, base: int, topic: str, index: int, out: CheckResult, *, tail_may_grow: bool):
    """Scan one .log with CRC checks: (batch positions, last offsets, valid end, next offset)."""
    name = os.path.basename(path)
    positions: list = []
    lasts: list = []
    expect = base
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            chunk = os.pread(fd, min(SCAN_CHUNK, size - pos), pos)
            res = scan_batches(chunk, 0, len(chunk), expect, True)
            if res.count:
                positions.append(res.positions + pos)
                lasts.append(res.last_offsets)
                expect = int(res.next_offset)
                out.batches += res.count
            at = pos + res.valid_end
            if res.error is None:
                pos = at
                continue
            # Stopped: a batch running past this chunk (read it whole), a batch
            # cut off at the end of the file, or damage.
            head = os.pread(fd, LOG_OVERHEAD, at)
            length = struct.unpack_from(">i", head, 8)[0] if len(head) == LOG_OVERHEAD else -1
            whole = LOG_OVERHEAD + length
            if length >= 49 and at + whole <= size and at + whole > pos + len(chunk):
                one = os.pread(fd, whole, at)
                res = scan_batches(one, 0, whole, expect, True)
                if res.count and res.error is None:
                    positions.append(res.positions + at)
                    lasts.append(res.last_offsets)
                    expect = int(res.next_offset)
                    out.batches += res.count
                    pos = at + whole
                    continue
                error = res.error
            elif length >= 49 and at + whole > size or len(head) < LOG_OVERHEAD:
                if tail_may_grow:
                    pos = at  # the writer is appending this batch now
                    break
                error = f"batch cut off: {size - at} of its {whole if length >= 49 else '?'} bytes are in the file"
            else:
                error = res.error
            out.damage.append(Damage(topic, index, name, at, expect, error))
            pos = at
            break
        out.bytes += pos
    finally:
        os.close(fd)
    pos_arr = np.concatenate(positions) if positions else np.empty(0, np.int64)
    last_arr = np.concatenate(lasts) if lasts else np.empty(0, np.int64)
    return pos_arr, last_arr, pos, expect


def _entries(path: str, width: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def _check_offset_index(path: str, base: int, positions, lasts, topic: str, index: int, out: CheckResult) -> None:
    """Each entry (relative offset, position) names a batch starting at that
    position whose last offset is base + relative offset; entries increase."""
    data = _entries(path, 8)
    name = os.path.basename(path)
    prev_pos = -1
    for slot in range(len(data) // 8):
        rel, pos = _OFFSET_ENTRY.unpack_from(data, slot * 8)
        if slot and rel == 0 and pos == 0:
            break  # the preallocated tail of an index that was not trimmed
        out.index_entries += 1
        offset = base + rel
        i = int(np.searchsorted(positions, pos))
        if i >= len(positions) or int(positions[i]) != pos:
            if slot == 0 and rel == 0 and pos == 0 and not len(positions):
                break  # an empty segment's zeroed index
            out.damage.append(Damage(topic, index, name, slot * 8, offset,
                                     f"entry {slot} points at byte {pos} of the log, where no batch starts"))
            return
        if int(lasts[i]) != offset:
            out.damage.append(Damage(topic, index, name, slot * 8, offset, f"entry {slot} says offset {offset}, "
                                     f"the batch at byte {pos} ends at {int(lasts[i])}"))
            return
        if pos <= prev_pos:
            out.damage.append(Damage(topic, index, name, slot * 8, offset, f"entry {slot} does not increase"))
            return
        prev_pos = pos


def _check_time_index(path: str, base: int, next_offset: int, topic: str, index: int, out: CheckResult) -> None:
    """Each entry (timestamp, relative offset) names an offset of the segment;
    timestamps and offsets never decrease."""
    data = _entries(path, 12)
    name = os.path.basename(path)
    prev_ts = prev_off = -1
    for slot in range(len(data) // 12):
        ts, rel = _TIME_ENTRY.unpack_from(data, slot * 12)
        if slot and ts == 0 and rel == 0:
            break
        out.index_entries += 1
        offset = base + rel
        if not base <= offset < max(next_offset, base + 1):
            out.damage.append(Damage(topic, index, name, slot * 12, offset, f"entry {slot} names offset {offset}, "
                                     f"outside the segment [{base}, {next_offset})"))
            return
        if ts < prev_ts or offset < prev_off:
            out.damage.append(Damage(topic, index, name, slot * 12, offset, f"entry {slot} goes backwards"))
            return
        prev_ts, prev_off = ts, offset

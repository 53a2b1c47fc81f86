"""Compaction of closed segments (Kafka's LogCleaner), and the background thread
that runs it and retention (``retention.py``).

Both only ever touch CLOSED segments: the active one (the last) is never
deleted nor rewritten, so appends never wait for them beyond the moment the
partition's segment list is swapped.

Compaction (``cleanup.policy`` contains ``compact``)
----------------------------------------------------
Keeps, in closed segments, the newest record of each key; offsets never
change. The cleanable range ends before the active segment, and before the
first segment holding a record younger than ``min.compaction.lag.ms``.

1. The offset map: every keyed record of the dirty range (the segments after
   the last cleaning's end, ``cleaner-checkpoint``; all of them for
   ``Broker.compact``) as a 128-bit key hash (native ``record_keys``) ->
   its newest offset, in a native hash table (``KeyMap``) on the first 64
   bits; keys whose first 64 bits are equal but whose second are not (a
   collision) are marked, and every record of them is kept: a collision
   costs compaction, never data. Memory: 48 to 96 bytes per distinct key
   (Kafka bounds its map and cleans in several passes instead; here the map
   holds every key of the dirty range) plus one chunk's arrays.
2. Segments are grouped (as many consecutive ones as fit ``segment.bytes``
   and an int32 offset span) and each group is rewritten into one new segment:
   a record is dropped when a newer record has its key, when it has no key
   (Kafka refuses keyless appends to compacted topics; such records can only
   predate a switch to ``compact``, and Kafka's cleaner drops them too), or
   when it is a tombstone (null value) that is the newest of its key in a
   segment whose largest timestamp is more than ``delete.retention.ms`` old
   (the classic Kafka rule: consumers get that long to see a delete). The
   native ``BatchFilter`` rewrites the batches (compact.pyx): kept records
   keep their bytes, batches keep their offsets, emptied batches collapse into
   empty batches, so the new segment is offset-contiguous like any other.
3. The swap, crash-safe at every step (``complete_interrupted`` at load):

   ============================================  ==============================
   step                                          after a crash here, the loader
   ============================================  ==============================
   write B.log/.index/.timeindex.cleaned, fsync  deletes *.cleaned: old data
   rename the indexes, then the log, to .swap;   deletes index .swap without a
   fsync the dir (B.log.swap is the COMMIT)      log .swap: old data
   rename the group's other segments .deleted    completes the swap: new data
   rename the index .swaps, then B.log.swap,     completes the swap: new data
   over the old files; fsync the dir
   swap the partition's segment list (lock)      (nothing left on disk to do)
   unlink the .deleted files
   ============================================  ==============================

   "Completing a swap" deletes every ``.log`` (and its indexes) whose base
   offset lies within the swap's offsets, then renames the .swap files into
   place: old and new data never coexist, and never both go.

Readers in this process keep reading segments they hold (their descriptors
stay open until the last reference goes, ``tailing.retire``); tailers in
other processes see the change as described in ``umlog/log/tailing.py``.

Thread safety: one cleaning at a time per broker (``Cleaner.lock``); the
partition lock is held only to pick the segments and to swap the list.

Measured (``python bench/compaction.py --gib 1 [--keys N] [--codec C]``, dev
VM with 2 shared cores, data in the page cache, fsync of the output
included): 100k keys of 200-byte values, 7.5M records -> 100k: 1.2 s, 890
MB/s read; 5M keys (719 MB rewritten): 3.4 s, 313 MB/s; lz4 batches of
100k keys (69M records in 1 GiB): 10.7 s, 6.5M records/s (decompression).
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from .._native.core import BatchFilter, KeyMap, batch_info, crc32c, record_keys, scan_batches
from ..errors import InvalidRecordError
from .files import (
    CLEANED_SUFFIX,
    DELETED_SUFFIX,
    INDEX_SUFFIX,
    LOG_SUFFIX,
    SWAP_SUFFIX,
    TIMEINDEX_SUFFIX,
    fsync_dir,
    parse_segment_name,
    segment_name,
    write_all,
)
from .index import OffsetIndex, TimeIndex
from .retention import RetentionResult, enforce_retention
from .segment import LogSegment
from .tailing import premap, retire

__all__ = [
    "Cleaner",
    "CompactionResult",
    "compact_partition",
    "complete_interrupted",
    "check_keys",
    "dirty_ratio",
]

log = logging.getLogger("umlog.cleaner")

CHUNK = 16 << 20  # bytes of whole batches read per pread while cleaning
CHECKPOINT = "cleaner-checkpoint"
MIN_CLEANABLE_DIRTY_RATIO = 0.5  # Kafka's min.cleanable.dirty.ratio default
_CKPT = struct.Struct(">qI")
_SEGMENT_SUFFIXES = (LOG_SUFFIX, INDEX_SUFFIX, TIMEINDEX_SUFFIX)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- keyless appends to compacted topics ---------------------------------------------


def is_compacted(config) -> bool:
    return "compact" in config["cleanup.policy"]


def check_keys(topic: str, partition: int, keys=None, batches=None) -> None:
    """Refuse keyless records for a compacted topic (Kafka: INVALID_RECORD).

    ``keys``: the keys of an append (None: every key is null); ``batches``:
    producer-encoded batches (validated already).
    """
    bad = False
    if batches is not None:
        _, _, _, _, flags = record_keys(batches)
        bad = bool(np.any(flags & 1))
    elif keys is None:
        bad = True
    else:
        bad = any(k is None for k in keys)
    if bad:
        where = f" (partition {partition})" if partition >= 0 else ""
        raise InvalidRecordError(
            f"topic {topic!r}{where} is compacted (cleanup.policy=compact): every record needs a key"
        )


# -- crash recovery (called by the partition loader) -------------------------------


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _swap_end(path: str) -> int | None:
    """Offset after the last whole batch of a .swap file (None when empty)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos, nxt = 0, None
        while pos < size:
            chunk = os.pread(fd, min(CHUNK, size - pos), pos)
            res = scan_batches(chunk, 0, len(chunk), -1, False)
            if res.count:
                nxt = res.next_offset
            if res.valid_end == 0:
                if len(chunk) >= 12:
                    length = int.from_bytes(chunk[8:12], "big", signed=True)
                    if 49 <= length and pos + 12 + length <= size:
                        whole = os.pread(fd, 12 + length, pos)
                        res = scan_batches(whole, 0, len(whole), -1, False)
                        if res.count:
                            nxt = res.next_offset
                            pos += res.valid_end
                            continue
                break
            pos += res.valid_end
        return nxt
    finally:
        os.close(fd)


def complete_interrupted(directory: str) -> None:
    """Bring a partition directory back to one consistent set of segments.

    Run by the writer before it loads the segments. Completes committed
    compaction swaps (see the module docstring), then deletes what an
    interrupted operation left: ``*.cleaned``, ``*.deleted``, ``*.tmp``, index
    ``.swap`` files without their log, and index files without a ``.log``.
    """
    if not os.path.isdir(directory):
        return
    names = set(os.listdir(directory))
    changed = False
    for name in sorted(n for n in names if n.endswith(LOG_SUFFIX + SWAP_SUFFIX)):
        parsed = parse_segment_name(name[: -len(SWAP_SUFFIX)])
        if parsed is None:
            continue
        base = parsed[0]
        swap = os.path.join(directory, name)
        end = _swap_end(swap)
        if end is None:  # never written whole: cannot be a committed swap
            _unlink(swap)
            names.discard(name)
            continue
        log.warning("%s: completing an interrupted compaction swap of offsets [%d, %d)", directory, base, end)
        for other in sorted(names):
            p = parse_segment_name(other)
            if p is not None and base < p[0] < end:
                _unlink(os.path.join(directory, other))
                names.discard(other)
        for suffix in (INDEX_SUFFIX, TIMEINDEX_SUFFIX, LOG_SUFFIX):
            src = segment_name(base, suffix) + SWAP_SUFFIX
            if src in names:
                os.replace(os.path.join(directory, src), os.path.join(directory, segment_name(base, suffix)))
                names.discard(src)
                names.add(segment_name(base, suffix))
        changed = True
    logs = {p[0] for p in map(parse_segment_name, names) if p is not None and p[1] == LOG_SUFFIX}
    for name in sorted(names):
        p = parse_segment_name(name)
        leftover = name.endswith((".tmp", CLEANED_SUFFIX, SWAP_SUFFIX, DELETED_SUFFIX)) or (
            p is not None and p[1] != LOG_SUFFIX and p[0] not in logs
        )
        if leftover:
            _unlink(os.path.join(directory, name))
            changed = True
    if changed:
        fsync_dir(directory)


# -- compaction -------------------------------------------------------------------------


@dataclass
class CompactionResult:
    segments_in: int = 0
    segments_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    records_in: int = 0
    records_kept: int = 0
    seconds: float = 0.0
    groups: list = field(default_factory=list)


class _OffsetMap:
    """The offset map: KeyMap (native, compact.pyx), then its winners."""

    def __init__(self) -> None:
        self.keys = KeyMap()

    def add(self, offs, h1, h2, flags) -> None:
        self.keys.add(offs, h1, h2, flags)

    def finish(self) -> None:
        # The newest offset of every key without a collision, sorted: a
        # record of the mapped range is kept iff its offset is one of them.
        self.winners = self.keys.winners()
        self.collided_h1 = self.keys.collided()

    def __len__(self) -> int:
        return len(self.keys)


class _Mapped:
    """A closed segment's bytes, memory-mapped (closed segments never change;
    no copy per chunk), walked in chunks of whole batches."""

    def __init__(self, seg: LogSegment) -> None:
        self.size = seg.size
        self.map = b""
        if self.size:
            # MAP_POPULATE maps every page in one call instead of a fault per
            # page (``python bench/compaction.py`` without it: a first pass over
            # a fresh mapping was a third of the cleaning's time).
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            self.map = mmap.mmap(seg.fd, self.size, flags=flags, prot=mmap.PROT_READ)

    def chunks(self) -> Iterator[tuple[int, int]]:
        """(pos, end) of consecutive runs of whole batches."""
        pos, size, buf = 0, self.size, self.map
        while pos < size:
            res = scan_batches(buf, pos, min(size, pos + CHUNK), -1, False)
            if res.count:
                yield pos, res.valid_end  # positions are absolute
                pos = res.valid_end
                continue
            info = batch_info(buf, pos)  # one batch larger than a chunk
            if pos + info.size > size:
                raise OSError(f"short batch at position {pos} of a closed segment")
            yield pos, pos + info.size
            pos += info.size

    def close(self) -> None:
        if isinstance(self.map, mmap.mmap):
            self.map.close()


def _read_checkpoint(directory: str) -> int:
    try:
        with open(os.path.join(directory, CHECKPOINT), "rb") as f:
            raw = f.read(_CKPT.size)
        offset, crc = _CKPT.unpack(raw)
        if crc32c(raw[:8]) == crc and offset >= 0:
            return offset
    except (OSError, struct.error):
        pass
    return 0


def _write_checkpoint(directory: str, offset: int) -> None:
    """Not fsync'd: losing it only makes the next cleaning read more."""
    raw = struct.pack(">q", offset)
    raw += struct.pack(">I", crc32c(raw))
    path = os.path.join(directory, CHECKPOINT)
    with open(path + ".tmp", "wb") as f:
        f.write(raw)
    os.replace(path + ".tmp", path)


def _cleanable(p, now: int) -> tuple[list[LogSegment], int]:
    """Closed segments compaction may touch, and the offset where they end."""
    lag = p.config["min.compaction.lag.ms"]
    with p.lock:
        segs = list(p.segments)
    out = []
    for seg in segs[:-1]:
        if lag > 0 and seg.max_timestamp > now - lag:
            break
        out.append(seg)
    end = segs[len(out)].base_offset if segs else 0
    return out, end


def dirty_ratio(p, now_ms: int | None = None) -> float:
    """Bytes of cleanable segments not yet cleaned / all cleanable bytes."""
    segs, _ = _cleanable(p, _now_ms() if now_ms is None else now_ms)
    if not segs:
        return 0.0
    ckpt = _read_checkpoint(p.directory)
    total = sum(s.size for s in segs)
    dirty = sum(s.size for s in segs if s.base_offset >= ckpt)
    return dirty / total if total else 0.0


def _groups(segs: list[LogSegment], max_bytes: int) -> list[list[LogSegment]]:
    """Consecutive segments whose bytes fit one segment and offsets an int32 span."""
    groups: list[list[LogSegment]] = []
    cur: list[LogSegment] = []
    size = 0
    for seg in segs:
        if cur and (size + seg.size > max_bytes or seg.next_offset - 1 - cur[0].base_offset > 0x7FFFFFFF):
            groups.append(cur)
            cur, size = [], 0
        cur.append(seg)
        size += seg.size
    if cur:
        groups.append(cur)
    return groups


class _Aborted(Exception):
    pass


def compact_partition(
    p, now_ms: int | None = None, *, full: bool = False, stop: Callable[[], bool] | None = None
) -> CompactionResult:
    """Compact the cleanable closed segments of one partition (see the module docstring).

    :param full: build the map from every cleanable segment (``Broker.compact``)
        instead of the segments after the last cleaning's end.
    :param stop: polled between chunks; True aborts before the next commit point.
    """
    t0 = time.monotonic()
    out = CompactionResult()
    if not p.writable:
        return out
    now = _now_ms() if now_ms is None else now_ms
    segs, end = _cleanable(p, now)
    if not any(s.size for s in segs):
        return out
    ckpt = 0 if full else _read_checkpoint(p.directory)
    if ckpt and ckpt not in {s.base_offset for s in segs} | {end}:
        ckpt = 0  # the log changed under it (recovery, retention): trust nothing
    dirty = [s for s in segs if s.base_offset >= ckpt]
    if not dirty:
        return out
    omap = _OffsetMap()
    for seg in dirty:
        m = _Mapped(seg)
        try:
            for pos, end_pos in m.chunks():
                if stop is not None and stop():
                    raise _Aborted()
                _, offs, h1, h2, flags = record_keys(m.map, pos, end_pos)
                omap.add(offs, h1, h2, flags)
        finally:
            m.close()
    omap.finish()
    dirty_start = dirty[0].base_offset
    tomb_horizon = now - p.config["delete.retention.ms"]
    for group in _groups(segs, p.config["segment.bytes"]):
        if stop is not None and stop():
            break
        if not any(s.size for s in group):
            continue
        stats = _clean_group(p, group, omap, dirty_start, tomb_horizon, stop)
        out.segments_in += len(group)
        out.bytes_in += stats[0]
        out.bytes_out += stats[1]
        out.records_in += stats[2]
        out.records_kept += stats[3]
        out.segments_out += 1
        out.groups.append((group[0].base_offset, len(group), stats[0], stats[1]))
    else:
        _write_checkpoint(p.directory, end)
    out.seconds = time.monotonic() - t0
    log.info(
        "%s-%d: compacted %d segment(s) into %d: %d -> %d bytes, %d -> %d records, %.2f s",
        p.topic, p.index, out.segments_in, out.segments_out, out.bytes_in, out.bytes_out,
        out.records_in, out.records_kept, out.seconds,
    )
    return out


def _keep_mask(offs, h1, flags, omap: _OffsetMap, mapped: bool, drop_tombstones: bool):
    """Which records of a chunk stay (uint8 0/1), by the rules of the module docstring.

    ``mapped``: the chunk is in the range the map was built from, where every
    keyed record's key is in the map, so a record stays iff it is its key's
    newest (one sorted search over the winners: the chunk's offsets are
    sorted). Before that range, a record stays unless the map has its key.
    """
    keyless = (flags & 1) != 0
    if mapped:
        win = omap.winners
        if len(win):
            idx = np.searchsorted(win, offs)
            np.minimum(idx, len(win) - 1, out=idx)
            keep = win[idx] == offs
        else:
            keep = np.zeros(len(offs), bool)
        collided = np.isin(h1, omap.collided_h1) if len(omap.collided_h1) else None
        if collided is not None:
            keep |= collided
    else:
        keep = omap.keys.superseded(offs, h1).view(bool)
        np.logical_not(keep, out=keep)
        collided = np.isin(h1, omap.collided_h1) if len(omap.collided_h1) else None
    keep &= ~keyless
    if drop_tombstones:
        # Only a tombstone whose older records surely went (not a collision).
        tomb = (flags & 2) != 0
        keep &= ~(tomb if collided is None else tomb & ~collided)
    return keep.view(np.uint8)


class _Writer:
    """A new segment being written as ``<base>.{log,index,timeindex}.cleaned``."""

    def __init__(self, p, base: int) -> None:
        self.directory = p.directory
        self.base = base
        self.interval = p.config["index.interval.bytes"]
        max_index = p.config["segment.index.bytes"]
        self.paths = {s: os.path.join(p.directory, segment_name(base, s) + CLEANED_SUFFIX) for s in _SEGMENT_SUFFIXES}
        for path in self.paths.values():
            _unlink(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        self.fd = os.open(self.paths[LOG_SUFFIX], flags, 0o644)
        self.oi = OffsetIndex(self.paths[INDEX_SUFFIX], base, max_index, writable=True, active=True)
        self.ti = TimeIndex(self.paths[TIMEINDEX_SUFFIX], base, max_index, writable=True, active=True)
        self.position = 0
        self.since_index = 0
        self.max_ts = -1
        self.max_ts_offset = base - 1
        self.first_base: int | None = None
        self.next_offset = base

    def write(self, data: bytes) -> None:
        if not data:
            return
        res = scan_batches(data, 0, len(data), self.next_offset, False)
        if res.error is not None or res.valid_end != len(data):
            raise RuntimeError(f"cleaned batches are not contiguous at offset {self.next_offset}: {res.error}")
        if self.first_base is None:
            self.first_base = int(res.base_offsets[0])
        for i in range(res.count):
            pos = self.position + int(res.positions[i])
            ts = int(res.max_timestamps[i])
            last = int(res.last_offsets[i])
            if ts > self.max_ts:
                self.max_ts, self.max_ts_offset = ts, last
            if pos and self.since_index > self.interval and not self.oi.is_full:
                self.oi.append(last, pos)
                self.ti.maybe_append(self.max_ts, self.max_ts_offset)
                self.since_index = 0
            self.since_index += int(res.sizes[i])
        write_all(self.fd, data)
        self.position += len(data)
        self.next_offset = res.next_offset

    def finish(self, mtime_ns: int) -> None:
        """Trim and fsync all three files."""
        if self.max_ts >= 0:
            self.ti.maybe_append(self.max_ts, self.max_ts_offset, final=True)
        self.oi.trim_to_valid_size()
        self.ti.trim_to_valid_size()
        self.oi.close()
        self.ti.close()
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        os.utime(self.paths[LOG_SUFFIX], ns=(mtime_ns, mtime_ns))
        for s in (INDEX_SUFFIX, TIMEINDEX_SUFFIX):
            fd = os.open(self.paths[s], os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.oi.close()
        self.ti.close()
        for path in self.paths.values():
            _unlink(path)


def _clean_group(p, group: list[LogSegment], omap: _OffsetMap, dirty_start: int, tomb_horizon: int,
                 stop) -> tuple:
    base = group[0].base_offset
    end = group[-1].next_offset
    w = _Writer(p, base)
    filt = BatchFilter()
    try:
        for seg in group:
            drop_tombstones = seg.max_timestamp < tomb_horizon
            mapped = seg.base_offset >= dirty_start
            m = _Mapped(seg)
            try:
                for pos, end_pos in m.chunks():
                    if stop is not None and stop():
                        raise _Aborted()
                    nxt, offs, h1, h2, flags = record_keys(m.map, pos, end_pos)
                    keep = _keep_mask(offs, h1, flags, omap, mapped, drop_tombstones)
                    data, _ = filt.filter(m.map, pos, nxt, keep)
                    w.write(data)
            finally:
                m.close()
        w.write(filt.finish())
        if w.first_base != base or w.next_offset != end:
            raise RuntimeError(
                f"{p.topic}-{p.index}: cleaned segment covers [{w.first_base}, {w.next_offset}), "
                f"not [{base}, {end})"
            )
        w.finish(max(os.fstat(s.fd).st_mtime_ns for s in group))
    except BaseException:
        w.abort()
        raise
    bytes_in = sum(s.size for s in group)
    stats = (bytes_in, w.position, filt.records_in, filt.records_kept)
    if len(group) == 1 and filt.records_kept == filt.records_in and filt.batches_out == filt.batches_in:
        w.abort()  # nothing changed: keep the old file
        return (bytes_in, bytes_in, filt.records_in, filt.records_kept)
    _swap(p, group, base, end)
    return stats


def _swap(p, group: list[LogSegment], base: int, end: int) -> None:
    d = p.directory

    def path(b: int, suffix: str) -> str:
        return os.path.join(d, segment_name(b, suffix))

    # Commit: the indexes first, the log last (a log .swap means "complete me").
    for s in (INDEX_SUFFIX, TIMEINDEX_SUFFIX, LOG_SUFFIX):
        os.rename(path(base, s) + CLEANED_SUFFIX, path(base, s) + SWAP_SUFFIX)
    fsync_dir(d)
    premap(group)
    deleted = []
    for seg in group[1:]:
        for s in _SEGMENT_SUFFIXES:
            try:
                os.rename(path(seg.base_offset, s), path(seg.base_offset, s) + DELETED_SUFFIX)
                deleted.append(path(seg.base_offset, s) + DELETED_SUFFIX)
            except FileNotFoundError:
                pass
    for s in (INDEX_SUFFIX, TIMEINDEX_SUFFIX, LOG_SUFFIX):
        os.replace(path(base, s) + SWAP_SUFFIX, path(base, s))
    fsync_dir(d)
    new = LogSegment(d, base, active=False, **p._segment_kwargs())
    new.next_offset = end
    if new.time_index.entries:
        new.max_timestamp, new.offset_of_max_timestamp = new.time_index.last_entry
    with p.lock:
        segs = p.segments
        i = next((k for k, s in enumerate(segs) if s is group[0]), -1)
        if i < 0 or segs[i:i + len(group)] != group:
            # Cannot happen while the cleaner lock serialises retention and
            # compaction; keep the in-memory list whole rather than guess.
            new.close()
            raise RuntimeError(f"{p.topic}-{p.index}: segments changed during compaction")
        p.replace_segments(segs[:i] + [new] + segs[i + len(group):])
    retire(group)
    for path_ in deleted:
        _unlink(path_)


# -- the background cleaner ------------------------------------------------------------


class Cleaner:
    """Runs retention and compaction of a broker's topics, in a thread every
    ``interval_ms`` and on request (``run_retention``, ``compact``)."""

    def __init__(self, broker, interval_ms: int | None) -> None:
        self.broker = broker  # type of `broker` is `Broker`
        self.interval_ms = interval_ms
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if interval_ms:
            self._thread = threading.Thread(target=self._loop, name="umlog-cleaner", daemon=True)
            self._thread.start()

    def _stopping(self) -> bool:
        return self._stop.is_set()

    def _loop(self) -> None:
        interval = self.interval_ms / 1000
        while not self._stop.wait(interval):
            try:
                self.run_once()
            except Exception:
                log.exception("background cleaning failed")

    def run_once(self) -> None:
        """One round: retention everywhere, compaction where dirty enough."""
        for t in list(self.broker._topics.values()):
            for p in list(t.partitions):
                if self._stop.is_set():
                    return
                try:
                    with self.lock:
                        if "delete" in p.config["cleanup.policy"]:
                            enforce_retention(p)
                        if is_compacted(p.config) and dirty_ratio(p) >= MIN_CLEANABLE_DIRTY_RATIO:
                            compact_partition(p, stop=self._stopping)
                except _Aborted:
                    return
                except FileNotFoundError:
                    if t.name in self.broker._topics:  # else: deleted meanwhile
                        raise

    def run_retention(self, partitions, now_ms: int | None = None) -> list[RetentionResult]:
        with self.lock:
            return [enforce_retention(p, now_ms) for p in partitions]

    def compact(self, partitions, now_ms: int | None = None) -> list[CompactionResult]:
        with self.lock:
            return [compact_partition(p, now_ms, full=True) for p in partitions]

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self.lock:  # an explicit compact() in another thread finishes first
            pass

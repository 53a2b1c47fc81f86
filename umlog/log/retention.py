"""Retention (Kafka's, for ``cleanup.policy`` containing ``delete``): whole
closed segments deleted from the front of a partition, as Kafka does:

- by time: while a segment's largest timestamp (the file's mtime when it has
  none) is more than ``retention.ms`` old;
- by size: while the partition's size minus the segment's stays at or above
  ``retention.bytes`` (the active segment's bytes count, it is never deleted).

The longest of the two prefixes goes. ``start_offset`` moves to the first
offset left; a read below it raises ``OffsetOutOfRangeError``.

Deleting is crash-safe: the segment's files are renamed ``.deleted`` (the
directory fsync'd), then unlinked; a crash in between leaves names the loader
removes. Readers holding a deleted segment keep reading it (``tailing.retire``).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from .files import DELETED_SUFFIX, INDEX_SUFFIX, LOG_SUFFIX, TIMEINDEX_SUFFIX, fsync_dir, segment_name
from .segment import LogSegment
from .tailing import premap, retire

__all__ = ["RetentionResult", "enforce_retention"]

log = logging.getLogger("umlog.cleaner")

_SEGMENT_SUFFIXES = (LOG_SUFFIX, INDEX_SUFFIX, TIMEINDEX_SUFFIX)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@dataclass
class RetentionResult:
    segments: int = 0
    bytes: int = 0
    start_offset: int = 0


def _largest_timestamp(seg: LogSegment) -> int:
    if seg.max_timestamp >= 0:
        return seg.max_timestamp
    return os.fstat(seg.fd).st_mtime_ns // 1_000_000  # Kafka: lastModified when no timestamp


def _delete_files(directory: str, segments: list[LogSegment]) -> None:
    """Rename to .deleted (durably), then unlink: a crash in between leaves
    only names the loader deletes."""
    renamed = []
    for seg in segments:
        for suffix in _SEGMENT_SUFFIXES:
            src = os.path.join(directory, segment_name(seg.base_offset, suffix))
            try:
                os.rename(src, src + DELETED_SUFFIX)
                renamed.append(src + DELETED_SUFFIX)
            except FileNotFoundError:
                pass
    if renamed:
        fsync_dir(directory)
    for path in renamed:
        _unlink(path)


def enforce_retention(p, now_ms: int | None = None) -> RetentionResult:
    """Delete the closed segments retention.ms / retention.bytes let go."""
    cfg = p.config
    out = RetentionResult(start_offset=p.start_offset)
    if "delete" not in cfg["cleanup.policy"] or not p.writable:
        return out
    if p.tier is not None and (p.remote_segments or cfg["remote.storage.enable"]):
        # Tiered: over the remote and the local segments as one log (umlog/log/tiered.py).
        return p.tier.enforce_retention(p, now_ms)
    ms, max_bytes = cfg["retention.ms"], cfg["retention.bytes"]
    if ms < 0 and max_bytes < 0:
        return out
    now = _now_ms() if now_ms is None else now_ms
    with p.lock:
        segs = p.segments
        closed = segs[:-1]
        by_time = 0
        if ms >= 0:
            for seg in closed:
                if now - _largest_timestamp(seg) <= ms:
                    break
                by_time += 1
        by_size = 0
        if max_bytes >= 0:
            diff = sum(s.size for s in segs) - max_bytes
            for seg in closed:
                if diff - seg.size < 0:
                    break
                diff -= seg.size
                by_size += 1
        n = max(by_time, by_size)
        if n == 0:
            return out
        doomed = segs[:n]
        premap(doomed)
        p.replace_segments(segs[n:])
    out.segments = n
    out.bytes = sum(s.size for s in doomed)
    out.start_offset = p.start_offset
    retire(doomed)
    _delete_files(p.directory, doomed)
    log.info("%s-%d: retention deleted %d segment(s), %d bytes; start offset now %d",
             p.topic, p.index, n, out.bytes, out.start_offset)
    return out

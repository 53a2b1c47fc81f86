"""Opening a partition directory (Kafka's LogLoader): which segments there are,
what is trusted, and the recovery of a torn tail.

* After a clean shutdown (``DATA/.clean``) every segment is trusted: closed
  segments need no scan at all, the active one a scan from its last index entry.
* After an unclean stop the *recovery point* (``RecoveryPoint``) says where the
  last fdatasync ended: segments before it are trusted as above, the rest is
  validated batch by batch (length, magic, CRC, offset contiguity) and cut at the
  first bad batch, index entries rebuilt after it. A hole in a closed segment
  keeps only the valid prefix (later segments are deleted), so offsets stay dense.
* A read-only opener (a tailer in another process) never truncates: it stops
  before a torn or unfinished batch.

Leftovers of an interrupted compaction or deletion are settled first
(``cleaner.complete_interrupted``), or, read-only, waited for.
"""

from __future__ import annotations

import os
import struct

from .._native.core import crc32c
from ..errors import CorruptBatchError, DecodeError
from . import cleaner, tailing
from .files import LOG_SUFFIX, parse_segment_name
from .segment import LogSegment

__all__ = ["RecoveryPoint", "load_segments"]


class RecoveryPoint:
    """``recovery-point``: the (segment base offset, position) that the last
    fdatasync covered, so an unclean restart validates only what came after.

    Layout (big-endian, 20 bytes)::

        base_offset i64 | position i64 | crc32c u32 (of the first 16 bytes)

    Written after an fdatasync with one pwrite and never fsync'd itself: if a
    crash loses or tears it, the CRC fails and recovery starts from (0, 0),
    which is only slower.
    """

    NAME = "recovery-point"
    _LAYOUT = struct.Struct(">qqI")

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, self.NAME)
        self._fd = -1

    def read(self) -> tuple[int, int]:
        """Where the last fdatasync ended; (0, 0), trusting nothing, if unknown."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read(self._LAYOUT.size)
            base, pos, crc = self._LAYOUT.unpack(raw)
            if crc32c(raw[:16]) == crc and base >= 0 and pos >= 0:
                return base, pos
        except (OSError, struct.error):
            pass
        return 0, 0

    def write(self, base: int, position: int) -> None:
        raw = struct.pack(">qq", base, position)
        raw += struct.pack(">I", crc32c(raw))
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        os.pwrite(self._fd, raw, 0)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def load_segments(directory: str, writable: bool, clean: bool, segment_kwargs: dict,
                  recovery_point: RecoveryPoint) -> tuple[list[LogSegment], int]:
    """Open every segment of a partition directory: (segments, bytes recovery
    cut off). A writable partition always gets an active segment."""
    if writable:
        # Leftovers of an interrupted compaction or deletion: a committed
        # compaction swap is completed, everything else removed.
        cleaner.complete_interrupted(directory)
    else:
        tailing.wait_for_swaps(directory)
    bases = []
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            parsed = parse_segment_name(name)
            if parsed and parsed[1] == LOG_SUFFIX:
                bases.append(parsed[0])
    bases.sort()
    kw = segment_kwargs
    rp_base, rp_pos = recovery_point.read() if not clean else (0, 0)
    segments: list[LogSegment] = []
    recovered = 0
    for i, base in enumerate(bases):
        last = i == len(bases) - 1
        seg = LogSegment(directory, base, active=last, **kw)
        segments.append(seg)
        if not writable:
            if last:
                _load_readonly(seg)
            else:
                _load_closed(seg, bases[i + 1])
        elif clean or base < rp_base:
            # Known durable: closed segments need no scan at all, the
            # active one a scan from its last index entry.
            if last:
                recovered += seg.load(True)
            else:
                _load_closed(seg, bases[i + 1])
        else:
            # Written after the last recorded fdatasync: validate.
            cut = seg.recover(rp_pos if base == rp_base else 0)
            recovered += cut
            if not last and (cut or seg.next_offset != bases[i + 1]):
                # A hole in the middle: keep the valid prefix only (as
                # Kafka does), so offsets stay dense.
                for later in bases[i + 1:]:
                    doomed = LogSegment(directory, later, active=False, **kw)
                    recovered += doomed.size
                    doomed.delete()
                seg.offset_index.resize_for_append()
                seg.time_index.resize_for_append()
                seg.active = True
                break
    if not segments and writable:
        segments.append(LogSegment(directory, 0, active=True, create=True, **kw))
    return segments, recovered


def _load_closed(seg: LogSegment, next_base: int) -> None:
    seg.next_offset = next_base
    if seg.time_index.entries:
        seg.max_timestamp, seg.offset_of_max_timestamp = seg.time_index.last_entry


def _load_readonly(seg: LogSegment) -> None:
    """Tailers never truncate: they stop before a torn or unfinished batch."""
    try:
        seg._scan_from_index(check_crc=False, rebuild=False)
    except (CorruptBatchError, DecodeError) as e:
        pos = getattr(e, "position", -1)
        if pos >= 0:
            seg.size = pos

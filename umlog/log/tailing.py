"""Readers that keep up with a log: ``read(follow=True)`` and read-only tailers.

Theory of operation
-------------------
Following (``Partition.read(offset, follow=True, timeout=...)``): the reader
delivers what is there, then waits until ``end_offset`` moves past what it
has read, and goes on. ``timeout`` is an idle timeout, as the console
consumer's ``--timeout-ms``: the iteration ends once no record arrived for
that many seconds (None: never). A follower stops when its broker is closed.

- In the writer's process a follower waits on the partition's condition,
  notified when a batch reaches the segment (``_seal``, ``append_many``,
  ``append_batches``). Records appended one at a time through the native
  ``Topic.append`` path sit in the open batch and notify nobody (that path has
  no Python frame to do it): followers look at ``end_offset`` at least every
  ``FOLLOW_TICK_S`` and seal the open batch themselves when reading.
- A read-only opener (another process) polls ``refresh()`` with a backoff
  from ``POLL_MIN_S`` to ``POLL_MAX_S``: a directory listing and an fstat of
  the tail, a few tens of microseconds.

Tailers (``refresh``) see the directory change under them: the writer rolls
(new segment files), retention deletes segments from the front (renamed to
``.deleted``, then unlinked), and compaction replaces segments by a new file
under an existing base offset, deleting the others it merged
(``umlog/log/cleaner.py``). A tailer keeps reading every segment it has open
through its own file descriptor (a deleted or replaced file stays readable
until closed), and applies a change of the segment list only when

- two listings in a row agree (a listing taken while the writer renames can
  mix old and new names), and
- no ``*.log.swap`` is present (a compaction between its commit point and its
  last rename: the old segment list is still whole, the new one is not yet).

A segment whose inode changed was replaced by compaction: it is reopened. The
tail is scanned incrementally from where the previous scan stopped (bytes
below a scanned, valid end never change), and stops before a batch the
writer has not finished.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Iterator

from .._native.core import scan_batches
from .files import LOG_SUFFIX, parse_segment_name
from .segment import SCAN_CHUNK, LogSegment

__all__ = [
    "follow",
    "wait_for_data",
    "refresh",
    "retire",
    "premap",
    "wait_for_swaps",
    "FOLLOW_TICK_S",
    "POLL_MIN_S",
    "POLL_MAX_S",
]

# Longest wait of an in-process follower between two looks at end_offset
# (records appended through the native per-record path notify nobody).
FOLLOW_TICK_S = 0.01
# Read-only tailers poll refresh() with this backoff.
POLL_MIN_S = 0.001
POLL_MAX_S = 0.05
# Listings compared before a change of the segment list is applied.
_LISTING_TRIES = 4



def _closed(p) -> bool:
    segs = p.segments
    return bool(segs) and segs[-1].fd < 0


def wait_for_data(p, offset: int, deadline: float | None) -> bool:
    """Wait until ``p.end_offset > offset``; False at ``deadline`` (monotonic
    seconds, None: never) or when the partition is closed."""
    if not p.writable:
        sleep = POLL_MIN_S
        while True:
            p.refresh()
            if p.end_offset > offset:
                return True
            if _closed(p):
                return False
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            time.sleep(sleep if deadline is None else min(sleep, deadline - now))
            sleep = min(sleep * 2, POLL_MAX_S)
    cond = p._data_cond
    while True:
        if p.end_offset > offset:
            return True
        if _closed(p):
            return False
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return False
        wait = FOLLOW_TICK_S if deadline is None else min(FOLLOW_TICK_S, deadline - now)
        with cond:
            # The writer moves end_offset before it looks at _followers, so
            # a follower that counted itself in after that look sees the new
            # end_offset here: no lost wake-up.
            p._followers += 1
            try:
                if p.end_offset > offset:
                    return True
                cond.wait(wait)
            finally:
                p._followers -= 1


def follow(p, offset: int, remaining: int, timeout: float | None) -> Iterator:
    """The generator behind ``Partition.read(..., follow=True)``."""
    idle = None if timeout is None else max(0.0, float(timeout))
    deadline = None if idle is None else time.monotonic() + idle
    while True:
        c = p.cursor(offset)
        # Where this pass ends: the end of what the segments hold, which can
        # be less than end_offset (records in the open batch, or in a batch
        # another thread is writing). Waiting resumes there, so nothing
        # between is skipped; control batches and compacted-away offsets
        # below it are not waited for again.
        progress = [offset]
        got = False
        for r in p._read(c, remaining, progress):
            yield r
            got = True
            offset = r.offset + 1
            if remaining > 0:
                remaining -= 1
                if remaining == 0:
                    return
        offset = max(offset, progress[0])
        if got and idle is not None:
            deadline = time.monotonic() + idle
        if not wait_for_data(p, offset, deadline):
            return


# -- read-only tailers ---------------------------------------------------------------


def retire(segments) -> None:
    """Drop segments from use without closing them under a reader's feet.

    A reader (a ``read`` generator, a fetch) may hold a segment it took from
    the list before the list changed, and go on reading it through its file
    descriptor. So the descriptor is closed when the last reference to the
    LogSegment goes away, never by number while someone may still use it
    (a number closed early could be reused by another file and read as this
    one). The index mappings close with their objects.
    """
    for seg in segments:
        fd = seg.fd
        if fd >= 0 and not getattr(seg, "_retired", False):
            seg._retired = True
            weakref.finalize(seg, _close_fd, fd)


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def premap(segments) -> None:
    """Map the indexes of segments about to be renamed or deleted.

    A closed segment's index is mapped lazily BY PATH (``_Index._ensure_mapped``):
    once the file is renamed away or replaced, a late mapping would read the
    wrong file. Mapped now, the old inode stays readable for old readers.
    """
    for seg in segments:
        for idx in (seg.offset_index, seg.time_index):
            if idx.entries:
                idx._ensure_mapped()


def _inode(seg) -> int:
    ino = getattr(seg, "_inode", None)
    if ino is None:
        ino = seg._inode = os.fstat(seg.fd).st_ino
    return ino


def _listing(directory: str) -> tuple[dict[int, int], bool]:
    """{base offset: inode} of the .log files, and whether a swap is in progress."""
    logs: dict[int, int] = {}
    swapping = False
    try:
        with os.scandir(directory) as it:
            for e in it:
                name = e.name
                parsed = parse_segment_name(name)
                if parsed is not None:
                    if parsed[1] == LOG_SUFFIX:
                        logs[parsed[0]] = e.inode()
                elif name.endswith(".log.swap"):
                    swapping = True
    except FileNotFoundError:
        pass
    return logs, swapping


def wait_for_swaps(directory: str, timeout: float = 5.0) -> None:
    """Read-only openers: give a compaction swap in progress (a ``*.log.swap``)
    a moment to finish, so the first listing is whole. A writer that died
    mid-swap leaves it for its next start to complete; the opener then goes
    on with what the listing shows."""
    deadline = time.monotonic() + timeout
    while _listing(directory)[1] and time.monotonic() < deadline:
        time.sleep(0.005)


def stable_listing(directory: str) -> tuple[dict[int, int], bool] | None:
    """A listing that two reads in a row agree on, or None if the writer kept
    changing the directory."""
    prev = _listing(directory)
    for _ in range(_LISTING_TRIES):
        cur = _listing(directory)
        if cur == prev:
            return cur
        prev = cur
    return None


def refresh(p) -> None:
    """``Partition.refresh`` for read-only openers (see the module docstring)."""
    segs = p.segments
    known = {s.base_offset: s for s in segs}
    tail = segs[-1] if segs else None
    listing, swapping = _listing(p.directory)
    changed = set(listing) != set(known) or any(
        _inode(s) != listing.get(b, -1) for b, s in known.items()
    )
    if changed and not swapping:
        stable = stable_listing(p.directory)
        if stable is not None and not stable[1]:
            _apply_listing(p, stable[0])
    segs = p.segments
    if not segs:
        return
    tail = segs[-1]
    _scan_tail(tail)
    p._open.next_offset = tail.next_offset
    p.start_offset = p._first_offset()


def _apply_listing(p, listing: dict[int, int]) -> None:
    known = {s.base_offset: s for s in p.segments}
    old_tail = p.segments[-1] if p.segments else None
    kw = p._segment_kwargs()
    new: list[LogSegment] = []
    opened: list[LogSegment] = []
    for base in sorted(listing):
        seg = known.get(base)
        if seg is not None and _inode(seg) == listing[base]:
            new.append(seg)
            continue
        try:
            seg = LogSegment(p.directory, base, active=False, **kw)
            seg._inode = os.fstat(seg.fd).st_ino
            # The .log and its indexes must be of one generation: a swap that
            # began meanwhile renames the indexes first, then the log.
            same = seg._inode == listing[base] == os.stat(seg.log_path).st_ino
        except FileNotFoundError:
            same, seg = False, None
        if not same or os.path.exists(seg.log_path + ".swap"):
            retire(opened + ([seg] if seg is not None else []))
            return  # changed since the listing: try again next time
        opened.append(seg)
        new.append(seg)
    if not new:
        return
    for i, seg in enumerate(new[:-1]):
        if seg in opened or seg is old_tail:
            # A closed segment: its size is final (the writer rolled before
            # creating the next file) and its indexes are trimmed.
            seg.size = os.fstat(seg.fd).st_size
            seg.offset_index.refresh()
            seg.time_index.refresh()
            seg.next_offset = new[i + 1].base_offset
            if seg.time_index.entries:
                seg.max_timestamp, seg.offset_of_max_timestamp = seg.time_index.last_entry
    last = new[-1]
    if last in opened:
        last.size = 0  # scanned from the start by _scan_tail
        last.next_offset = last.base_offset
    gone = [s for s in p.segments if s not in new]
    p.replace_segments(new)
    retire(gone)


def _scan_tail(seg: LogSegment) -> None:
    """Extend the tail's known valid end over whole batches appended since."""
    size = os.fstat(seg.fd).st_size
    pos = seg.size
    if size > pos:
        seg.offset_index.refresh()
        seg.time_index.refresh()
    nxt = seg.next_offset
    while pos < size:
        chunk = os.pread(seg.fd, min(SCAN_CHUNK, size - pos), pos)
        if not chunk:
            break
        res = scan_batches(chunk, 0, len(chunk), -1, False)
        if res.count:
            nxt = res.next_offset
            top = int(res.max_timestamps.max())
            if top > seg.max_timestamp:
                seg.max_timestamp = top
        pos += res.valid_end
        if res.error is None or res.valid_end:
            continue  # whole chunk, or the next chunk starts with the batch it cut
        whole_size = seg.batch_size_at(pos, size)
        if whole_size is None:
            break  # the writer is mid-way through this batch
        # One batch larger than a chunk.
        whole = os.pread(seg.fd, whole_size, pos)
        res = scan_batches(whole, 0, len(whole), -1, False)
        if not res.count:
            break
        nxt = res.next_offset
        seg.max_timestamp = max(seg.max_timestamp, int(res.max_timestamps.max()))
        pos += res.valid_end
    seg.size = pos
    seg.next_offset = max(nxt, seg.base_offset)

"""A partition: an ordered list of segments and the offsets across them.

Theory of operation
-------------------
Offsets are dense and assigned here: ``end_offset`` is the next offset to
give out. Three ways in, all ending as whole batches written to the active
segment:

- ``append`` (one record) adds to an open native ``BatchBuilder``. The open
  batch is sealed (built, written) when it reaches ``batch_bytes``, when any
  reader, ``flush``, ``sync_through``, ``append_many`` or ``close`` needs it, when the
  broker's flusher finds it older than ``linger_ms``, and at once under
  ``fsync="always"``. Its records already have offsets; readers in this
  process seal it before reading, so they see every appended record.
- ``append_many`` encodes batches natively (one call per batch).
- ``append_batches`` takes batches already encoded by a producer: validated
  natively, offsets assigned in place, bytes stored as received.

Invariants: ``start_offset <= flushed_offset <= end_offset``; segments are
sorted by base offset and only the last is active; bytes below a segment's
``size`` never change (so reads need no lock).

Thread safety: every mutation holds ``self.lock``. Reads take it only to seal
the open batch; the bytes themselves are read with pread outside it.
Durability: with ``fsync="always"`` ``append*`` return after an fdatasync that
covers them (group commit: one fdatasync serves every thread that appended
before it started), except on the thread named by ``hooks.defer_thread``,
whose owner waits on ``sync_through`` itself (the server's event loop).

Durability has three words: ``seal`` writes the open batch to the segment
(page cache: readers see it, a crash of this process keeps it);
``sync_through(offset)`` returns once every offset below ``offset`` is on
disk (the group commit); ``flush()`` is ``sync_through`` of everything (the
public one; ``flush(durable=False)`` only seals). A segment's own ``sync`` is
the fdatasync of its file.

Opening the directory and recovering a torn tail is ``loader.py``'s; the
idempotent producers' state is ``producer_state.py``'s.
"""

from __future__ import annotations

import os
import threading
import time
from bisect import bisect_right
from collections.abc import Iterator

import numpy as np

from .._native.core import (
    BATCH_HEADER_SIZE,
    LOG_OVERHEAD,
    OpenBatch,
    any_delay_headers,
    batch_info,
    decode_records,
    encode_batch,
    has_delay_headers,
    recompress_batch,
    set_base_offset,
    set_log_append_time,
    validate_batch,
)
from ..config import TopicConfig
from ..errors import CorruptBatchError, DecodeError, OffsetOutOfRangeError, ReadOnlyError
from . import cleaner, tailing
from .files import fsync_dir
from .loader import RecoveryPoint, load_segments
from .producer_state import ProducerStateManager
from .segment import LogSegment

__all__ = ["Partition"]

READ_CHUNK = 1 << 20  # bytes per pread when decoding records for read()
APPEND_MANY_BATCH = 4096  # records per batch built by append_many
BATCH_BYTES = 64 << 10  # an open per-record batch is sealed at this size
RP_INTERVAL_S = 0.5  # least time between two recovery-point writes


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _base_offset(seg: LogSegment) -> int:
    return seg.base_offset


def _next_offset(seg) -> int:
    return seg.next_offset


class AppendHooks:
    """What the owner of a broker's partitions asks of their appends (one object,
    shared by every partition of a broker).

    * ``listeners``: callables ``fn(partition)`` run whenever records become
      readable in a partition, on the thread that appended (with the
      partition's lock possibly held: they must be quick and must not append
      or raise). The server's hub wakes its waiting readers this way.
    * ``delay``: the broker's ``DelayHook``: batches holding records with a
      delay header (``BatchInfo.delayed``, counted by validation) are split by
      it in ``append_batches``; ``append`` and ``append_many`` send such
      records that way.
    * ``defer_thread``: under ``fsync="always"`` appends made on this thread
      return before their fdatasync; the caller acknowledges them only after
      ``sync_through`` (the server's event loop, which must not block on a
      disk, does that in a worker thread). Appends from every other thread
      sync before they return, as ever.
    """

    __slots__ = ("listeners", "defer_thread", "delay")

    def __init__(self) -> None:
        self.listeners: list = []
        self.defer_thread: int | None = None
        # Delayed delivery (umlog/delivery/delay.py): takes records with a delay
        # header out of the batches append_batches stores. None: read-only.
        self.delay = None

    def sync_inline(self) -> bool:
        return self.defer_thread is None or threading.get_ident() != self.defer_thread


class ReadCursor:
    """A reader's place in a partition: the segment it reads, the byte position
    in it, and the next offset it expects. ``read``, ``read_table`` and the
    followers walk the log with it, so moving across segments (rolled,
    compacted, deleted by retention meanwhile) is done in one place.

    The reader decodes from ``seg`` at ``pos`` and advances ``pos`` and
    ``offset``; at the end of what it has of ``seg`` it calls ``move_on``.
    """

    __slots__ = ("p", "seg", "pos", "offset")

    def __init__(self, p: Partition, offset: int) -> None:
        self.p = p
        self.offset = offset
        self.seg = p._segment_at(offset)
        hint = p._read_hint
        if hint is not None and hint[0] == offset and hint[1] is self.seg:
            self.pos = hint[2]  # where the last read stopped: no index look-up, no scan
            return
        found = self.seg.find_position(offset)
        self.pos = found[0] if found else self.seg.size

    def move_on(self) -> bool | None:
        """At ``pos``, the end of what was read of ``seg``: True when the cursor moved
        to the next segment, False when ``seg`` grew meanwhile (read on), None at
        the end of the log. Raises OffsetOutOfRangeError if retention deleted
        what the reader was about to reach."""
        nxt, self.offset = self.p._next_segment(self.seg, self.offset, self.pos)
        if nxt is None:
            return None
        if nxt is self.seg:
            return False
        self.seg = nxt
        found = nxt.find_position(self.offset)
        self.pos = found[0] if found else nxt.size
        return True


class Partition:
    """One partition directory ``DATA/<topic>-<index>/``."""

    def __init__(
        self,
        directory: str,
        topic: str,
        index: int,
        config: TopicConfig,
        *,
        writable: bool = True,
        clean: bool = True,
        fsync: str = "never",
        hooks: AppendHooks | None = None,
    ) -> None:
        self.directory = directory
        self.hooks = hooks if hooks is not None else AppendHooks()
        self.topic = topic
        self.index = index
        self.config = config
        self.writable = writable
        self.fsync = fsync
        # The open per-record batch, the next offset and the lock guarding
        # both and the segments: one native object (umlog/_native/appender.pyx)
        # so that Topic.append can append under the lock in one native call.
        self._open = OpenBatch(config.codec, 0, BATCH_BYTES)
        self._read_hint: tuple | None = None  # (offset, segment, position) where the last read stopped
        self.lock = self._open
        self._sync_lock = threading.Lock()
        self._unwritten = None  # a sealed batch whose write failed: retried first
        self.segments: list[LogSegment] = []
        self._log_append_time = config.log_append_time
        self.recovered_bytes = 0
        self.recovery_point = RecoveryPoint(directory)
        self._rp_time = 0.0
        # read(follow=True) waits here; notified when a batch reaches the
        # segment (umlog/log/tailing.py).
        self._data_cond = threading.Condition(threading.Lock())
        self._followers = 0
        # Idempotent producers' state (producer_state.py): loaded on first use,
        # then kept current by append_batches and snapshotted at rolls and close.
        self._pstate: ProducerStateManager | None = None
        # Tiered storage (umlog/log/tiered.py): segments below the local ones,
        # read from the object store; ``tier`` is the broker's TieredStorage.
        self.remote_segments: list = []
        self.tier = None
        if writable:
            os.makedirs(directory, exist_ok=True)
        self._load(clean)
        # A file was created in the directory since its last fsync (a rolled
        # segment; sync_through fsyncs the directory). An empty active segment
        # may have just been created (a new partition, or one whose every
        # segment recovery dropped): its entry is synced with the first group
        # commit.
        self._dir_unsynced = writable and bool(self.segments) and self.segments[-1].size == 0
        self._open.next_offset = self.segments[-1].next_offset if self.segments else 0
        self.flushed_offset = self._open.next_offset
        self.start_offset = self._first_offset()

    def __repr__(self) -> str:
        return f"<Partition {self.topic}-{self.index} [{self.start_offset}, {self.end_offset})>"

    # -- loading -----------------------------------------------------------------

    def _segment_kwargs(self) -> dict:
        return dict(
            index_interval=self.config["index.interval.bytes"],
            max_index_bytes=self.config["segment.index.bytes"],
            writable=self.writable,
        )

    def _load(self, clean: bool) -> None:
        self.segments, self.recovered_bytes = load_segments(
            self.directory, self.writable, clean, self._segment_kwargs(), self.recovery_point)

    def _first_offset(self) -> int:
        if self.remote_segments:
            return self.remote_segments[0].start
        for seg in self.segments:
            if seg.size:
                try:
                    return seg.batch_info_at(0).base_offset
                except DecodeError:
                    return seg.base_offset
        return self._open.next_offset

    # -- offsets -----------------------------------------------------------------

    @property
    def end_offset(self) -> int:
        """The next offset to be assigned (records in the open batch included)."""
        return self._open.next_offset

    @property
    def active(self) -> LogSegment:
        return self.segments[-1]

    def size_in_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    # -- appending ---------------------------------------------------------------

    def _check_writable(self) -> None:
        if not self.writable:
            raise ReadOnlyError(f"partition {self.topic}-{self.index} is open read-only")

    def append(self, value, key=None, headers=None, timestamp=None) -> tuple[int, int]:
        """Add one record to the open batch; returns (offset, timestamp).

        ``Topic.append`` does the same in one native call (TopicAppender).
        """
        self._check_writable()
        if headers is not None and not isinstance(headers, (list, tuple)):
            headers = list(headers)  # a generator is read once
        if headers and self.hooks.delay is not None and has_delay_headers(headers):
            ts = _now_ms() if timestamp is None else timestamp
            first, _, _ = self.append_batches(encode_batch([value], [key], [list(headers)], [ts]))
            return first, ts
        if key is None and cleaner.is_compacted(self.config):
            cleaner.check_keys(self.topic, self.index, None)
        ob = self._open
        with ob:
            offset, ts = ob.add(value, key, headers, timestamp)
            if ob.full or self.fsync == "always":
                self._seal()
        self._wake()
        if self.fsync == "always" and self.hooks.sync_inline():
            self.sync_through(offset + 1)
        return offset, ts

    def _wake(self) -> None:
        """Wake followers (read(follow=True)) and the append listeners after
        records became readable."""
        if self._followers:
            with self._data_cond:
                self._data_cond.notify_all()
        for fn in self.hooks.listeners:
            fn(self)

    def _seal(self) -> None:
        """Write the open batch (lock held)."""
        self._write_unwritten()
        ob = self._open
        if not ob.count:
            return
        base = ob.base_offset
        # LogAppendTime topics: the broker's clock stamps the batch.
        data = ob.builder.build(base, log_append_time=self._log_append_time)
        info = batch_info(data, 0)
        try:
            self._maybe_roll(len(data), info.last_offset)
            self.active.append(data, info.last_offset, info.max_timestamp, info.last_offset)
            self._wake()
        except BaseException:
            # The records already have offsets that callers were given, so the
            # batch is kept and written before anything else once the disk
            # takes it again (the segment cut off any partial write).
            self._unwritten = (data, info)
            raise

    def _write_unwritten(self) -> None:
        if self._unwritten is not None:
            data, info = self._unwritten
            self._maybe_roll(len(data), info.last_offset)
            self.active.append(data, info.last_offset, info.max_timestamp, info.last_offset)
            self._unwritten = None

    def seal(self) -> None:
        """Write the open per-record batch, if any, to the segment (page cache)."""
        if self._open.count or self._unwritten is not None:
            with self._open:
                self._seal()

    def append_many(self, values, keys=None, headers=None, timestamps=None) -> range:
        """Append records as whole batches; returns their offsets (a range)."""
        self._check_writable()
        n = len(values)
        if n == 0:
            return range(self._open.next_offset, self._open.next_offset)
        for name, seq in (("keys", keys), ("headers", headers), ("timestamps", timestamps)):
            if seq is not None and len(seq) != n:
                raise ValueError(f"{name} has {len(seq)} items for {n} values")
        if headers is not None and self.hooks.delay is not None and any_delay_headers(headers):
            # Delayed records are taken out of the batches by append_batches
            # (umlog/delivery/delay.py); their offsets stay gaps in the range.
            now = _now_ms()
            data = b"".join(encode_batch(
                values[i:i + APPEND_MANY_BATCH], None if keys is None else keys[i:i + APPEND_MANY_BATCH],
                headers[i:i + APPEND_MANY_BATCH],
                None if timestamps is None else timestamps[i:i + APPEND_MANY_BATCH], now_ms=now,
                codec=self.config.codec) for i in range(0, n, APPEND_MANY_BATCH))
            first, last, _ = self.append_batches(data)
            return range(first, last + 1)
        if cleaner.is_compacted(self.config):
            cleaner.check_keys(self.topic, self.index, keys)
        codec = self.config.codec
        lat = self._log_append_time
        with self.lock:
            self._seal()
            first = self._open.next_offset
            base = first
            now = _now_ms()  # one clock read per call: timestamps and LogAppendTime
            for start in range(0, n, APPEND_MANY_BATCH):
                stop = min(n, start + APPEND_MANY_BATCH)
                whole = start == 0 and stop == n
                data = encode_batch(
                    values if whole else values[start:stop],
                    None if keys is None else (keys if whole else keys[start:stop]),
                    None if headers is None else (headers if whole else headers[start:stop]),
                    None if timestamps is None else (timestamps if whole else timestamps[start:stop]),
                    base_offset=base,
                    now_ms=now,
                    codec=codec,
                    log_append_time=lat,
                )
                last = base + (stop - start) - 1
                info = batch_info(data, 0)
                self._maybe_roll(len(data), last)
                self.active.append(data, last, info.max_timestamp, last)
                base = last + 1
                self._open.next_offset = base  # advanced only once the batch is written
            end = base
        self._wake()
        if self.fsync == "always" and self.hooks.sync_inline():
            self.sync_through(end)
        return range(first, end)

    @staticmethod
    def validate_batches(buf) -> tuple[memoryview, list]:
        """The one pass over producer-encoded batches: each is validated natively
        (length, magic, CRC, records) and described (offsets, producer id, epoch
        and sequence, timestamps). Returns (a writable byte view of ``buf``, one
        BatchInfo per batch) for ``append_batches``; raises CorruptBatchError
        (with ``.position``) at the first bad batch.

        Offsets are assigned in place: a writable buffer (the door hands us
        views of its receive buffer) is used as is, a read-only one copied.
        """
        data = memoryview(buf).cast("B")
        if data.readonly:
            data = memoryview(bytearray(data))
        total = len(data)
        infos = []
        pos = 0
        while pos < total:
            info = validate_batch(data, pos, total, True)
            infos.append(info)
            pos += info.size
        if not infos:
            raise CorruptBatchError("no record batch in the request", 0)
        return data, infos

    def append_batches(self, buf, infos: list | None = None) -> tuple[int, int, int]:
        """Store producer-encoded batches; returns (base offset, last offset, log append time or -1).

        Every batch is validated first (``validate_batches``; pass its view and
        infos to skip a second pass) and checked against max.message.bytes; one
        bad batch refuses the whole buffer and stores nothing. Offsets are
        assigned in place; bytes are otherwise stored exactly as received,
        except that records with a delay header are taken out of their batch
        (offset span and producer fields kept: their offsets become gaps) and
        go to ``__delayed`` (``hooks.delay``, umlog/delivery/delay.py).
        """
        self._check_writable()
        if infos is None:
            data, infos = self.validate_batches(buf)
        else:
            data = buf
        target = self.config.stored_codec
        if target is not None and any(i.codec != target for i in infos):
            # compression.type names a codec: batches in another are rewritten
            # in it, one native call per batch (records are not decoded), then
            # checked again like any batch.
            data, infos = self.validate_batches(b"".join(
                recompress_batch(data, i.position, target) if i.codec != target
                else bytes(data[i.position:i.position + i.size]) for i in infos))
        total = len(data)
        max_bytes = self.config["max.message.bytes"]
        if max_bytes:
            for info in infos:
                if info.size > max_bytes + LOG_OVERHEAD:
                    raise CorruptBatchError(f"batch of {info.size} bytes at position {info.position} exceeds "
                                            f"max.message.bytes={max_bytes}", info.position)
        if cleaner.is_compacted(self.config):
            cleaner.check_keys(self.topic, self.index, batches=data)
        splits = None
        delay = self.hooks.delay
        if delay is not None:
            for info in infos:
                if info.delayed:
                    # Records with a delay header leave the batch (their offsets
                    # become gaps) for __delayed (umlog/delivery/delay.py).
                    got = delay.split(self, data, infos)
                    if got is not None:
                        data, infos, splits = got
                        total = len(data)
                    break
        lat_ts = -1
        with self.lock:
            self._seal()
            first = self._open.next_offset
            base = first
            if self._log_append_time:
                lat_ts = _now_ms()
            lasts = np.empty(len(infos), dtype=np.int64)
            maxts = np.empty(len(infos), dtype=np.int64)
            positions = np.empty(len(infos), dtype=np.int64)
            sizes = np.empty(len(infos), dtype=np.int64)
            for i, info in enumerate(infos):
                set_base_offset(data, info.position, base)
                if lat_ts >= 0:
                    set_log_append_time(data, info.position, lat_ts)
                positions[i] = info.position
                sizes[i] = info.size
                lasts[i] = base + info.last_offset - info.base_offset
                maxts[i] = lat_ts if lat_ts >= 0 else info.max_timestamp
                base = int(lasts[i]) + 1
            # The intents first (umlog/delivery/delay.py): a crash before the
            # batch leaves intents whose claim is false, which are dropped.
            intents = delay.intend(self, data, infos, splits) if splits else None
            try:
                self._maybe_roll(total, base - 1)
                self.active.append_batches(data, positions, sizes, lasts, maxts)
            except BaseException:
                if intents:
                    delay.abort(intents)
                raise
            self._open.next_offset = base
            st = self._pstate
            if st is not None:
                for i, info in enumerate(infos):
                    st.update_batch(info, int(lasts[i]) - (info.last_offset - info.base_offset), lat_ts)
        self._wake()
        if self.fsync == "always" and self.hooks.sync_inline():
            self.sync_through(base)
        return first, base - 1, lat_ts

    def _maybe_roll(self, size: int, last_offset: int) -> None:
        """Roll before a batch that does not fit the active segment (lock held)."""
        seg = self.active
        if seg.size == 0:
            return
        cfg = self.config
        too_big = seg.size + size > cfg["segment.bytes"]
        too_old = seg.first_append_ms is not None and _now_ms() - seg.first_append_ms >= cfg["segment.ms"]
        index_full = seg.offset_index.is_full or seg.time_index.is_full
        overflow = last_offset - seg.base_offset > 0x7FFFFFFF
        if too_big or too_old or index_full or overflow:
            self._roll()

    def _roll(self) -> None:
        # Every step that can fail (fdatasync, creating the new segment's files:
        # EMFILE, ENOSPC) comes before the old segment is made inactive, so a
        # failed roll changes nothing and the next append simply tries again.
        # (Made inactive first, a failure left the old segment in place with
        # its indexes trimmed and unmapped: the next append wrote its batch and
        # then failed on the index, offsets not advanced.)
        old = self.active
        synced = self.fsync != "never"
        if synced:
            old.sync()
        new = LogSegment(self.directory, old.next_offset, active=True, create=True, **self._segment_kwargs())
        try:
            old.make_inactive(sync=False)
        except BaseException:
            new.delete()
            raise
        self.segments.append(new)
        # The new files' directory entries are durable only once the directory
        # is fsync'd: the next group commit does it before it acknowledges
        # anything written to them (one directory fsync per roll, not per batch).
        self._dir_unsynced = True
        if synced:
            self.recovery_point.write(new.base_offset, 0)
        if self._pstate is not None:
            # A failed snapshot costs only a longer replay after a crash.
            try:
                self._pstate.write_snapshot(new.base_offset, durable=synced)
            except OSError:
                pass

    def roll(self) -> None:
        """Seal the open batch and start a new segment (if the active one has data)."""
        self._check_writable()
        with self.lock:
            self._seal()
            if self.active.size:
                self._roll()

    # -- idempotent producers ------------------------------------------------------

    @property
    def producer_state(self) -> ProducerStateManager:
        """This partition's idempotent-producer state (``producer_state.py``),
        loaded on first use from the newest snapshot and the batches after it;
        call on the thread that appends (the server's loop), never under the lock."""
        st = self._pstate
        if st is None:
            self.seal()
            with self.lock:
                st = self._pstate
                if st is None:
                    st = ProducerStateManager(self.directory)
                    st.load(self._open.next_offset, self._replay_batch_headers)
                    self._pstate = st
        return st

    def _replay_batch_headers(self, from_offset: int):
        """(BatchInfos, log_append_time) of the stored batches from the one holding
        ``from_offset``: one header read per batch, no records decoded."""
        lat = self._log_append_time
        for seg in list(self.segments):
            if seg.next_offset <= from_offset or seg.size == 0:
                continue
            found = seg.find_position(max(from_offset, seg.base_offset))
            pos = found[0] if found else seg.size
            infos = []
            while pos + BATCH_HEADER_SIZE <= seg.size:
                info = seg.batch_info_at(pos)
                infos.append(info)
                pos += info.size
            yield infos, lat

    def reconfigure(self, config: TopicConfig) -> None:
        """Apply a topic's new config: records already in the open batch are
        written under the old one (codec, timestamp type), later ones under the new."""
        with self.lock:
            self._seal()
            self.config = config
            self._log_append_time = config.log_append_time
            self._open.set_codec(config.codec)

    def set_remote(self, segments: list) -> None:
        """Install the remote segments (tiered storage, sorted, all below the local
        ones) and move the start offset."""
        self.remote_segments = segments
        self.start_offset = self._first_offset()

    def replace_segments(self, segments: list[LogSegment]) -> None:
        """Install a new segment list (retention dropped a prefix, compaction swapped
        a group, a tailer reopened replaced files) and move the start offset.

        The caller holds whatever excludes concurrent changes of the list (the
        cleaner's lock; a read-only tailer is alone); the active segment of a
        writable partition is never replaced.
        """
        if self.writable and not segments:
            raise ValueError(f"{self.topic}-{self.index}: a writable partition keeps its active segment")
        self.segments = segments
        self.start_offset = self._first_offset()

    # -- durability ----------------------------------------------------------------

    def sync_through(self, offset: int) -> None:
        """Return once every offset < ``offset`` is durable (group commit)."""
        if self.flushed_offset >= offset:
            return
        with self._sync_lock:
            if self.flushed_offset >= offset:
                return  # another thread's fdatasync covered us
            with self.lock:
                self._seal()
                target = self._open.next_offset
                dir_unsynced, self._dir_unsynced = self._dir_unsynced, False
                # Segments rolled without a sync (fsync="never" rolls, then a
                # flush) come too.
                dirty = []
                for s in reversed(self.segments):
                    if s.synced_size == s.size and s is not self.active:
                        break
                    if s.synced_size < s.size:
                        dirty.append(s)
                dirty.reverse()
            try:
                for seg in dirty:
                    seg.sync()  # fdatasync: releases the GIL; appends continue meanwhile
                if dir_unsynced:
                    fsync_dir(self.directory)  # entries of segments created since the last one
            except BaseException:
                self._dir_unsynced = self._dir_unsynced or dir_unsynced
                raise
            self.flushed_offset = max(self.flushed_offset, target)
            # The recovery point only bounds how much a restart re-validates,
            # so it is recorded at most every RP_INTERVAL_S, not per sync
            # (one write less per group commit under fsync="always").
            now = time.monotonic()
            if dirty and now - self._rp_time >= RP_INTERVAL_S:
                self._rp_time = now
                seg = dirty[-1]
                self.recovery_point.write(seg.base_offset, seg.synced_size)

    def flush(self, durable: bool = True) -> None:
        """Make everything appended so far durable (``durable=False``: only write the
        open batch to the page cache)."""
        if not self.writable:
            return
        if durable:
            self.sync_through(self._open.next_offset)
        else:
            self.seal()

    def maybe_linger(self, linger_s: float) -> None:
        """Seal an open batch older than linger_s (the broker's flusher calls this)."""
        since = self._open.since
        if since and time.monotonic() - since >= linger_s:
            self.seal()

    # -- reading -------------------------------------------------------------------

    def _segment_at(self, offset: int) -> LogSegment:
        """The segment that holds ``offset`` (the first one below all).

        Retention and compaction replace ``self.segments`` by a new list
        (never in place), so one snapshot of it is always consistent.
        """
        segs = self.segments
        rem = self.remote_segments
        if rem and offset < segs[0].base_offset:
            i = bisect_right(rem, offset, key=_next_offset)  # tiered storage: below the local log
            if i < len(rem):
                return rem[i]
        i = bisect_right(segs, offset, key=_base_offset) - 1
        return segs[max(i, 0)]

    def _next_segment(self, seg: LogSegment, offset: int, pos: int) -> tuple[LogSegment | None, int]:
        """Where a reader at ``pos``, the end of what it has read of ``seg``,
        goes: (segment, offset) (``seg`` itself if it grew meanwhile), or
        (None, offset) at the end of the log.

        Found by offset, not by list position, as the list may have changed
        while ``seg`` was read: compaction may have replaced the next segments
        by one covering the same offsets. If retention deleted the segments a
        reader had not reached yet, the reader gets OffsetOutOfRangeError, as
        a Kafka fetch below the log start does; what it holds it finishes
        reading first (its descriptor stays open, tailing.retire).
        """
        self.seal()
        # next_offset before size: a segment's size grows before its
        # next_offset, so a next_offset past what was read shows up as growth.
        nxt_offset = seg.next_offset
        if seg.size > pos:
            return seg, offset
        offset = max(offset, nxt_offset)
        nxt = self._segment_at(offset)
        if nxt is seg:
            return None, offset
        if offset < self.start_offset:
            raise OffsetOutOfRangeError(
                f"offset {offset} of {self.topic}-{self.index} was deleted by retention while being read; "
                f"the log now starts at {self.start_offset}"
            )
        return nxt, offset

    def _check_range(self, offset: int) -> None:
        if offset < self.start_offset or offset > self._open.next_offset:
            raise OffsetOutOfRangeError(
                f"offset {offset} is out of range for {self.topic}-{self.index}: "
                f"[{self.start_offset}, {self._open.next_offset}]"
            )

    def refresh(self) -> None:
        """Read-only tailers: pick up what the writer appended, rolled, deleted
        or compacted since (umlog/log/tailing.py)."""
        if self.writable:
            return
        tailing.refresh(self)

    def read(self, offset: int | None = None, max_records: int | None = None, follow: bool = False,
             timeout: float | None = None) -> Iterator:
        """Records from ``offset`` (default: start_offset) on, in order.

        A generator: it reads 1 MiB of batches at a time and decodes them
        natively; records appended while it runs are included.

        :param follow: at the end, wait for new records instead of stopping
            (in this process: woken by appends; read-only: polling refresh).
        :param timeout: with ``follow``, stop after this many seconds without
            a new record (None: never; see umlog/log/tailing.py).
        :raises OffsetOutOfRangeError: offset below start_offset or past
            end_offset; also raised mid-iteration if retention deleted the
            records the reader was about to reach.
        """
        c = self.cursor(offset)
        remaining = -1 if max_records is None else max_records
        if follow:
            return tailing.follow(self, c.offset, remaining, timeout)
        return self._read(c, remaining)

    def cursor(self, offset: int | None = None) -> ReadCursor:
        """A reader's starting place at ``offset`` (default: start_offset): the open
        batch sealed, a tailer refreshed, the range checked (OffsetOutOfRangeError)."""
        if self._open.count:
            self.seal()
        if not self.writable:
            self.refresh()
        if self.tier is not None:
            self.tier.before_read(self, offset)
        if offset is None:
            offset = self.start_offset
        self._check_range(offset)
        return ReadCursor(self, offset)

    def read_list(self, offset: int, max_records: int) -> list:
        """Up to ``max_records`` records from ``offset`` on, as a list: what
        ``read`` gives, for a reader that takes them all at once (a Python step
        per chunk read, not per record)."""
        out: list = []
        # a few records need not cost a 1 MiB pread (and its CRCs): a reader
        # behind the end asks again and again for the next few
        chunk = min(READ_CHUNK, max(64 << 10, max_records << 9))
        for records in self._read_chunks(self.cursor(offset), max_records, chunk=chunk):
            out += records
        return out

    def _read(self, c: ReadCursor, remaining: int, progress: list | None = None) -> Iterator:
        """The generator behind read(), from cursor ``c``; at the end of the log it
        stores in ``progress[0]`` the offset it read up to (followers resume there)."""
        for records in self._read_chunks(c, remaining, progress):
            yield from records

    def _read_chunks(self, c: ReadCursor, remaining: int, progress: list | None = None,
                     chunk: int = READ_CHUNK) -> Iterator[list]:
        """``_read``'s records, a list per chunk of about ``chunk`` bytes decoded
        (a batch bigger than that is read whole)."""
        topic, index = self.topic, self.index
        while remaining != 0:
            if c.pos >= c.seg.size:
                if c.move_on() is None:
                    if progress is not None:
                        progress[0] = c.offset
                    return
                continue
            seg, pos = c.seg, c.pos
            data = seg.read(pos, chunk)
            try:
                # CRCs checked: bytes that rotted on disk after they were
                # written are refused, never handed out as records.
                records, used = decode_records(data, 0, len(data), c.offset, remaining, topic, index, True)
                if used == 0 and not records:
                    info = batch_info(data, 0) if len(data) >= BATCH_HEADER_SIZE else seg.batch_info_at(pos)
                    if info.size <= len(data):
                        return  # cannot happen for a valid log: nothing decodable
                    data = seg.read(pos, info.size)
                    records, used = decode_records(data, 0, len(data), c.offset, remaining, topic, index, True)
                    if used == 0 and not records:
                        return  # the writer is mid-way through this batch (tailers)
            except CorruptBatchError as e:
                raise seg.corrupt(e, pos) from None
            c.pos += used
            if records:
                c.offset = records[-1].offset + 1
                if self.writable:
                    # the next read of a tailing reader (the MQTT fan-out, a
                    # session catching up) starts here: ReadCursor takes it
                    self._read_hint = (c.offset, c.seg, c.pos)
                if remaining > 0:
                    remaining -= len(records)
                yield records

    def read_batches(self, offset: int, max_bytes: int) -> list:
        """Stored batch bytes from the batch holding ``offset``: whole batches,
        at least one, else up to max_bytes, from one segment (as Kafka's fetch
        does); ``[]`` at the end of the log."""
        if self._open.count:
            self.seal()
        if not self.writable:
            self.refresh()
        if self.tier is not None:
            self.tier.before_read(self, offset)
        self._check_range(offset)
        segs = self.segments  # one snapshot (see _segment_at)
        rem = self.remote_segments
        if rem and offset < segs[0].base_offset:  # tiered storage: from the object store
            for seg in rem[bisect_right(rem, offset, key=_next_offset):]:
                found = seg.find_position(offset)
                if found is not None:
                    return [seg.batches_from(found[0], max_bytes)]
        for seg in segs[max(bisect_right(segs, offset, key=_base_offset) - 1, 0):]:
            found = seg.find_position(offset)
            if found is not None:
                return [seg.batches_from(found[0], max_bytes)]
        return []

    def offset_for_time(self, timestamp: int) -> int | None:
        """The first offset whose record timestamp >= timestamp, or None."""
        if self._open.count:
            self.seal()
        local_base = self.segments[0].base_offset if self.segments else 0
        for seg in [s for s in self.remote_segments if s.base_offset < local_base] + self.segments:
            if seg.max_timestamp < timestamp and seg is not self.active:
                continue
            found = seg.timestamp_lookup(timestamp)
            if found is None:
                continue
            position, _ = found
            info = seg.batch_info_at(position)
            records, _ = decode_records(seg.read(position, info.size), 0, info.size, self.start_offset, -1)
            for r in records:
                if r.timestamp >= timestamp:
                    return r.offset
        return None

    def read_table(self, offset: int | None = None, max_records: int | None = None):
        """Records from ``offset`` (default: start_offset) as a ``pyarrow.Table``
        (offset, timestamp, key, value, headers), decoded natively straight into
        Arrow buffers (umlog/log/table.py)."""
        from .table import read_table

        return read_table(self, offset, max_records)

    # -- life cycle ---------------------------------------------------------------

    def close(self) -> None:
        if self.writable and self.segments:
            with self.lock:
                self._seal()
            self.flush()
            self.recovery_point.write(self.active.base_offset, self.active.size)
            if self._pstate is not None:
                self._pstate.write_snapshot(self.end_offset, durable=self.fsync != "never")
        for seg in self.segments:
            seg.close()
        self.recovery_point.close()

    def delete(self) -> None:
        for seg in self.segments:
            seg.delete()
        self.segments = []
        try:
            os.rmdir(self.directory)
        except OSError:
            pass


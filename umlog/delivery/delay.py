"""Delayed delivery: a record with header ``umlog-deliver-at`` (epoch ms) or
``umlog-delay-ms`` is invisible to every consumer until it is due, then appears
on its topic once.

Theory of operation
-------------------
**Where records are caught.** Every append path of the engine ends in
``Partition.append_batches`` (the Kafka door's produce, and the embedded
``append``/``append_many`` of a record with a delay header, which take that
path), so the hook is there and every door gets it. Finding delay headers
costs next to nothing: ``validate_batch`` already walks every record of every
batch natively (decompressed when compressed) to check it, and in that walk it
looks again at the headers of records that have any, counting those with a
delay key (``BatchInfo.delayed``). A batch with none, the common case, goes on
as before: one integer tested per batch. The embedded per-record ``append``
tests its headers natively (``TopicAppender``) only when it has some.

**Splitting a batch.** A batch holding delayed records is rewritten without
them (``drop_records``): its offset span (``lastOffsetDelta``), producer id,
epoch and base sequence are kept, so the delayed records' offsets become gaps
in the target partition, exactly as after compaction (every reader, Fetch and
the Kafka clients already step over gaps and over empty batches, which
compaction writes too). A batch of delayed records only is stored as an empty
batch spanning its offsets. So an idempotent producer's sequence state is the
same as if the batch had been stored whole: a retry of it is a duplicate for
the produce handler and is answered with the original offsets, never split
again, never scheduled twice. The producer is answered with the batch's base
offset; a delayed record's own offset stays a gap, and it appears later at a
new offset.

**Intents.** The delayed records go to the internal topic ``__delayed`` (one
partition, ``LogAppendTime``, deleted after ``RETENTION_MS``, not compacted):
one *intent* record per delayed record, with the original key, value and
headers (the delay headers removed) and a last header ``umlog-delayed`` =
``"<due ms> <partition> <batch offset> <batch crc> <timestamp> <topic>"``: the
target, and the claim "the batch stored at <batch offset> of the target with
CRC <batch crc> is the one these records were taken from". Intents are written
under the target partition's lock, *before* the target batch (and, under
``fsync="always"``, synced before it, even on the server's loop): a crash in
between leaves intents whose target batch never got there. Those are orphans
(the producer was not answered and will send the batch again): the claim is
false, and the scheduler drops them. A failed target write marks its intents
with an ``abort`` record; after a crash, the first pass on open checks every
intent not yet taken in against its target (nothing has been appended since
the open) and writes an ``abort`` for each orphan, durably, before any append.
So a decision, once made, is in the log and never made again differently.

**The index (state on disk, memory bounded).** Pending intents are indexed by
(due, offset) in an SQLite B-tree, ``DATA/meta/delayed.sqlite3`` (WAL mode):
ordered by due time, on disk, a few MB of page cache whatever the count. The
index is derived state: it records the ``__delayed`` offset it has taken in up
to (``intake``) in the same transaction as the rows, so after any crash it
takes in again from there (``__delayed`` is synced first unless fsync is
never), and it could be rebuilt from ``__delayed`` alone.

**Deciding what is due, exactly once.** The scheduler thread takes the rows
due by now, in (due, offset) order, and appends a ``due`` record listing them
to ``__delayed``; taking that record in deletes the rows. The ``due`` records
are the delivery order, durable and total: a record whose due time is already
past when it arrives is simply in the next ``due`` record (due times equal:
arrival order, i.e. ``__delayed`` offset). A crash after a ``due`` record is
written but before its rows are deleted cannot mark them twice: the index takes
in ``__delayed`` in order, so the ``due`` record deletes them before anything is
released again.

**Delivering exactly once.** ``ForwardStream`` (``forward.py``) reads
``__delayed`` from its checkpoint: each ``due`` record derives the records it
lists (read back from their intents) in its order, and each goes to its
target as an idempotent forwarder's record; the stream's checkpoint and the
targets' producer state skip whatever was appended before a crash.

**What is delivered.** The original key, value and timestamp (CreateTime as
produced; a ``LogAppendTime`` target stamps it on delivery), and every header
but the two delay headers (removed, so that a consumer that produces the record
on does not delay it again). A due record appears at a new offset at the end of
its partition.

**Refused.** A delay header that is not ASCII decimal, a negative delay, both
headers on one record, or a due time more than ``MAX_DELAY_MS`` (30 days) away
is an ``InvalidRecordError`` (INVALID_RECORD from the Kafka door): nothing of
the batch is stored. A due time in the past is delivered at once.

**Target gone.** A record whose target topic (or partition) no longer exists
when it is due is dropped with a warning line.

**Durability.** ``fsync`` is respected: ``fsync="always"`` syncs the intents
before the target batch is written; ``ForwardStream`` syncs targets before its
checkpoints; the index syncs ``__delayed`` before it commits. The scheduler
runs in the writer process only: a thread started when ``__delayed`` exists
(on open, or on the first delayed record), stopped on close. A read-only
opener does not run it.

**Limits.** Intents live in ``__delayed`` for ``RETENTION_MS`` (40 days): a
writer stopped for longer than 10 days with records pending near the 30-day
maximum may lose them to retention. Compressed batches are already
decompressed by validation, so they cost nothing more to check.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from .._native.core import batch_info, decode_records, drop_records, encode_batch, has_delay_headers
from ..errors import InvalidRecordError, UnknownTopicError
from .forward import Derived, ForwardStream, service_group

__all__ = ["DelayScheduler", "DelayHook", "DELAYED_TOPIC", "DELAY_MS", "DELIVER_AT", "MAX_DELAY_MS",
           "delayed_stats"]

log = logging.getLogger("umlog.delivery.delay")

DELAYED_TOPIC = "__delayed"
DELAY_MS = "umlog-delay-ms"
DELIVER_AT = "umlog-deliver-at"
_DELAY_KEYS = frozenset({DELAY_MS, DELIVER_AT})
INTENT = "umlog-delayed"
DUE = "umlog-delayed-due"
ABORT = "umlog-delayed-abort"
MAX_DELAY_MS = 30 * 24 * 3600 * 1000
RETENTION_MS = 40 * 24 * 3600 * 1000
TOPIC_CONFIG = {"retention.ms": RETENTION_MS, "message.timestamp.type": "LogAppendTime",
                "segment.bytes": 256 << 20}
INDEX_FILE = "delayed.sqlite3"
GROUP = service_group("delay", "delayed")
RELEASE_BATCH = 2000  # rows per due record
READ_BATCH = 5000  # __delayed records per intake or delivery step
CHUNK_RECORDS = 1000  # delivered records per batch to one target, at most
CHUNK_BYTES = 256 << 10  # and about this many bytes
CHECKPOINT_S = 0.5  # least time between two checkpoints of the delivery stream
IDLE_WAIT_S = 0.2  # longest sleep of the thread (a fake clock is noticed this soon)
_PAIR = struct.Struct(">qq")
_OFF = struct.Struct(">q")


def _now_s() -> float:
    return time.time()


def _ascii_int(v, name: str) -> int:
    try:
        s = bytes(v).decode("ascii")
        if not s.isdigit():
            raise ValueError
        return int(s)
    except (TypeError, ValueError, UnicodeDecodeError):
        raise InvalidRecordError(f"header {name} must be ASCII decimal digits, not {v!r}") from None


def due_ms(headers, now_ms: int) -> int | None:
    """The due time of a record with these headers (None: no delay header).

    :raises InvalidRecordError: malformed, both headers, or more than MAX_DELAY_MS away.
    """
    at = delay = None
    for k, v in headers or ():
        if isinstance(k, bytes):
            k = k.decode("utf-8", "replace")
        if k == DELIVER_AT:
            if at is not None:
                raise InvalidRecordError(f"header {DELIVER_AT} given twice")
            at = _ascii_int(v, k)
        elif k == DELAY_MS:
            if delay is not None:
                raise InvalidRecordError(f"header {DELAY_MS} given twice")
            delay = _ascii_int(v, k)
    if at is None and delay is None:
        return None
    if at is not None and delay is not None:
        raise InvalidRecordError(f"a record has both {DELIVER_AT} and {DELAY_MS}; give one")
    due = at if at is not None else now_ms + delay
    if due - now_ms > MAX_DELAY_MS:
        raise InvalidRecordError(f"due time {due} is more than 30 days away (now {now_ms}); "
                                 f"the longest delay is {MAX_DELAY_MS} ms")
    return due


def _strip(headers) -> list:
    return [(k, v) for k, v in headers or () if (k.decode("utf-8", "replace") if isinstance(k, bytes) else k)
            not in _DELAY_KEYS]


class _Intent:
    """The fields of an intent record's ``umlog-delayed`` header."""

    __slots__ = ("due", "partition", "batch_offset", "crc", "timestamp", "topic")

    def __init__(self, meta: bytes) -> None:
        due, part, boff, crc, ts, topic = bytes(meta).decode().split(" ", 5)
        self.due, self.partition, self.batch_offset = int(due), int(part), int(boff)
        self.crc, self.timestamp, self.topic = int(crc), int(ts), topic


def _kind(r) -> str | None:
    h = r.headers
    if not h:
        return None
    if h[-1][0] == INTENT:
        return INTENT
    return h[0][0] if h[0][0] in (DUE, ABORT) else None


class Split:
    """One batch's delayed records, taken out of it (``DelayHook.split``)."""

    __slots__ = ("index", "records")

    def __init__(self, index: int, records: list) -> None:
        self.index = index  # of the batch among the rewritten ones
        self.records = records  # (key, value, headers, timestamp, due)


class DelayHook:
    """The engine's side (``AppendHooks.delay``): splits batches and writes
    intents for ``Partition.append_batches``; creates the scheduler on the
    first delayed record."""

    def __init__(self, broker, clock: Callable[[], float] | None = None) -> None:
        self.broker = broker
        self.clock = clock or _now_s
        self.scheduler: DelayScheduler | None = None
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def ensure(self) -> DelayScheduler:
        s = self.scheduler
        if s is None:
            with self._lock:
                if self.scheduler is None:
                    self.scheduler = DelayScheduler(self.broker, self)
                    self.scheduler.start()
                s = self.scheduler
        return s

    def exempt(self, topic: str) -> bool:
        from ..broker import INTERNAL_TOPICS

        return topic in INTERNAL_TOPICS

    def split(self, p, data, infos) -> tuple[bytearray, list, list[Split]] | None:
        """Take the delayed records out of the batches (no lock held): the new
        bytes, their BatchInfos and what was taken; None if nothing is delayed
        (internal topics are never split)."""
        if self.exempt(p.topic):
            return None
        now = self.now_ms()
        parts, splits = [], []
        for i, info in enumerate(infos):
            if not info.delayed or info.is_control:
                parts.append(bytes(data[info.position:info.position + info.size]))
                continue
            records, _ = decode_records(data, info.position, info.position + info.size, 0, -1, None, -1, False)
            keep = np.ones(len(records), dtype=np.uint8)
            taken = []
            for j, r in enumerate(records):
                due = due_ms(r.headers, now)
                if due is None:
                    continue
                keep[j] = 0
                taken.append((r.key, r.value, _strip(r.headers), r.timestamp, due))
            parts.append(drop_records(data, info.position, keep))
            if taken:
                splits.append(Split(i, taken))
        if not splits:
            return None
        self.ensure()
        out = bytearray(b"".join(parts))
        new_infos, pos = [], 0
        for part in parts:
            new_infos.append(batch_info(out, pos))
            pos += len(part)
        return out, new_infos, splits

    def intend(self, p, data, infos, splits: list[Split]) -> list[range]:
        """Write the intents of ``splits`` (target lock held, offsets assigned):
        returns their ``__delayed`` offsets, for ``abort``."""
        s = self.ensure()
        values, keys, headers, stamps = [], [], [], []
        for sp in splits:
            info = infos[sp.index]
            boff = batch_info(data, info.position).base_offset
            crc = batch_info(data, info.position).crc
            for key, value, hs, ts, due in sp.records:
                values.append(value)
                keys.append(key)
                headers.append(hs + [(INTENT, f"{due} {p.index} {boff} {crc} {ts} {p.topic}".encode())])
                stamps.append(None)
        dp = s.partition
        offsets = dp.append_many(values, keys, headers, stamps)
        if self.broker.fsync == "always":
            dp.sync_through(offsets.stop)  # the intents are durable before the batch that claims them
        s.wake()
        return [offsets]

    def abort(self, written: list[range]) -> None:
        """The target write failed: mark the intents (best effort; the first pass
        after a restart checks unmarked ones against their target)."""
        s = self.scheduler
        if s is None:
            return
        offs = [o for r in written for o in r]
        s.aborted.update(offs)
        try:
            s.partition.append_many([b"".join(_OFF.pack(o) for o in offs)], None, [[(ABORT, b"")]])
        except Exception as e:
            log.error("could not mark %d delayed records of a failed append as aborted: %r", len(offs), e)

    def append_record(self, topic, value, key, headers, timestamp, partition):
        """``Topic.append`` of a record with a delay header: one batch through
        ``append_batches``; RecordMetadata with the offset it reserved (a gap)."""
        from .._native.core import RecordMetadata, partition_for_key

        n = topic.num_partitions
        if partition is None:
            partition = partition_for_key(key, n) if key is not None else topic._next_sticky()
        elif not 0 <= partition < n:
            raise IndexError(f"no partition {partition} (the topic has {n})")
        ts = self.now_ms() if timestamp is None else timestamp
        batch = encode_batch([value], [key], [list(headers)], [ts])
        first, _last, _lat = topic.partition(partition).append_batches(batch)
        return RecordMetadata(partition, first, ts)

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.close()


class DelayScheduler:
    """Takes intents into the index, releases due ones, delivers them (see the
    module docstring). One per writable broker; ``run_once`` does one round
    on the caller's thread (the tests drive it so with a fake clock)."""

    def __init__(self, broker, hook: DelayHook) -> None:
        self.broker = broker
        self.hook = hook
        self.topic = broker.internal_topic(DELAYED_TOPIC, 1, TOPIC_CONFIG)
        self.partition = self.topic.partition(0)
        self.aborted: set[int] = set()
        self._lock = threading.RLock()  # one round at a time (thread, run_once, close)
        self._event = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_checkpoint = 0.0
        self._intent_cache: tuple[int, int, list] | None = None  # (first, next, records) of one batch
        path = os.path.join(broker.path, "meta", INDEX_FILE)
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        sync = {"never": "OFF", "interval": "NORMAL", "always": "FULL"}[broker.fsync]
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={sync}")
        self.db.execute("CREATE TABLE IF NOT EXISTS pending (due INTEGER, off INTEGER, PRIMARY KEY (due, off))"
                        " WITHOUT ROWID")
        self.db.execute("CREATE TABLE IF NOT EXISTS state (k TEXT PRIMARY KEY, v INTEGER)")
        self.stream = ForwardStream(broker, GROUP, DELAYED_TOPIC, 0)
        # Everything below here was written by an earlier process: decided now,
        # before anything is appended (see "Intents").
        self._open_end = self.partition.end_offset
        if self._state("intake", 0) > self._open_end:
            self._rebuild()
        self._recover()

    def _rebuild(self) -> None:
        """Forget the index and take ``__delayed`` in again from its start.

        The index is ahead of the log it was taken from: a power cut under
        ``fsync="never"`` kept SQLite's pages and lost the log's tail. Its rows
        for the lost intents would name the offsets new intents are about to
        take, and its intake position would skip those, so it is rebuilt from
        the log (the ``due`` records in it delete the rows they released)."""
        log.warning("the delayed-delivery index has taken in %s up to offset %d, but the log ends at %d "
                    "(its tail was lost with the power); rebuilding the index from the log",
                    DELAYED_TOPIC, self._state("intake", 0), self._open_end)
        db = self.db
        db.execute("BEGIN")
        db.execute("DELETE FROM pending")
        db.execute("DELETE FROM state")
        db.execute("COMMIT")

    # -- the index ------------------------------------------------------------------------------

    def _state(self, k: str, default: int = 0) -> int:
        row = self.db.execute("SELECT v FROM state WHERE k = ?", (k,)).fetchone()
        return default if row is None else row[0]

    @property
    def intake_position(self) -> int:
        return max(self._state("intake", 0), self.partition.start_offset)

    def pending(self) -> int:
        """Delayed records in the index, not yet due."""
        with self._lock:
            return self._state("count", 0)

    def next_due(self) -> int | None:
        """The earliest due time in the index (ms), or None."""
        with self._lock:
            return self.db.execute("SELECT min(due) FROM pending").fetchone()[0]

    def _read(self, start: int, limit: int) -> list:
        p = self.partition
        if start >= p.end_offset:
            return []
        return list(p.read(max(start, p.start_offset), max_records=limit))

    def _recover(self) -> None:
        """Decide every intent an earlier process wrote and the index has not taken in."""
        start = self.intake_position
        pos = start
        while pos < self._open_end:  # the aborts first: an abort follows its intents
            recs = self._read(pos, READ_BATCH)
            if not recs:
                break
            for r in recs:
                if _kind(r) == ABORT:
                    self.aborted.update(o for (o,) in _OFF.iter_unpack(r.value))
            pos = recs[-1].offset + 1
        while self._intake():
            pass

    def _claim_holds(self, it: _Intent, off: int) -> bool:
        """Whether the target batch an intent was taken from is stored."""
        if off in self.aborted:
            return False
        try:
            tp = self.broker.topic(it.topic).partition(it.partition)
        except (UnknownTopicError, IndexError):
            return True  # gone: dropped at delivery, with a line
        if off >= self._open_end:
            with tp.lock:  # its writer holds it from intent to batch: now it is done, or failed
                pass
            if off in self.aborted:
                return False
        if it.batch_offset >= tp.end_offset:
            return False
        if it.batch_offset < tp.start_offset:
            return True  # stored, then deleted by retention
        seg = tp._segment_at(it.batch_offset)
        found = seg.find_position(it.batch_offset)
        if found is None:
            return False
        info = seg.batch_info_at(found[0])
        return info.base_offset == it.batch_offset and info.crc == it.crc

    def _intake(self) -> bool:
        """Take in the next ``__delayed`` records; True if there were any."""
        start = self.intake_position
        recs = self._read(start, READ_BATCH)
        if not recs:
            return False
        rows, gone, orphans = [], [], []
        claims: dict[tuple, bool] = {}
        for r in recs:
            kind = _kind(r)
            if kind == INTENT:
                it = _Intent(r.headers[-1][1])
                key = (it.topic, it.partition, it.batch_offset, it.crc)
                ok = claims.get(key)
                if ok is None or r.offset in self.aborted:
                    ok = claims[key] = self._claim_holds(it, r.offset)
                if ok:
                    rows.append((it.due, r.offset))
                elif r.offset not in self.aborted:
                    orphans.append(r.offset)
            elif kind == DUE:
                gone.extend(_PAIR.iter_unpack(r.value))
            elif kind == ABORT:
                self.aborted.update(o for (o,) in _OFF.iter_unpack(r.value))
        if orphans:
            log.warning("%d delayed records were never stored with their batch (a crash or a failed append "
                        "before it): dropped; their producer was not answered", len(orphans))
            self.aborted.update(orphans)
            self.partition.append_many([b"".join(_OFF.pack(o) for o in orphans)], None, [[(ABORT, b"")]])
        end = recs[-1].offset + 1
        if self.broker.fsync != "never":
            self.partition.sync_through(self.partition.end_offset)
        db = self.db
        db.execute("BEGIN")
        try:
            added = 0
            if rows:
                before = db.total_changes
                db.executemany("INSERT OR IGNORE INTO pending (due, off) VALUES (?, ?)", rows)
                added = db.total_changes - before
            if gone:
                before = db.total_changes
                db.executemany("DELETE FROM pending WHERE due = ? AND off = ?", gone)
                added -= db.total_changes - before
            db.execute("INSERT OR REPLACE INTO state (k, v) VALUES ('intake', ?)", (end,))
            db.execute("INSERT OR REPLACE INTO state (k, v) VALUES ('count', ?)", (self.pending() + added,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return True

    def _release(self, now_ms: int) -> int:
        """Mark what is due by ``now_ms`` with a ``due`` record; how many."""
        rows = self.db.execute("SELECT due, off FROM pending WHERE due <= ? ORDER BY due, off LIMIT ?",
                               (now_ms, RELEASE_BATCH)).fetchall()
        if not rows:
            return 0
        self.partition.append_many([b"".join(_PAIR.pack(d, o) for d, o in rows)], None, [[(DUE, b"")]])
        while self._intake():  # the due record deletes its rows before anything is released again
            pass
        return len(rows)

    # -- delivery ---------------------------------------------------------------------------------

    def _intent(self, off: int):
        c = self._intent_cache
        if c is None or not c[0] <= off < c[1]:
            p = self.partition
            seg = p._segment_at(off)
            found = seg.find_position(off)
            if found is None:
                return None
            info = seg.batch_info_at(found[0])
            recs, _ = decode_records(seg.read(found[0], info.size), 0, info.size, 0, -1)
            c = self._intent_cache = (info.base_offset, info.last_offset + 1, {r.offset: r for r in recs})
        return c[2].get(off)

    def _derive(self, r) -> list[Derived]:
        out = []
        for _due, off in _PAIR.iter_unpack(r.value):
            rec = self._intent(off)
            if rec is None:
                log.warning("delayed record at %s offset %d is gone (retention); not delivered", DELAYED_TOPIC, off)
                continue
            it = _Intent(rec.headers[-1][1])
            try:
                n = self.broker.topic(it.topic).num_partitions
            except UnknownTopicError:
                n = -1
            if not 0 <= it.partition < n:
                log.warning("delayed record for %s-%d dropped: the topic or partition no longer exists",
                            it.topic, it.partition)
                continue
            out.append(Derived(it.topic, it.partition, rec.value, rec.key, list(rec.headers[:-1]), it.timestamp))
        return out

    def _deliver(self) -> int:
        """Deliver what the next ``due`` records list. A due record's records go
        in chunks (bounded batches); the stream is checkpointed only between
        due records, never inside one (a restart derives a due record whole)."""
        s = self.stream
        pos = self.partition.start_offset if s.position is None else s.position
        recs = self._read(pos, READ_BATCH)
        if not recs:
            return 0
        sent = 0
        try:
            for r in recs:
                if _kind(r) != DUE:
                    s.send((), r.offset + 1)
                    continue
                derived = self._derive(r)
                i, size = 0, 0
                chunk: list[Derived] = []
                for d in derived:
                    chunk.append(d)
                    size += len(d.value or b"") + len(d.key or b"") + 64
                    i += 1
                    if (len(chunk) >= CHUNK_RECORDS or size >= CHUNK_BYTES) and i < len(derived):
                        sent += s.send(chunk, r.offset)  # inside the due record: no checkpoint here
                        chunk, size = [], 0
                sent += s.send(chunk, r.offset + 1)
                if sent >= READ_BATCH:
                    break
        except Exception:
            # Some targets may have taken their records: a fresh stream from the
            # checkpoint skips them (their producer state counts them).
            self.stream = ForwardStream(self.broker, GROUP, DELAYED_TOPIC, 0)
            raise
        if sent and time.monotonic() - self._last_checkpoint >= CHECKPOINT_S:
            self.checkpoint()
        return sent

    def checkpoint(self) -> None:
        with self._lock:
            if self.stream.position is not None:
                self.stream.checkpoint()
                self._last_checkpoint = time.monotonic()

    # -- the round and the thread ----------------------------------------------------------------

    def run_once(self) -> int:
        """Take in, release what is due, deliver: records delivered this round."""
        with self._lock:
            while self._intake():
                pass
            now = self.hook.now_ms()
            while self._release(now) == RELEASE_BATCH:
                pass
            delivered = 0
            while True:
                n = self._deliver()
                delivered += n
                s = self.stream
                if s.position is None or s.position >= self.partition.end_offset:
                    break
            return delivered

    def wake(self) -> None:
        self._event.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="umlog-delay", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        failing = False
        while not self._stop.is_set() and not self.broker._stop.is_set():
            try:
                self.run_once()
                failing = False
            except Exception:
                if not failing:
                    log.exception("delayed delivery round failed; trying again")
                failing = True
                self._stop.wait(1.0)
                continue
            nxt = self.next_due()
            wait = IDLE_WAIT_S
            if nxt is not None:
                wait = min(wait, max(0.0, (nxt - self.hook.now_ms()) / 1000))
            if wait > 0:
                self._event.wait(wait)
            self._event.clear()

    def stop(self) -> None:
        """Stop the thread (its round finishes first)."""
        self._stop.set()
        self._event.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        self.stop()
        try:
            self.checkpoint()
        finally:
            self.db.close()


def delayed_stats(broker) -> dict:
    """Pending count and next due time of a data dir (any opener, read-only too):
    the index's rows plus the intents it has not taken in yet."""
    path = os.path.join(broker.path, "meta", INDEX_FILE)
    out = {"pending": 0, "next_due_ms": None, "not_indexed": 0}
    if not os.path.exists(path):
        return out
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT v FROM state WHERE k = 'count'").fetchone()
        out["pending"] = row[0] if row else 0
        out["next_due_ms"] = db.execute("SELECT min(due) FROM pending").fetchone()[0]
        row = db.execute("SELECT v FROM state WHERE k = 'intake'").fetchone()
        intake = row[0] if row else 0
    finally:
        db.close()
    try:
        p = broker.topic(DELAYED_TOPIC).partition(0)
    except UnknownTopicError:
        return out
    n = 0
    for r in p.read(max(intake, p.start_offset)) if intake < p.end_offset else ():
        if _kind(r) == INTENT:
            n += 1
    out["not_indexed"] = n
    return out


def has_delay(headers: Sequence | None) -> bool:
    return has_delay_headers(headers)

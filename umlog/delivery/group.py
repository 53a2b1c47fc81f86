"""Share groups: queues over the log, with locks, redelivery and dead letters.

Theory of operation
-------------------
``Broker.share_group(name, topics=...)`` returns a handle on the group's one
``_Core`` in this broker (``ShareGroups`` keeps them): every handle of a group,
in any thread, works on the same windows (``state.Window``, one per partition
of the group's topics) under the core's lock. A record is never copied into
the state: the window says which offsets are in flight, and records are read
from the partition again each time they are handed out (never-delivered ones
through a small read-ahead per partition, ``_Core._fresh``). The per-record
loops are native (``umlog/_native/share.pyx``), one call per batch.

``acquire`` walks the partitions round robin from a different one each call
(so one busy partition does not starve the others). In each it first turns
expired locks back into available records (lazily: lock deadlines are only
looked at when someone asks), then hands out the available records of the
window, then fetches new records from ``end`` while the window has room. A
record is dead instead of handed out when its TTL has passed (header
``umlog-ttl-ms``) or when one more delivery would pass ``max_attempts``. The
delivery counts it raised are written before the records are returned (see
``state.py`` for why acquire is durable).

``release`` makes a record available again after ``delay_ms`` (None: the
group's exponential backoff with jitter); ``reject`` dead-letters it at once;
``ack`` marks it done. Each call is validated whole first (the record must be
acquired by this handle, with this delivery count, its lock not expired:
``InvalidRecordStateError``), then changes the windows and writes them as one
batch.

Dead letters are written in three steps, so that a crash gives neither a lost
nor a duplicated one: the entries become ``DEAD_PENDING`` with the
dead-letter partition's end offset (written), the dead letters are appended,
the entries become ``ARCHIVED`` (written). Opening a group with pending
entries reads the dead-letter partition from that offset and writes only
those it does not find; their reason is lost with the crash and says so.

Wake-ups: an append listener bumps a counter under a small lock of its own
(it runs with the partition's lock held, so it must never wait for the
core's lock, which is held while reading partitions).
"""

from __future__ import annotations

import bisect
import logging
import operator
import random
import struct
import threading
import time
from collections.abc import Iterable

from .._native.core import ShareRecord, share_accept, share_ack, share_scan_window, share_settle_check, share_take_fresh
from ..errors import OffsetOutOfRangeError, TopicExistsError, UmlogError, UnknownTopicError
from .state import ACKED, ACQUIRED, ARCHIVED, AVAILABLE, DEAD_PENDING, DONE, Entry, Window, decode_window, encode_window
from .store import ShareStateStore

__all__ = ["ShareGroup", "ShareGroups", "ShareRecord", "InvalidRecordStateError", "TTL_HEADER", "DLT_HEADERS",
           "saved_share_groups", "delete_share_group"]

log = logging.getLogger("umlog.delivery")

TTL_HEADER = "umlog-ttl-ms"
EXPIRATION_HEADER = "amqp-expiration"  # an AMQP message's expiration (ms, ASCII): a TTL as well
COUNT_HEADER = "umlog-delivery-count"
GROUP_HEADER = "umlog-share-group"  # finds a group's own dead letters after a crash
# Spring Kafka's DeadLetterPublishingRecoverer headers, so its tools read ours.
DLT_TOPIC = "kafka_dlt-original-topic"
DLT_PARTITION = "kafka_dlt-original-partition"
DLT_OFFSET = "kafka_dlt-original-offset"
DLT_TIMESTAMP = "kafka_dlt-original-timestamp"
DLT_MESSAGE = "kafka_dlt-exception-message"
DLT_HEADERS = (DLT_TOPIC, DLT_PARTITION, DLT_OFFSET, DLT_TIMESTAMP, DLT_MESSAGE)
LOST_REASON = "dead letter interrupted by a crash; its reason was lost"
_i32 = struct.Struct(">i")
_i64 = struct.Struct(">q")
SETTLE_KINDS = ("accept", "release", "reject", "gap", "renew")
READ_AHEAD = 1_000  # most never-delivered records decoded per partition read (see _Core._fresh)
READ_AHEAD_BYTES = 128 * 1024  # ... and about this many bytes of keys and values (memory: per partition read)
_offset = operator.attrgetter("offset")


class InvalidRecordStateError(UmlogError):
    """ack/release/reject of a record this handle does not hold (any more): never
    acquired by it, already settled, redelivered since, or its lock expired."""


# ShareRecord (native): a record handed out by ``acquire``, the log's record plus
# where it is from and how many times it has been handed out (1 the first time).


def ttl_deadline_ms(r) -> int | None:
    """The wall-clock ms at which ``r`` expires, or None: its ``umlog-ttl-ms``
    header (MQTT 5's message expiry lands there) or its ``amqp-expiration``
    (an AMQP publish's expiration), the earlier of the two, counted from its timestamp."""
    ttl = None
    for k, v in r.headers:
        if (k == TTL_HEADER or k == EXPIRATION_HEADER) and v is not None:
            try:
                ms = int(bytes(v).decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                continue  # a header that is not a TTL does not expire the record
            ttl = ms if ttl is None else min(ttl, ms)
    return None if ttl is None else r.timestamp + ttl


def dead_letter_headers(r, topic: str, partition: int, count: int, reason: str, group: str) -> list:
    return [*r.headers,
            (DLT_TOPIC, topic.encode()),
            (DLT_PARTITION, _i32.pack(partition)),
            (DLT_OFFSET, _i64.pack(r.offset)),
            (DLT_TIMESTAMP, _i64.pack(r.timestamp)),
            (DLT_MESSAGE, reason.encode()),
            (COUNT_HEADER, str(count).encode()),
            (GROUP_HEADER, group.encode())]


class ShareGroups:
    """The share groups open in one broker, and their state store."""

    def __init__(self, broker) -> None:
        self.broker = broker
        self.store = ShareStateStore(broker)
        self._lock = threading.Lock()
        self._cores: dict[str, _Core] = {}

    def open(self, name: str, topics, **settings) -> ShareGroup:
        if not isinstance(name, str) or not name:
            raise ValueError(f"share group name must be a non-empty str, not {name!r}")
        if isinstance(topics, str):
            topics = [topics]
        with self._lock:
            core = self._cores.get(name)
            if core is None:
                core = self._cores[name] = _Core(self.broker, self.store, name, list(topics), **settings)
            else:
                core.check_same(list(topics), settings)
        return ShareGroup(core)

    def delete_topic(self, topic: str) -> None:
        """A topic was deleted: open groups drop its windows, and every group's saved
        state for it goes (tombstones), so a topic created again under the name is
        read from its own start, not from offsets of the one deleted."""
        with self._lock:
            cores = list(self._cores.values())
        for core in cores:
            core.forget_topic(topic)
        self.store.delete_topic(topic)

    def delete(self, name: str) -> None:
        """Delete share group ``name``: its saved state goes (tombstones) and, if it
        is open in this process, it is closed (its handles must not be used
        again). A group opened again under the name starts afresh."""
        with self._lock:
            core = self._cores.pop(name, None)
        if core is not None:
            self.broker.remove_append_listener(core._on_append)
        values = self.store.group_values(name)
        if values:
            self.store.write(name, {k: None for k in values})

    def saved(self) -> list[str]:
        """The names of the share groups with saved state, open or not."""
        return self.store.groups()


class _Core:
    """One share group's windows (see the module docstring); shared by its handles."""

    def __init__(self, broker, store: ShareStateStore, name: str, topics: list[str], *, max_attempts: int = 5,
                 lock_ms: int = 30_000, backoff_ms: tuple[int, int] | None = (1_000, 60_000),
                 dead_letter: str | None = None, start: str = "latest", max_in_flight: int = 2_000,
                 expire: bool = True, clock=None, monotonic=None, rng: random.Random | None = None) -> None:
        if not topics or not all(isinstance(t, str) for t in topics):
            raise ValueError(f"topics must be a non-empty list of topic names, not {topics!r}")
        for what, v, low in (("max_attempts", max_attempts, 1), ("lock_ms", lock_ms, 1),
                             ("max_in_flight", max_in_flight, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{what} must be an int >= {low}, not {v!r}")
        if backoff_ms is not None:
            lo, hi = backoff_ms
            if not 0 <= lo <= hi:
                raise ValueError(f"backoff_ms must be (min, max) with 0 <= min <= max, not {backoff_ms!r}")
            backoff_ms = (int(lo), int(hi))
        if start not in ("latest", "earliest"):
            raise ValueError(f"start must be 'latest' or 'earliest', not {start!r}")
        self.broker = broker
        self.store = store
        self.name = name
        self.topics = list(dict.fromkeys(topics))
        self.settings = {"max_attempts": max_attempts, "lock_ms": lock_ms, "backoff_ms": backoff_ms,
                         "dead_letter": dead_letter, "start": start, "max_in_flight": max_in_flight,
                         "expire": expire}
        self.max_attempts, self.lock_ms, self.backoff_ms = max_attempts, lock_ms, backoff_ms
        # expire=False: records past their TTL are handed out still, for a caller
        # that decides itself what an expired record becomes (an AMQP queue
        # dead-letters it to its own exchange, with x-death)
        self.expire = expire
        self.dead_letter, self.start, self.max_in_flight = dead_letter, start, max_in_flight
        # Wall clock (seconds): TTLs, availability delays (durable). Monotonic: locks.
        self._clock = clock or time.time
        self._mono = monotonic or clock or time.monotonic
        self._rng = rng or random.Random()
        self._lock = threading.RLock()
        self._wake = threading.Condition(threading.Lock())
        self._seq = 0
        self._rr = 0
        self._windows: dict[tuple[str, int], Window] = {}
        # Read-ahead of never-delivered records per partition: (offset it starts
        # at, records from there on, bytes of a record), see _fresh.
        self._ahead: dict[tuple[str, int], tuple[int, list, int]] = {}
        for t in self.topics:
            broker.topic(t)  # UnknownTopicError before anything is written
        with self._lock:
            saved = store.group_values(name)
            self._add_windows(saved)
            self._recover_pending()
        broker.add_append_listener(self._on_append)

    def check_same(self, topics: list[str], settings: dict) -> None:
        mine = {k: v for k, v in settings.items() if k not in ("clock", "monotonic", "rng")}
        if "backoff_ms" in mine and mine["backoff_ms"] is not None:
            mine["backoff_ms"] = tuple(mine["backoff_ms"])
        diff = [k for k, v in mine.items() if self.settings.get(k, v) != v]
        if list(dict.fromkeys(topics)) != self.topics or diff:
            what = ", ".join(diff) or "topics"
            raise ValueError(f"share group {self.name!r} is open in this process with other settings ({what})")

    # -- windows ------------------------------------------------------------------------

    def _wall_ms(self) -> int:
        return int(self._clock() * 1000)

    def _add_windows(self, saved: dict) -> None:
        """Windows for partitions not known yet: from their saved state, else new
        (``start``; a partition added to a topic later starts at its beginning)."""
        fresh = {}
        for topic in self._live_topics():
            t = topic.name
            for i, p in enumerate(topic.partitions):
                if (t, i) in self._windows:
                    continue
                v = saved.get((t, i))
                if v is not None:
                    self._windows[(t, i)] = decode_window(t, i, v)
                    continue
                known = any(k[0] == t for k in self._windows) or any(k[0] == t for k in saved)
                begin = p.start_offset if self.start == "earliest" or known else p.end_offset
                w = self._windows[(t, i)] = Window(t, i, begin)
                fresh[(t, i)] = encode_window(w)
        # Written at once: a group that starts at "latest" must not move its
        # start to a later end after a restart.
        self.store.write(self.name, fresh)

    def _partition(self, w: Window):
        return self.broker.topic(w.topic).partitions[w.partition]

    def _refresh_partitions(self) -> None:
        n = sum(t.num_partitions for t in self._live_topics())
        if n != len(self._windows):
            self._add_windows({})

    def _live_topics(self) -> list:
        """The group's topics that exist now (one deleted is skipped until created again)."""
        out = []
        for name in self.topics:
            try:
                out.append(self.broker.topic(name))
            except UnknownTopicError:
                pass
        return out

    def forget_topic(self, topic: str) -> None:
        with self._lock:
            for k in [k for k in self._windows if k[0] == topic]:
                del self._windows[k]
                self._ahead.pop(k, None)

    def _on_append(self, p) -> None:
        if p.topic in self.topics:
            with self._wake:
                self._seq += 1
                self._wake.notify_all()

    # -- acquire -----------------------------------------------------------------------

    def acquire(self, handle, max_records: int, timeout: float, only=None) -> list[ShareRecord]:
        if isinstance(max_records, bool) or not isinstance(max_records, int) or max_records < 1:
            raise ValueError(f"max_records must be an int >= 1, not {max_records!r}")
        until = time.monotonic() + max(0.0, timeout or 0.0)
        while True:
            with self._wake:
                seq = self._seq
            with self._lock:
                out, progressed, due_s = self._acquire(handle, max_records, only)
            if out:
                return out
            if progressed:
                continue  # dead letters made room or freed the head: look again
            left = until - time.monotonic()
            if left <= 0:
                return []
            with self._wake:
                if self._seq == seq:
                    self._wake.wait(min(left, due_s) if due_s is not None else left)

    def _acquire(self, handle, max_records: int, only=None):
        now_m, now_w = self._mono(), self._wall_ms()
        self._refresh_partitions()
        out: list[ShareRecord] = []
        dirty: set = set()
        dead: list = []
        keys = list(self._windows) if only is None else [k for k in self._windows if k in only]
        if not keys:  # every topic of the group is deleted
            return out, False, None
        first = self._rr % len(keys)
        self._rr += 1
        for j in range(len(keys)):
            w = self._windows[keys[(first + j) % len(keys)]]
            try:
                p = self._partition(w)
            except UnknownTopicError:  # deleted this moment; forget_topic comes next
                continue
            again = self._expire(w, now_m, now_w, dirty, dead)
            if p.start_offset > w.start:  # retention deleted records before they were done
                w.skip_to(p.start_offset)
                dirty.add(w)
                again = [o for o in again if o in w.entries]
            need = max_records - len(out)
            if need <= 0:
                continue
            again = sorted(again)[:need]
            if again:
                dirty.add(w)
                got = self._read_offsets(p, again)
                for o in again:
                    e, r = w.entries[o], got.get(o)
                    if r is None:
                        e.state = ARCHIVED  # gone from the log (compaction)
                        continue
                    why = self._why_dead(r, e.count + 1, now_w)
                    if why:
                        dead.append((w, o, r, why))
                        continue
                    out.append(self._lock_entry(e, r, w, handle, now_m))
            need = max_records - len(out)
            room = self.max_in_flight - w.span
            if need > 0 and room > 0 and w.end < p.end_offset:
                fresh = self._fresh(w, p, min(need, room))
                # the hot path: one native call locks the batch (_lock_entry and _why_dead inlined)
                end = share_take_fresh(fresh, w.entries, handle, now_m + self.lock_ms / 1000, w.topic, w.partition,
                                       w.start + self.max_in_flight, self._why_dead, now_w, out, dead, w)
                if end >= 0:
                    w.end = end
                    dirty.add(w)
                    self._keep_ahead(w)
        self._commit(dirty, dead)
        # when to look again matters only to a caller that got nothing (it waits)
        return out, bool(dead), None if out else self._next_due_s(now_m, now_w)

    def _fresh(self, w: Window, p, n: int) -> list:
        """Up to ``n`` records of ``p`` from ``w.end`` on. A read costs a seek and a
        chunk of the segment however few records it decodes, so it decodes up to
        READ_AHEAD records (about READ_AHEAD_BYTES of keys and values, by the size
        of the last read's first record; only ``n`` while that is not known) and
        keeps the rest for the next calls while they start at ``w.end``."""
        key = (w.topic, w.partition)
        start, records, size = self._ahead.get(key, (-1, [], 0))
        if start != w.end or len(records) < n:
            want = max(n, min(READ_AHEAD, READ_AHEAD_BYTES // size)) if size else n
            try:
                records = list(p.read(w.end, max_records=want))
            except OffsetOutOfRangeError:  # retention ran meanwhile: next call
                records = []
            if records:
                size = max(1, len(records[0].value or b"") + len(records[0].key or b""))
            self._ahead[key] = (w.end, records, size)
        return records[:n]

    def _keep_ahead(self, w: Window) -> None:
        """Drop the read-ahead records an acquire took (those below ``w.end``)."""
        key = (w.topic, w.partition)
        _, records, size = self._ahead[key]
        self._ahead[key] = (w.end, records[bisect.bisect_left(records, w.end, key=_offset):], size)

    def _lock_entry(self, e: Entry, r, w: Window, handle, now_m: float) -> ShareRecord:
        e.state, e.aux = ACQUIRED, 0
        e.count += 1
        e.owner = handle
        e.deadline = now_m + self.lock_ms / 1000
        return ShareRecord(r, w.topic, w.partition, e.count)

    def _why_dead(self, r, next_count: int, now_w: int) -> str | None:
        ttl = ttl_deadline_ms(r) if self.expire else None
        if ttl is not None and now_w >= ttl:
            return "expired"
        if next_count > self.max_attempts:
            return f"delivered {next_count - 1} times (max_attempts {self.max_attempts})"
        return None

    def _expire(self, w: Window, now_m: float, now_w: int, dirty: set, dead: list) -> list[int]:
        """Expired locks back to available (or dead); returns the offsets available
        now (one pass over the window)."""
        ready, expired = share_scan_window(w.entries, now_m, now_w)
        if expired:
            dirty.add(w)
            for o in expired:
                e = w.entries[o]
                self._fail(w, o, e, now_w, None, dead, "lock expired")
                if e.state == AVAILABLE and e.aux <= now_w:
                    ready.append(o)
        return ready

    def _fail(self, w: Window, o: int, e: Entry, now_w: int, delay_ms: int | None, dead: list, how: str) -> None:
        """A delivery failed (released or its lock expired): available again, or dead."""
        e.owner, e.deadline = None, 0.0
        if e.count >= self.max_attempts:
            dead.append((w, o, None, f"{how} after {e.count} deliveries (max_attempts {self.max_attempts})"))
            return
        if delay_ms is None:
            delay_ms = self._backoff_ms(e.count)
        e.state, e.aux = AVAILABLE, (now_w + delay_ms if delay_ms > 0 else 0)

    def _backoff_ms(self, n: int) -> int:
        """min(max, min * 2**(n-1)), then "equal jitter": half of it fixed, half random,
        so that records failed together do not come back together."""
        if self.backoff_ms is None:
            return 0
        lo, hi = self.backoff_ms
        d = min(hi, lo * (1 << min(max(n - 1, 0), 62)))
        return d // 2 + int(self._rng.random() * (d - d // 2))

    def _next_due_s(self, now_m: float, now_w: int) -> float | None:
        due = None
        for w in self._windows.values():
            for e in w.entries.values():
                if e.state == ACQUIRED:
                    d = e.deadline - now_m
                elif e.state == AVAILABLE:
                    d = (e.aux - now_w) / 1000
                else:
                    continue
                due = d if due is None else min(due, d)
        return None if due is None else max(0.001, due)

    @staticmethod
    def _read_offsets(p, offsets: list[int]) -> dict:
        """The records at ``offsets`` (sorted), reading each contiguous run once."""
        got = {}
        i = 0
        while i < len(offsets):
            j = i
            while j + 1 < len(offsets) and offsets[j + 1] - offsets[i] < 64 + (j + 1 - i):
                j += 1
            lo, hi = offsets[i], offsets[j]
            if lo >= p.start_offset and lo < p.end_offset:
                want = set(offsets[i:j + 1])
                for r in p.read(lo, max_records=hi - lo + 1):
                    if r.offset > hi:
                        break
                    if r.offset in want:
                        got[r.offset] = r
            i = j + 1
        return got

    # -- settling -----------------------------------------------------------------------

    def _held(self, handle, records, now_m: float) -> list:
        if isinstance(records, ShareRecord):
            records = [records]
        out = []
        for r in records:
            if not isinstance(r, ShareRecord):
                raise TypeError(f"expected ShareRecord(s) from acquire(), not {type(r).__name__}")
            w = self._windows.get((r.topic, r.partition))
            e = None if w is None else w.entries.get(r.offset)
            if e is None or e.state != ACQUIRED or e.owner is not handle or e.count != r.delivery_count \
                    or e.deadline <= now_m:
                where = f"{r.topic}-{r.partition}@{r.offset} (delivery {r.delivery_count})"
                if e is None or e.state in DONE or e.state == DEAD_PENDING:
                    raise InvalidRecordStateError(f"{where} is already settled")
                if e.state != ACQUIRED or e.owner is not handle or e.count != r.delivery_count:
                    raise InvalidRecordStateError(f"{where} is not held by this handle (its lock expired, "
                                                  "or it was redelivered)")
                raise InvalidRecordStateError(f"{where}: its lock expired ({self.lock_ms} ms)")
            out.append((w, r.offset, e))
        return out

    def ack(self, handle, records) -> None:
        records = [records] if isinstance(records, ShareRecord) else list(records)
        with self._lock:
            now_m = self._mono()
            dirty = share_ack(records, handle, self._windows, now_m)  # validated whole, then all acked
            if dirty is None:
                self._held(handle, records, now_m)  # raises: says which record is not held, and why
                raise AssertionError("share_ack refused records that _held accepts")
            self._commit(dirty, [])

    def release(self, handle, records, delay_ms: int | None) -> None:
        if delay_ms is not None and (not isinstance(delay_ms, int) or delay_ms < 0):
            raise ValueError(f"delay_ms must be an int >= 0 or None, not {delay_ms!r}")
        with self._lock:
            held = self._held(handle, records, self._mono())
            now_w, dead = self._wall_ms(), []
            for w, o, e in held:
                self._fail(w, o, e, now_w, delay_ms, dead, "released")
            self._commit({w for w, _, _ in held}, dead)
        self._notify()

    def reject(self, handle, records, reason: str) -> None:
        with self._lock:
            held = self._held(handle, records, self._mono())
            for _, _, e in held:
                e.owner = None
            self._commit({w for w, _, _ in held}, [(w, o, None, reason) for w, o, _ in held])

    def settle(self, handle, topic: str, partition: int, acks, delay_ms: int = 0, reason: str = "rejected") -> None:
        """Settle offsets of one partition held by ``handle``: ``acks`` is
        ``[(offset, kind)]``, kind one of ``SETTLE_KINDS``. Validated whole
        first (``InvalidRecordStateError``, nothing changed), then written as
        one batch. ``gap`` says the offset is not a record: done if held,
        ignored when the window has no entry for it; ``renew`` extends the lock."""
        released = False
        acks = acks if isinstance(acks, list) else list(acks)
        with self._lock:
            now_m = self._mono()
            w = self._windows.get((topic, partition))
            held = share_settle_check(acks, {} if w is None else w.entries, handle, now_m, SETTLE_KINDS)
            if held is None:
                self._refuse_settle(w, topic, partition, acks, handle, now_m)
            if not held:
                return
            rest = share_accept(held)  # accept and gap: done (native, the common case)
            now_w, dead, dirty = self._wall_ms(), [], len(rest) < len(held)
            for o, e, kind in rest:
                if kind == "release":
                    self._fail(w, o, e, now_w, delay_ms, dead, "released")
                    released = dirty = True
                elif kind == "reject":
                    e.owner, dirty = None, True
                    dead.append((w, o, None, reason))
                else:  # renew: the lock only, nothing durable changes
                    e.deadline = now_m + self.lock_ms / 1000
            if dirty:
                self._commit({w}, dead)
        if released:
            self._notify()

    @staticmethod
    def _refuse_settle(w, topic: str, partition: int, acks: list, handle, now_m: float) -> None:
        """Raise for the first of ``acks`` that ``settle`` may not apply."""
        for o, kind in acks:
            if kind not in SETTLE_KINDS:
                raise ValueError(f"unknown acknowledgement kind {kind!r}")
            e = None if w is None else w.entries.get(o)
            if e is None and kind == "gap":
                continue
            if e is None or e.state != ACQUIRED or e.owner is not handle or e.deadline <= now_m:
                raise InvalidRecordStateError(f"{topic}-{partition}@{o} is not held by this handle (never "
                                              "acquired by it, settled, or its lock expired)")
        raise AssertionError("share_settle_check refused what settle may apply")

    def release_held(self, handle) -> int:
        """Release every record ``handle`` holds, available again at once (its
        consumer went away); returns how many."""
        n = 0
        with self._lock:
            now_w, dead, dirty = self._wall_ms(), [], set()
            for w in self._windows.values():
                for o, e in w.entries.items():
                    if e.state == ACQUIRED and e.owner is handle:
                        self._fail(w, o, e, now_w, 0, dead, "released")
                        dirty.add(w)
                        n += 1
            if dirty:
                self._commit(dirty, dead)
        if n:
            self._notify()
        return n

    def add_topics(self, topics) -> None:
        """Serve more topics (existing ones) from now on: their windows come from
        the saved state, else start as ``start`` says."""
        new = [t for t in dict.fromkeys(topics) if t not in self.topics]
        if not new:
            return
        for t in new:
            self.broker.topic(t)  # UnknownTopicError before anything changes
        with self._lock:
            self.topics.extend(new)
            self._add_windows(self.store.group_values(self.name))

    def _notify(self) -> None:
        with self._wake:
            self._seq += 1
            self._wake.notify_all()

    # -- writing state and dead letters ---------------------------------------------------

    def _commit(self, dirty: set, dead: list) -> None:
        if dead:
            self._bury(dead)
            dirty.update(w for w, _, _, _ in dead)
        for w in dirty:
            w.advance()
        self.store.write(self.name, {(w.topic, w.partition): encode_window(w) for w in dirty})

    def _dlq(self):
        try:
            return self.broker.topic(self.dead_letter)
        except UnknownTopicError:
            n = max(self.broker.topic(t).num_partitions for t in self.topics)
            try:
                return self.broker.create_topic(self.dead_letter, n)
            except TopicExistsError:
                return self.broker.topic(self.dead_letter)

    def _bury(self, dead: list) -> None:
        """Dead-letter ``[(window, offset, record or None, reason)]`` (the three steps
        of the module docstring); without a dead-letter topic they are dropped."""
        letters = []
        for w, o, r, why in dead:
            if r is None:
                r = self._read_offsets(self._partition(w), [o]).get(o)
            e = w.entries[o]
            e.owner = None
            if r is None or self.dead_letter is None:
                # An expired record is done (acked) by its TTL; anything else is archived.
                e.state, e.aux = (ACKED if why == "expired" else ARCHIVED), 0
                if r is not None and why != "expired":
                    log.warning("share group %r: dropping %s-%d@%d: %s (no dead-letter topic)",
                                self.name, w.topic, w.partition, o, why)
                continue
            letters.append((w, o, r, why, e))
        if not letters:
            return
        dlq = self._dlq()
        n = dlq.num_partitions
        for w, _, _, _, e in letters:
            e.state, e.aux = DEAD_PENDING, dlq.partitions[w.partition % n].end_offset
        self.store.write(self.name, {(w.topic, w.partition): encode_window(w) for w, *_ in letters})
        self._append_letters(dlq, [(w, r, e.count, why) for w, _, r, why, e in letters])
        for *_, e in letters:
            e.state, e.aux = ARCHIVED, 0

    def _append_letters(self, dlq, letters: list) -> None:
        n = dlq.num_partitions
        by_part: dict[int, list] = {}
        for w, r, count, why in letters:
            by_part.setdefault(w.partition % n, []).append(
                (r.value, r.key, dead_letter_headers(r, w.topic, w.partition, count, why, self.name)))
        for i, items in sorted(by_part.items()):
            dlq.partitions[i].append_many([v for v, _, _ in items], [k for _, k, _ in items],
                                          [h for _, _, h in items])

    def _recover_pending(self) -> None:
        """Finish the dead letters a crash interrupted (module docstring)."""
        pending = [(w, o, e) for w in self._windows.values() for o, e in w.entries.items()
                   if e.state == DEAD_PENDING]
        if not pending:
            return
        found: set = set()
        if self.dead_letter is not None:
            dlq = self._dlq()
            lows: dict[int, int] = {}
            for w, _, e in pending:
                i = w.partition % dlq.num_partitions
                lows[i] = min(lows.get(i, e.aux), e.aux)
            for i, low in lows.items():
                p = dlq.partitions[i]
                for r in p.read(max(low, p.start_offset)):
                    h = dict(r.headers)
                    if h.get(GROUP_HEADER) == self.name.encode() and DLT_OFFSET in h:
                        found.add((h[DLT_TOPIC].decode(), _i32.unpack(h[DLT_PARTITION])[0],
                                   _i64.unpack(h[DLT_OFFSET])[0]))
        dead = []
        for w, o, e in pending:
            if (w.topic, w.partition, o) in found:
                e.state, e.aux = ARCHIVED, 0
            else:
                dead.append((w, o, None, LOST_REASON))
        self._commit({w for w, _, _ in pending}, dead)

    # -- looking -------------------------------------------------------------------------

    def describe(self) -> dict:
        from .describe import describe_windows

        with self._lock:
            ws = [Window(w.topic, w.partition, w.start, w.end, {o: _copy(e) for o, e in w.entries.items()})
                  for w in self._windows.values()]
        return describe_windows(self.broker, self.name, ws, self._wall_ms())

    def available(self) -> list[tuple[str, int, list, int]]:
        with self._lock:
            out = []
            for w in self._windows.values():
                offsets = sorted(o for o, e in w.entries.items() if e.state == AVAILABLE)
                try:
                    got = self._read_offsets(self._partition(w), offsets) if offsets else {}
                except (UnknownTopicError, IndexError):  # deleted this moment
                    continue
                out.append((w.topic, w.partition, [got[o] for o in offsets if o in got], w.end))
        return out


def _copy(e: Entry) -> Entry:
    return Entry(e.state, e.count, e.aux)


class ShareGroup:
    """One consumer's handle on a share group (``Broker.share_group``). Handles are
    cheap; records acquired through one are settled through the same one. A
    handle may be used from several threads."""

    def __init__(self, core: _Core) -> None:
        self._core = core

    @property
    def name(self) -> str:
        return self._core.name

    @property
    def topics(self) -> list[str]:
        return list(self._core.topics)

    def __repr__(self) -> str:
        return f"<ShareGroup {self.name!r} topics={self._core.topics}>"

    @property
    def lock_ms(self) -> int:
        return self._core.lock_ms

    def sibling(self) -> ShareGroup:
        """Another consumer's handle on the same group (records acquired through
        one handle are settled through that one only)."""
        return ShareGroup(self._core)

    def acquire(self, max_records: int = 100, timeout: float = 1.0, partitions=None) -> list[ShareRecord]:
        """Up to ``max_records`` records, each locked to this handle for ``lock_ms``;
        waits up to ``timeout`` seconds for one (0: never waits). ``partitions``:
        a set of (topic, partition) to take records from (None: every one)."""
        return self._core.acquire(self, max_records, timeout, partitions)

    def settle(self, topic: str, partition: int, acks, delay_ms: int = 0, reason: str = "rejected") -> None:
        """Settle by offset (a protocol door's acknowledgements): ``acks`` is
        ``[(offset, kind)]`` with kind ``accept``, ``release`` (available again
        after ``delay_ms``), ``reject`` (dead letter with ``reason``), ``gap``
        (not a record) or ``renew`` (the lock starts again), all of one
        partition, held by this handle. :raises InvalidRecordStateError:"""
        self._core.settle(self, topic, partition, acks, delay_ms, reason)

    def release_held(self) -> int:
        """Release every record this handle holds (its consumer is gone); how many."""
        return self._core.release_held(self)

    def add_topics(self, topics) -> None:
        """Extend the group to more (existing) topics, for every handle."""
        self._core.add_topics(list(topics))

    def ack(self, records: ShareRecord | Iterable[ShareRecord]) -> None:
        """Done: never handed out again. :raises InvalidRecordStateError:"""
        self._core.ack(self, records)

    def release(self, records: ShareRecord | Iterable[ShareRecord], delay_ms: int | None = None) -> None:
        """Available again: after ``delay_ms`` (0: at once; None: the group's
        backoff for the record's delivery count), or dead-lettered if it has
        been delivered ``max_attempts`` times. :raises InvalidRecordStateError:"""
        self._core.release(self, records, delay_ms)

    def reject(self, records: ShareRecord | Iterable[ShareRecord], reason: str = "rejected") -> None:
        """Dead at once: to the dead-letter topic with ``reason``, or dropped
        without one. :raises InvalidRecordStateError:"""
        self._core.reject(self, records, str(reason))

    def describe(self) -> dict:
        """The group's windows summed up (what ``umlog share-groups describe`` prints)."""
        return self._core.describe()

    def available(self) -> list[tuple[str, int, list, int]]:
        """What waits to be handed out, per partition of the group: (topic,
        partition, the records released and not acquired since, due now or after
        their delay, the window's end: records from there on were never handed
        out). Reads the released records (a protocol door counting a queue)."""
        return self._core.available()


def saved_share_groups(broker) -> list[str]:
    """The names of the share groups with saved state in ``broker``'s data dir."""
    return broker._share_groups().saved()


def delete_share_group(broker, name: str) -> None:
    """Delete share group ``name`` (saved state and open handles; see ``ShareGroups.delete``)."""
    broker._share_groups().delete(name)

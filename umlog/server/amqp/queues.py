"""AMQP exchanges, queues and bindings over the log (see the package docstring for the theory).

A ``Queue`` is a share group over the log topics of the exchanges it is bound
to; its bindings are its filter. ``Queue.pump`` hands records out to its
consumers, acknowledging in the group those that no binding routed to it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from .codec import headers_match, record_table, topic_regex
from .settings import DEFAULT_EXCHANGE_TOPIC

__all__ = ["Exchange", "Binding", "Queue", "Consumer", "QUEUE_GROUP_SETTINGS", "exchange_of_topic"]

log = logging.getLogger("umlog.server.amqp")

# A delivery is held until the client settles it or its channel closes (a lock
# that expired would hand it to a second consumer meanwhile): locks are long;
# deliveries are counted without a limit of the group's (x-delivery-limit is
# the door's, so that such a message is dead-lettered through the exchange).
QUEUE_GROUP_SETTINGS = {"max_attempts": 1_000_000, "lock_ms": 7 * 24 * 3_600_000, "backoff_ms": None,
                        "start": "latest", "expire": False}  # expiry is the queue's (``Queue.expired``)
_PER_TURN = 256  # records a consumer acquires per turn (each acquire writes the group's state once)
_PER_PUMP = 2000  # records handed out before the pump yields to the loop
_COUNT_SCAN = 1_000_000  # records scanned at most to count a queue's messages
EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers")


def exchange_of_topic(topic: str) -> str:
    return "" if topic == DEFAULT_EXCHANGE_TOPIC else topic


class Exchange:
    __slots__ = ("name", "type", "durable", "auto_delete", "internal", "arguments", "bound")

    def __init__(self, name: str, type: str, durable: bool = True, auto_delete: bool = False,
                 internal: bool = False, arguments: dict | None = None) -> None:
        self.name = name
        self.type = type
        self.durable = durable
        self.auto_delete = auto_delete
        self.internal = internal
        self.arguments = dict(arguments or {})
        self.bound = 0  # live bindings to it (auto-delete)

    @property
    def topic(self) -> str:
        return self.name or DEFAULT_EXCHANGE_TOPIC

    def to_json(self) -> dict:
        return {"name": self.name, "type": self.type, "durable": self.durable, "auto_delete": self.auto_delete,
                "internal": self.internal, "arguments": _jsonable(self.arguments)}


class Binding:
    """One binding of a queue to an exchange, live from ``since`` (end offsets of
    the exchange topic's partitions when it was made) until ``until`` (when it
    was removed; None while it stands). Records in between whose routing key
    (or headers) match were routed to the queue."""

    __slots__ = ("exchange", "type", "key", "arguments", "since", "until", "topic", "_re", "_key")

    def __init__(self, exchange: str, type: str, key: str, arguments: dict | None, since: dict[int, int],
                 until: dict[int, int] | None = None) -> None:
        self.exchange = exchange
        self.type = type
        self.key = key
        self.arguments = dict(arguments or {})
        self.since = since
        self.until = until
        self.topic = exchange or DEFAULT_EXCHANGE_TOPIC
        self._re = topic_regex(key) if type == "topic" else None
        self._key = key.encode()

    def same(self, exchange: str, key: str, arguments: dict) -> bool:
        return self.exchange == exchange and self.key == key and self.arguments == arguments

    def routes(self, key: bytes, headers, table_cache: list) -> bool:
        """Does a message with this routing key (and record headers) go through it?"""
        t = self.type
        if t == "fanout":
            return True
        if t == "direct":
            return key == self._key
        if t == "topic":
            return self._re.fullmatch(key.decode("utf-8", "replace")) is not None
        if not table_cache:
            table_cache.append(record_table(headers))
        return headers_match(self.arguments, table_cache[0])

    def to_json(self) -> dict:
        return {"exchange": self.exchange, "type": self.type, "key": self.key,
                "arguments": _jsonable(self.arguments),
                "since": {str(k): v for k, v in self.since.items()},
                "until": None if self.until is None else {str(k): v for k, v in self.until.items()}}

    @classmethod
    def from_json(cls, d: dict) -> Binding:
        return cls(d["exchange"], d["type"], d["key"], _unjson(d.get("arguments") or {}),
                   {int(k): v for k, v in d["since"].items()},
                   None if d.get("until") is None else {int(k): v for k, v in d["until"].items()})


class Consumer:
    """One basic.consume: its channel, its share-group handle (a stream: its cursors)."""

    __slots__ = ("tag", "tag_bytes", "channel", "queue", "no_ack", "prefetch", "unacked", "handle", "cursors",
                 "exclusive")

    def __init__(self, tag: str, channel, queue: Queue, no_ack: bool, prefetch: int, exclusive: bool) -> None:
        self.tag = tag
        self.tag_bytes = tag.encode()
        self.channel = channel
        self.queue = queue
        self.no_ack = no_ack
        self.prefetch = prefetch
        self.exclusive = exclusive
        self.unacked = 0
        self.handle = None
        self.cursors: dict[tuple[str, int], int] = {}

    def room(self) -> int:
        ch = self.channel
        if not ch.can_deliver():
            return 0
        room = 1 << 30
        if not self.no_ack:
            if self.prefetch:
                room = self.prefetch - self.unacked
            if ch.global_prefetch:
                room = min(room, ch.global_prefetch - ch.unacked_count())
        return room


class Queue:
    """One AMQP queue (see the package docstring)."""

    def __init__(self, door, name: str, durable: bool, exclusive, auto_delete: bool, arguments: dict,
                 gid: str) -> None:
        self.door = door
        self.name = name
        self.durable = durable
        self.owner = exclusive  # the connection of an exclusive queue, else None
        self.auto_delete = auto_delete
        self.arguments = dict(arguments)
        self.gid = gid
        self.bindings: list[Binding] = []
        self.consumers: dict[Any, Consumer] = {}
        self.had_consumer = False
        self.deleted = False
        kind = arguments.get("x-queue-type") or "classic"
        self.kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        self.ttl_ms = _int_arg(arguments, "x-message-ttl")
        self.max_length = _int_arg(arguments, "x-max-length")
        self.delivery_limit = _int_arg(arguments, "x-delivery-limit")
        self.expires_ms = _int_arg(arguments, "x-expires")
        dlx = arguments.get("x-dead-letter-exchange")
        self.dlx = dlx.decode() if isinstance(dlx, bytes) else dlx
        dlrk = arguments.get("x-dead-letter-routing-key")
        self.dlrk = dlrk.encode() if isinstance(dlrk, str) else dlrk
        self.group = None  # the base share-group handle (purge, max-length); consumers get siblings
        self._kick: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        self._turn = 0
        self._expiry: asyncio.TimerHandle | None = None

    @property
    def stream(self) -> bool:
        return self.kind == "stream"

    @property
    def group_name(self) -> str:
        return f"amqp:{self.name}:{self.gid}"

    def topics(self) -> list[str]:
        return list(dict.fromkeys(b.topic for b in self.bindings))

    def live_bindings(self) -> list[Binding]:
        return [b for b in self.bindings if b.until is None]

    def to_json(self) -> dict:
        return {"name": self.name, "auto_delete": self.auto_delete, "arguments": _jsonable(self.arguments),
                "gid": self.gid, "bindings": [b.to_json() for b in self.bindings]}

    # --- the filter ---------------------------------------------------------------------------

    def routed(self, topic: str, partition: int, offset: int, key, headers) -> bool:
        """Was this record routed to the queue (by a binding live at its offset)?"""
        k = b"" if key is None else bytes(key)
        cache: list = []
        for b in self.bindings:  # live at the offset, then the key (inline for direct ones): once per record
            if b.topic != topic or offset < b.since.get(partition, 0):
                continue
            if b.until is not None and offset >= b.until.get(partition, 1 << 62):
                continue
            if k == b._key if b.type == "direct" else b.routes(k, headers, cache):
                return True
        return False

    def expired(self, r, now_ms: int) -> bool:
        ttl = self.ttl_ms
        for k, v in r.headers:
            if (k == "amqp-expiration" or k == "umlog-ttl-ms") and v:  # (the latter from another door)
                try:
                    e = int(bytes(v))
                except ValueError:
                    continue
                ttl = e if ttl is None else min(ttl, e)
        return ttl is not None and r.timestamp + ttl <= now_ms

    # --- running ------------------------------------------------------------------------------

    def open_group(self) -> None:
        if self.stream or self.group is not None:
            return
        broker = self.door.broker
        self.group = broker.share_group(self.group_name, self.topics(), **QUEUE_GROUP_SETTINGS)

    def add_topic(self, topic: str) -> None:
        if self.group is not None and topic not in self.group.topics:
            self.group.add_topics([topic])

    def kick(self) -> None:
        k = self._kick
        if k is not None and not k.done():
            k.set_result(None)
        if self._task is None and not self.deleted and (self.consumers or self.max_length):
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _partition_keys(self) -> list[tuple[str, int]]:
        keys = []
        for t in self.topics():
            try:
                keys += [(t, i) for i in range(self.door.broker.topic(t).num_partitions)]
            except Exception:
                pass
        return keys

    async def _run(self) -> None:
        hub = self.door.hub
        loop = asyncio.get_running_loop()
        try:
            while not self.deleted and not hub.shutting_down and (self.consumers or self.max_length):
                keys = self._partition_keys()
                fut = self._kick = loop.create_future()
                hub.add_waiter(keys, fut)
                try:
                    more = self.pump()
                    if more:
                        await asyncio.sleep(0)
                    else:
                        await fut
                except Exception:
                    log.exception("amqp: queue %r: handing out messages failed", self.name)
                    await fut
                finally:
                    hub.remove_waiter(keys, fut)
        finally:
            self._task = None
            self._kick = None

    def stop(self) -> None:
        self.deleted = True
        if self._kick is not None and not self._kick.done():
            self._kick.set_result(None)
        if self._expiry is not None:
            self._expiry.cancel()

    # --- handing out --------------------------------------------------------------------------

    def pump(self) -> bool:
        """Hand out what consumers have room for; True if there may be more."""
        if self.max_length is not None and not self.stream:
            self.enforce_max_length()
        if self.stream:
            return self._pump_stream()
        consumers = list(self.consumers.values())
        if not consumers:
            return False
        sent = 0
        while sent < _PER_PUMP:
            self._turn += 1
            progressed = False
            for j in range(len(consumers)):
                c = consumers[(self._turn + j) % len(consumers)]
                if c.channel.consumers.get(c.tag) is not c:
                    continue  # cancelled meanwhile
                room = c.room()
                if room <= 0:
                    continue
                recs = c.handle.acquire(max_records=min(room, _PER_TURN), timeout=0)
                if not recs:
                    return False
                progressed = True
                sent += len(recs)
                self._hand_out(c, recs)
            if not progressed:
                return False
        return True

    def _hand_out(self, c: Consumer, recs: list) -> None:
        now_ms = time.time_ns() // 1_000_000
        skip, dead, send = [], [], []
        for rec in recs:
            reason = self.verdict(rec, now_ms)
            if reason is None:
                send.append(rec)
            elif reason == "skip":
                skip.append(rec)
            else:
                dead.append((rec, reason))
        if send:
            c.channel.deliver_many(c, send)
        if dead:
            self.dead_letter(c.handle, dead)
        if c.no_ack:
            skip += send
        if skip:
            self.door.settle(c.handle.ack, skip, self)

    def verdict(self, rec, now_ms: int) -> str | None:
        """None: deliver it; "skip": not routed here (acknowledged unseen); else a dead-letter reason."""
        if not self.routed(rec.topic, rec.partition, rec.offset, rec.key, rec.headers):
            return "skip"
        if (rec.headers or self.ttl_ms is not None) and self.expired(rec, now_ms):
            return "expired"
        if self.delivery_limit is not None and rec.delivery_count > self.delivery_limit + 1:
            return "delivery_limit"
        return None

    def dead_letter(self, handle, dead: list) -> None:
        """Republish ``[(record, reason)]`` to the dead-letter exchange (if any), then acknowledge them."""
        self.door.dead_letter(self, dead)
        self.door.settle(handle.ack, [r for r, _ in dead], self)

    def get_one(self, handle):
        """basic.get: the next routed record, acquired through ``handle``, or None."""
        now_ms = time.time_ns() // 1_000_000
        while True:
            recs = handle.acquire(max_records=1, timeout=0)
            if not recs:
                return None
            rec = recs[0]
            why = self.verdict(rec, now_ms)
            if why is None:
                return rec
            if why == "skip":
                self.door.settle(handle.ack, [rec], self)
            else:
                self.dead_letter(handle, [(rec, why)])

    # --- counting, purging, max-length ----------------------------------------------------------

    def count_ready(self, limit: int = _COUNT_SCAN) -> int:
        """Messages ready (routed, not held by a consumer, not expired): the
        released ones in the group's windows plus those past them in the log."""
        broker = self.door.broker
        now_ms = time.time_ns() // 1_000_000
        n = 0
        scanned = 0
        if self.stream:
            for t in self.topics():
                for i, p in enumerate(broker.topic(t).partitions):
                    for r in p.read(p.start_offset):
                        scanned += 1
                        if self.routed(t, i, r.offset, r.key, r.headers):
                            n += 1
                        if scanned >= limit:
                            return n
            return n
        if self.group is None:
            return 0
        for t, i, released, end in self.group.available():
            for r in released:
                if self.routed(t, i, r.offset, r.key, r.headers) and not self.expired(r, now_ms):
                    n += 1
            try:
                p = broker.topic(t).partitions[i]
            except Exception:
                continue
            if end < p.end_offset:
                for r in p.read(max(end, p.start_offset)):
                    scanned += 1
                    if self.routed(t, i, r.offset, r.key, r.headers) and not self.expired(r, now_ms):
                        n += 1
                    if scanned >= limit:
                        return n
        return n

    def purge(self) -> int:
        """Acknowledge every ready message; how many were routed here."""
        if self.stream or self.group is None:
            return 0
        handle = self.group.sibling()
        n = 0
        while True:
            recs = handle.acquire(max_records=1000, timeout=0)
            if not recs:
                return n
            n += sum(1 for r in recs if self.routed(r.topic, r.partition, r.offset, r.key, r.headers))
            self.door.settle(handle.ack, recs, self)

    def enforce_max_length(self) -> None:
        """Drop (dead-letter, reason maxlen) the oldest ready messages past x-max-length."""
        if self.group is None:
            return
        excess = self.count_ready() - self.max_length
        handle = None
        while excess > 0:
            handle = handle or self.group.sibling()
            recs = handle.acquire(max_records=min(excess, 1000), timeout=0)
            if not recs:
                return
            now_ms = time.time_ns() // 1_000_000
            skip, dead = [], []
            for r in recs:
                why = self.verdict(r, now_ms)
                if why == "skip":
                    skip.append(r)
                elif why is not None:
                    dead.append((r, why))
                elif excess > 0:
                    dead.append((r, "maxlen"))
                    excess -= 1
                else:  # acquired one too many: back where it was, as fresh as it was
                    handle.release([r], delay_ms=0)
            if skip:
                self.door.settle(handle.ack, skip, self)
            if dead:
                self.dead_letter(handle, dead)

    # --- streams -------------------------------------------------------------------------------

    def stream_start(self, c: Consumer, spec) -> None:
        """A stream consumer's cursors from ``x-stream-offset`` (first, last, next,
        an offset, a timestamp, or an interval like "1h")."""
        broker = self.door.broker
        now_ms = time.time_ns() // 1_000_000
        for b in self.live_bindings():
            t = broker.topic(b.topic)
            for i, p in enumerate(t.partitions):
                k = (b.topic, i)
                low = max(p.start_offset, b.since.get(i, 0))
                if spec is None or spec == "next":
                    at = p.end_offset
                elif spec == "first":
                    at = low
                elif spec == "last":
                    at = max(low, p.end_offset - 1)
                elif isinstance(spec, int):
                    at = max(low, spec)
                else:
                    if isinstance(spec, str):
                        ms = _interval_ms(spec)
                        ts = now_ms - ms
                    else:  # a datetime
                        ts = int(spec.timestamp() * 1000)
                    found = p.offset_for_time(ts) if hasattr(p, "offset_for_time") else None
                    at = max(low, found if found is not None else _offset_for_time(p, ts))
                c.cursors[k] = min(c.cursors.get(k, at), at) if k in c.cursors else at

    def _pump_stream(self) -> bool:
        broker = self.door.broker
        more = False
        for c in list(self.consumers.values()):
            for k, at in list(c.cursors.items()):
                room = c.room()
                if room <= 0:
                    break
                p = broker.topic(k[0]).partitions[k[1]]
                if at >= p.end_offset:
                    continue
                at = max(at, p.start_offset)
                n = 0
                for r in p.read(at, max_records=min(room * 4, 500)):
                    c.cursors[k] = r.offset + 1
                    if self.routed(k[0], k[1], r.offset, r.key, r.headers):
                        c.channel.deliver(c, _StreamRecord(r, k[0], k[1]), None)
                        n += 1
                        if n >= room:
                            break
                if c.cursors[k] < p.end_offset:
                    more = True
        return more


class _StreamRecord:
    """A record read by a stream consumer (shaped like a share group's)."""

    __slots__ = ("offset", "timestamp", "key", "value", "headers", "topic", "partition", "delivery_count")

    def __init__(self, r, topic: str, partition: int) -> None:
        self.offset, self.timestamp, self.key, self.value = r.offset, r.timestamp, r.key, r.value
        self.headers = r.headers
        self.topic, self.partition, self.delivery_count = topic, partition, 1


def _offset_for_time(p, ts: int) -> int:
    for r in p.read(p.start_offset):
        if r.timestamp >= ts:
            return r.offset
    return p.end_offset


def _interval_ms(s: str) -> int:
    units = {"s": 1000, "m": 60_000, "h": 3_600_000, "D": 86_400_000, "M": 30 * 86_400_000, "Y": 365 * 86_400_000}
    try:
        return int(s[:-1]) * units[s[-1]]
    except (ValueError, KeyError, IndexError):
        raise ValueError(f"x-stream-offset {s!r} is not first, last, next, an offset, a timestamp "
                         "or an interval (1h, 30m, 7D)") from None


def _int_arg(args: dict, name: str) -> int | None:
    v = args.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"invalid arg '{name}' for queue: {v!r} is not a non-negative integer")
    return v


def _jsonable(d: dict) -> dict:
    """Arguments tables as JSON (bytes as {"b": latin-1}, datetimes as {"t": seconds})."""
    import datetime
    import decimal

    def conv(v):
        if isinstance(v, bytes):
            return {"b": v.decode("latin-1")}
        if isinstance(v, datetime.datetime):
            return {"t": int(v.timestamp())}
        if isinstance(v, decimal.Decimal):
            return {"d": str(v)}
        if isinstance(v, dict):
            return {"m": {k: conv(x) for k, x in v.items()}}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return {k: conv(v) for k, v in d.items()}


def _unjson(d: dict) -> dict:
    import datetime
    import decimal

    def conv(v):
        if isinstance(v, dict):
            if "b" in v:
                return v["b"].encode("latin-1")
            if "t" in v:
                return datetime.datetime.fromtimestamp(v["t"], datetime.UTC)
            if "d" in v:
                return decimal.Decimal(v["d"])
            return {k: conv(x) for k, x in v.get("m", {}).items()}
        if isinstance(v, list):
            return [conv(x) for x in v]
        return v

    return {k: conv(v) for k, v in d.items()}

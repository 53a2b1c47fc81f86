"""The MQTT door: MQTT 3.1.1 and 5.0 clients on the same log as every other door.

Theory of operation
-------------------
Every PUBLISH becomes one record of the log topic ``[mqtt] topic``
(``mqtt-messages``), or of the topic of the first ``[[mqtt.route]]`` whose
filter matches its topic name: key = the MQTT topic name, value = the payload,
MQTT 5 properties as headers (``record_headers``). QoS 1 and 2 are
acknowledged once the record is durable by the server's fsync policy (the
hub's gate), so an acknowledged message survives a restart like any
acknowledged Kafka record.

Subscribers are served from the log, not from the publisher: the door tails
every partition of the messages topic and of every routed topic (``tailed``)
from its end at start (``Fanout``), woken by the hub at each append whatever
door made it, and hands each new record to the connections whose filters
match its key read as an MQTT topic name. So a Kafka producer writing key
``home/hall/temp`` into ``mqtt-messages`` reaches a subscriber of
``home/+/temp``. The QoS a subscriber gets is the lower of its subscription's
and the message's (header ``mqtt-qos``; a record from another door counts as
QoS 1: its producer had it acknowledged durably).

Sessions (``session.py``) outlive connections: a persistent one is a record
of the compacted topic ``mqtt-sessions`` holding its subscriptions, its
position in the tailed partitions and its unacknowledged messages; a client
that comes back is fed from its position up to the fan-out's and then live.
Shared subscriptions (``shared.py``) are the engine's share groups.

Retained messages are a compacted topic ``mqtt-retained`` (key = MQTT topic
name; an empty retained payload writes a tombstone), replayed into memory when
the door starts, so they survive restarts.

MQTT over WebSocket (``ws.py``) is the same connection class behind an
aiohttp WebSocket on the same loop.

Listeners: ``listen`` is one address or a list of ``mqtt://``, ``mqtts://``,
``ws://`` and ``wss://`` ones (TLS with ``tls_cert``/``tls_key``, mTLS with
``tls_client_ca``); ``ws_listen`` is one more WebSocket listener.

Security (``hub.security``, a ``[security]`` table): CONNECT with a user name
is checked against the users (``hub.authenticate_plain``; a bad password is
CONNACK 0x86 in MQTT 5, 0x04 in 3.1.1); without one the client is its
certificate's subject (mTLS) or ``User:ANONYMOUS``. PUBLISH needs WRITE on
the log topic its route maps it to: a denied one is PUBACK/PUBREC 0x87 in
MQTT 5, and in 3.1.1 acknowledged and dropped (as mosquitto does), logged
and audited either way. SUBSCRIBE needs READ on at least one log topic the
filter can be fed from (0x87 in MQTT 5, 0x80 in 3.1.1); messages of log
topics the principal may not READ are never delivered to it.

MQTT 5 subscription identifiers are kept with each subscription (in the
session record too) and every message delivered for one carries them: one
copy per message, with the identifiers of all the subscriptions it matched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from umlog._native.core import mqtt_runs

from ..door import Door
from .codec import parse_shared, topic_matches
from .settings import MQTT_SETTINGS, RETAINED_TOPIC, SESSIONS_TOPIC

__all__ = ["MqttDoor", "RETAINED_TOPIC", "SESSIONS_TOPIC", "record_headers"]

log = logging.getLogger("umlog.server.mqtt")

COMPACTED = {"cleanup.policy": "compact"}

# MQTT 5 properties kept as record headers, and the headers they come back from.
QOS_HEADER = "mqtt-qos"
RETAIN_HEADER = "mqtt-retain"
TTL_HEADER = "umlog-ttl-ms"  # the message expiry interval, as every door's TTL
# "packet id:client id" of a QoS 2 message from a persistent session (session.py),
# from the door's own key QOS2_ID in the properties it is given.
QOS2_ID_HEADER = "mqtt-qos2-id"
QOS2_ID = "umlog_qos2_id"
# "due ms:client id" of a delayed will published from its session record
# (session.py), from the door's own key WILL_ID in the properties it is given.
WILL_ID_HEADER = "mqtt-will-id"
WILL_ID = "umlog_will_id"
_PROPERTY_HEADERS = {
    "content_type": "content-type",
    "response_topic": "mqtt-response-topic",
    "correlation_data": "mqtt-correlation-data",
    "payload_format_indicator": "mqtt-payload-format",
}
_HEADER_PROPERTIES = {h: p for p, h in _PROPERTY_HEADERS.items()}
_RESERVED = {QOS_HEADER, RETAIN_HEADER, TTL_HEADER, QOS2_ID_HEADER, WILL_ID_HEADER, *_HEADER_PROPERTIES}
# The headers of a message with no retain flag and no properties, by QoS (most messages).
_PLAIN_HEADERS = PLAIN_HEADERS = tuple(((QOS_HEADER, b"%d" % qos),) for qos in range(3))
_PLAIN_QOS = {b"0": 0, b"1": 1, b"2": 2}
_ROUTED_NAMES = 4096  # topic names whose log topic (log_topic) and audience (_audience) are kept


def record_headers(qos: int, retain: bool, props: dict) -> Sequence[tuple[str, bytes]]:
    """The headers of the record a PUBLISH (or a will) becomes."""
    if not retain and not props:
        return _PLAIN_HEADERS[qos]
    h = [(QOS_HEADER, b"%d" % qos)]
    if retain:
        h.append((RETAIN_HEADER, b"1"))
    for prop, name in _PROPERTY_HEADERS.items():
        v = props.get(prop)
        if v is not None:
            h.append((name, v if isinstance(v, bytes) else str(v).encode()))
    expiry = props.get("message_expiry_interval")
    if expiry is not None:
        h.append((TTL_HEADER, b"%d" % (expiry * 1000)))
    for k, v in props.get("user_property", ()):
        h.append((k, v.encode()))
    qos2_id = props.get(QOS2_ID)
    if qos2_id is not None:
        h.append((QOS2_ID_HEADER, qos2_id.encode()))
    will_id = props.get(WILL_ID)
    if will_id is not None:
        h.append((WILL_ID_HEADER, will_id.encode()))
    return h


def with_ids(props: dict, ids: tuple) -> dict:
    """``props`` of a message as sent to one subscriber: with the identifiers of
    its subscriptions the message matched, if any (shared ``props`` untouched)."""
    return {**props, "subscription_identifier": list(ids)} if ids else props


def publish_fields(r, now_ms: int) -> tuple[int, bool, dict] | None:
    """(qos, retain, MQTT 5 properties) of a record, or None when it has expired."""
    h = r.headers
    if len(h) == 1 and h[0][0] == QOS_HEADER and h[0][1] in _PLAIN_QOS:  # most records: no look further
        return _PLAIN_QOS[h[0][1]], False, {}
    qos, retain, props = 1, False, {}
    users = []
    for k, v in r.headers:
        v = b"" if v is None else bytes(v)
        if k == QOS_HEADER:
            qos = min(2, max(0, int(v or b"1"))) if v.isdigit() else 1
        elif k == RETAIN_HEADER:
            retain = v == b"1"
        elif k == TTL_HEADER:
            try:
                left = r.timestamp + int(v) - now_ms
            except ValueError:
                continue
            if left <= 0:
                return None
            props["message_expiry_interval"] = max(1, left // 1000)
        elif k == QOS2_ID_HEADER or k == WILL_ID_HEADER:
            continue
        elif k in _HEADER_PROPERTIES:
            p = _HEADER_PROPERTIES[k]
            if p == "correlation_data":
                props[p] = v
            elif p == "payload_format_indicator":
                props[p] = 1 if v == b"1" else 0
            else:
                props[p] = v.decode("utf-8", "replace")
        else:
            users.append((k, v.decode("utf-8", "replace")))
    if users:
        props["user_property"] = users
    return qos, retain, props


class Fanout:
    """Tails the tailed topics and hands new records to matching connections."""

    def __init__(self, door: MqttDoor) -> None:
        self.door = door
        self.topics = [door.broker.topic(t) for t in door.tailed]
        # (topic, partition) -> the next offset to hand out
        self.cursors: dict[tuple[str, int], int] = {}
        for t in self.topics:
            for i, p in enumerate(t.partitions):
                self.cursors[(t.name, i)] = p.end_offset
        self.task: asyncio.Task | None = None
        # (topic, partition, offset) -> the connection that published it (no-local)
        self.origin: dict[tuple[str, int, int], Any] = {}

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    def partitions(self):
        """(key, partition) of every tailed partition; partitions added since are
        tailed from their start."""
        for t in self.topics:
            for i, p in enumerate(t.partitions):
                k = (t.name, i)
                if k not in self.cursors:
                    self.cursors[k] = p.start_offset
                yield k, p

    async def _run(self) -> None:
        hub = self.door.hub
        loop = asyncio.get_running_loop()
        while not hub.shutting_down:
            keys = [k for k, _ in self.partitions()]
            fut = loop.create_future()
            hub.add_waiter(keys, fut)
            try:
                moved = self._pump()
                if moved:
                    self.door.shares.schedule()
                else:
                    await fut
            except Exception:  # a failing read: log, look again at the next append
                log.exception("mqtt: the fan-out failed to read")
                await fut
            finally:
                hub.remove_waiter(keys, fut)

    def _pump(self) -> bool:
        """Deliver what was appended since the last look; True if anything was.

        Every connection's frames of one pump go out in one write: while
        ``door.corked`` is a list, a connection given a frame holds it and
        joins the list (``MqttConnection.write_now``), and is uncorked at the end."""
        moved = False
        now_ms = time.time_ns() // 1_000_000
        corked = self.door.corked = []
        try:
            for k, p in list(self.partitions()):
                start = self.cursors[k]
                end = p.end_offset
                if start >= end:
                    continue
                start = max(start, p.start_offset)
                records = p.read_list(start, 1000)
                moved = True
                self.cursors[k] = records[-1].offset + 1 if records else end
                self._hand_out(k, records, now_ms)
        finally:
            self.door.corked = None
            for conn in corked:
                conn.uncork()
        return moved

    def _hand_out(self, k: tuple[str, int], records: list, now_ms: int) -> None:
        """Hand ``records`` out in runs of one topic name (``mqtt_runs``): a
        burst on one topic costs one audience look-up and, per subscriber, one
        pass of the per-connection checks, not one per record. A plain run
        (nothing but the QoS header) that no tracked connection published goes
        out through ``MqttDoor.deliver_plain``, the others through
        ``deliver_run``."""
        origins = self.origin
        door = self.door
        for key, start, stop, plain in mqtt_runs(records, QOS_HEADER):
            if key is None:
                continue  # no MQTT topic name
            try:
                name = key.decode("utf-8")
            except UnicodeDecodeError:
                continue
            run = [(r, origins.pop((k[0], k[1], r.offset), None)) for r in records[start:stop]] if origins else None
            if plain and (run is None or all(o is None for _, o in run)):
                door.deliver_plain(name, records, start, stop, k, now_ms)
            else:
                door.deliver_run(name, run or [(r, None) for r in records[start:stop]], k, now_ms)


class MqttDoor(Door):
    """MQTT 3.1.1 and 5.0 over TCP and WebSocket (see the module docstring)."""

    name = "mqtt"
    settings = MQTT_SETTINGS

    def __init__(self, hub: Any, options: dict[str, Any]) -> None:
        super().__init__(hub, options)
        from .shared import Shares

        self.broker = hub.broker
        self.security = hub.security
        self.topic_name = options.get("topic") or "mqtt-messages"
        self.max_packet_size = options.get("max_packet_size") or 16 * 1024 * 1024
        self.connect_timeout_s = (options.get("connect_timeout_ms") or 10_000) / 1000
        self.max_keep_alive = options.get("max_keep_alive") or 0  # seconds; 0: no cap
        self.receive_maximum = options.get("receive_maximum") or 1024
        self.routes: list[tuple[str, str]] = [(r["filter"], r["topic"]) for r in options.get("route") or ()]
        self.tailed = list(dict.fromkeys([self.topic_name, *(t for _, t in self.routes)]))
        self._routed: dict[str, str] = {}  # MQTT topic name -> its log topic (log_topic)
        self._audiences: dict[str, list] = {}  # MQTT topic name -> who subscribes (_audience)
        self._by_filter: tuple[dict[str, list], list, bool] | None = None  # the subscriptions, indexed (_filters)
        self.corked: list | None = None  # during a fan-out pass: connections holding frames
        self.clients: dict[str, Any] = {}  # client id -> its connection (connected ones)
        self.retained: dict[str, Any] = {}  # MQTT topic name -> record
        self.fanout: Fanout | None = None
        self.store: Any = None  # SessionStore, made at start
        self.shares = Shares(self)
        self._server: asyncio.base_events.Server | None = None
        self._servers: list = []
        self._ws: Any = None
        self._wss: list = []

    @classmethod
    def enabled(cls, options: dict[str, Any]) -> bool:
        return options.get("listen") is not None or options.get("ws_listen") is not None

    # --- the Door interface ---------------------------------------------------------------

    async def start(self) -> dict[str, str]:
        """Listen on ``listen`` and/or ``ws_listen``; the addresses bound, by ready-line name."""
        from ..settings import parse_hostport
        from .protocol import MqttConnection
        from .session import SessionStore

        loop = asyncio.get_running_loop()
        self.hub.bind(loop)
        have = set(self.broker.topics())
        for name, config in ([(t, None) for t in self.tailed]
                             + [(RETAINED_TOPIC, COMPACTED), (SESSIONS_TOPIC, COMPACTED)]):
            if name not in have:
                self.hub.create_topic(name, 1, config)
        self._load_retained()
        self.store = SessionStore(self, self.broker.topic(SESSIONS_TOPIC))
        self.fanout = Fanout(self)
        self.store.load()
        self.fanout.start()
        from ..security.settings import MQTT_SCHEMES, parse_listeners
        from .ws import WebSocketListener

        bound: dict[str, str] = {}
        if self.options.get("listen") is not None:
            for i, spec in enumerate(parse_listeners(self.options["listen"], MQTT_SCHEMES, 1883)):
                where = f"[mqtt] listen {spec.scheme}://{spec.host}:{spec.port}"
                ctx = self.hub.tls.server(self.options.get("tls_cert"), self.options.get("tls_key"),
                                          self.options.get("tls_client_ca"), where) if spec.tls else None
                if spec.scheme in ("mqtt", "mqtts"):
                    server = await loop.create_server(lambda: MqttConnection(self), spec.host, spec.port,
                                                      reuse_address=True, ssl=ctx)
                    self._servers.append(server)
                    self._server = self._server or server
                    address = _address(server.sockets[0].getsockname())
                else:
                    ws = WebSocketListener(self)
                    self._wss.append(ws)
                    address = _address(await ws.start(spec.host, spec.port, ctx))
                name = "mqtt" if i == 0 else f"mqtt-{spec.scheme}"
                n = 2
                while name in bound:
                    name, n = f"mqtt-{spec.scheme}-{n}", n + 1
                bound[name] = address
        if self.options.get("ws_listen") is not None:
            host, port = parse_hostport(self.options["ws_listen"], 8080)
            self._ws = WebSocketListener(self)
            self._wss.append(self._ws)
            bound["mqtt-ws"] = _address(await self._ws.start(host, port))
        return bound

    def listening(self) -> bool:
        return any(s.is_serving() for s in self._servers) or any(w.serving for w in self._wss)

    async def drain(self) -> None:
        for s in self._servers:
            s.close()
        for w in self._wss:
            w.stop_accepting()

    async def close(self) -> None:
        for s in self._servers:
            s.close()
        self._servers = []
        self._server = None
        for w in self._wss:
            await w.close()
        self._wss = []
        self._ws = None
        if self.fanout is not None and self.fanout.task is not None:
            self.fanout.task.cancel()
        if self.store is not None:
            self.store.flush_now()

    # --- publishing ----------------------------------------------------------------------

    def log_topic(self, name: str) -> str:
        """The log topic a PUBLISH to MQTT topic ``name`` goes to (the routes'
        answers are kept for the topic names seen last: one dict look-up a message)."""
        if not self.routes:
            return self.topic_name
        t = self._routed.get(name)
        if t is None:
            t = next((t for f, t in self.routes if topic_matches(f, name)), self.topic_name)
            if len(self._routed) >= _ROUTED_NAMES:
                self._routed.clear()
            self._routed[name] = t
        return t

    def read_topics(self, f: str) -> list[str]:
        """The log topics a subscription to filter ``f`` can be fed from: the
        routes' whose filter overlaps it, and the default one."""
        out = [t for rf, t in self.routes if filters_overlap(rf, f)]
        return list(dict.fromkeys([*out, self.topic_name]))

    def may(self, conn, operation: str, log_topic: str, audit: bool = True) -> bool:
        """Security on: may this connection's principal do ``operation`` on the log topic?"""
        if audit:
            return self.hub.authorize(conn.principal, operation, "TOPIC", log_topic, conn.host, "mqtt", conn.peer)
        return self.hub.authorizer.authorize(conn.principal, operation, "TOPIC", log_topic, conn.host)

    async def publish(self, conn, topic: str, payload: bytes, qos: int, retain: bool, props: dict) -> None:
        """Append one message (and its retained copy); return once durable."""
        await self.publish_many(conn, [(topic, payload, qos, retain, props)])

    async def publish_many(self, conn, msgs: list[tuple[str, bytes, int, bool, dict]]) -> None:
        """Append messages ``(topic, payload, qos, retain, props)`` in order (and
        their retained copies); return once all are durable (``append_many``)."""
        await self.hub.durable(self.append_many(conn, msgs))

    def append_many(self, conn, msgs: list[tuple[str, bytes, int, bool, dict]]) -> dict:
        """Append messages ``(topic, payload, qos, retain, props)`` in order (and
        their retained copies) at once; the new end of each partition written,
        for ``hub.durable``.

        The messages of one log topic go in with one ``append_many`` (whole
        batches, written at once), so a burst of PUBLISHes costs one written
        batch, not one each; acknowledged then means written, as a record
        waiting in an open batch (linger_ms) would be lost by a SIGKILL after
        its PUBACK.
        """
        by_topic: dict[str, list] = {}
        for m in msgs:
            by_topic.setdefault(self.log_topic(m[0]), []).append(m)
        appended: dict[Any, int] = {}
        for name, group in by_topic.items():
            self._append_plain(conn, self.broker.topic(name), [m[0].encode() for m in group], [m[1] for m in group],
                               [record_headers(m[2], m[3], m[4]) for m in group], appended)
        for topic, payload, qos, retain, props in msgs:
            if retain:
                self._retain(topic, payload, record_headers(qos, retain, props), appended)
        return appended

    async def publish_plain(self, conn, keys: list, values: list, headers: list) -> None:
        """Append plain messages (``MqttPublishRun``: keys are the topic names'
        bytes, headers the plain QoS headers, no RETAIN) in order; return once
        durable. What ``publish_many`` does, with the lists made natively: one
        log topic look-up per distinct topic name, not per message."""
        appended: dict[Any, int] = {}
        if not self.routes:
            targets = {self.topic_name: None}
        else:
            names = {k: self.log_topic(k.decode()) for k in set(keys)}
            targets = dict.fromkeys(names.values())
        if len(targets) == 1:
            self._append_plain(conn, self.broker.topic(next(iter(targets))), keys, values, headers, appended)
        else:
            groups: dict[str, list[int]] = {}
            for i, k in enumerate(keys):
                groups.setdefault(names[k], []).append(i)
            for name, idx in groups.items():
                self._append_plain(conn, self.broker.topic(name), [keys[i] for i in idx], [values[i] for i in idx],
                                   [headers[i] for i in idx], appended)
        await self.hub.durable(appended)

    def _append_plain(self, conn, t, keys: list, values: list, headers: list, appended: dict) -> None:
        """Append records to log topic ``t``; note each partition's new end in
        ``appended`` and, while a no-local subscription exists, who published
        each record."""
        if len(t.partitions) == 1:
            offsets = t.append_many(values, keys, headers, partition=0)
            p = t.partitions[0]
            if offsets and appended.get(p, 0) <= offsets[-1]:
                appended[p] = offsets[-1] + 1
            placed = None
        else:
            placed = t.append_many(values, keys, headers)
            for i, o in placed:
                p = t.partitions[i]
                if appended.get(p, 0) <= o:
                    appended[p] = o + 1
        if conn is not None and self.fanout is not None and self._filters()[2]:  # someone has no-local
            origin = self.fanout.origin
            for i, o in placed if placed is not None else ((0, o) for o in offsets):
                origin[(t.name, i, o)] = conn

    def _retain(self, topic: str, payload: bytes, headers, appended: dict) -> None:
        """The retained copy of a message (an empty payload is a tombstone)."""
        rt = self.broker.topic(RETAINED_TOPIC)
        rmd = rt.append(payload or None, key=topic.encode(), headers=headers)
        p = rt.partition(rmd.partition)
        p.seal()
        appended[p] = rmd.offset + 1
        if payload:
            self.retained[topic] = next(iter(p.read(rmd.offset, max_records=1)))
        else:
            self.retained.pop(topic, None)

    def _load_retained(self) -> None:
        t = self.broker.topic(RETAINED_TOPIC)
        for p in t.partitions:
            for r in p.read(p.start_offset):
                if r.key is None:
                    continue
                name = r.key.decode("utf-8", "replace")
                if r.value:
                    self.retained[name] = r
                else:
                    self.retained.pop(name, None)

    # --- sessions ------------------------------------------------------------------------

    def end_offsets(self) -> dict[tuple[str, int], int]:
        return {(t, i): p.end_offset for t in self.tailed for i, p in enumerate(self.broker.topic(t).partitions)}

    def position_of(self, s) -> dict[tuple[str, int], int]:
        """Where session ``s`` stands in the tailed partitions (see session.py)."""
        if s.live and s.conn is not None and self.fanout is not None:
            pos = dict(self.fanout.cursors)
            for entry in s.conn.waiting:
                loc = entry[5]
                if loc is not None and (loc[0], loc[1]) in pos:
                    k = (loc[0], loc[1])
                    pos[k] = min(pos[k], loc[2])
            return pos
        return dict(s.pos)

    def rejoin_shares(self, s) -> None:
        for f in s.subs:
            group, real = parse_shared(f)
            if group is not None:
                self.shares.join(s, group, real)

    def read_record(self, loc: tuple[str, int, int]):
        """The record at (topic, partition, offset), or None (gone)."""
        try:
            p = self.broker.topic(loc[0]).partitions[loc[1]]
            if not p.start_offset <= loc[2] < p.end_offset:
                return None
            for r in p.read(loc[2], max_records=1):
                return r if r.offset == loc[2] else None
        except Exception:
            return None
        return None

    # --- delivering ----------------------------------------------------------------------

    def deliver_run(self, name: str, run: list, key: tuple[str, int], now_ms: int) -> None:
        """Send records ``run`` ((record, the connection that published it),
        in log order, all on topic ``name``, from partition ``key``) to the
        connections subscribed to ``name`` (``MqttConnection.send_run``)."""
        audience = self._audience(name)
        if not audience:
            return
        fielded = []
        for r, origin in run:
            fields = publish_fields(r, now_ms)
            if fields is not None:  # None: expired
                fielded.append((r, origin, fields))
        if not fielded:
            return
        for conn, subs in audience:
            conn.send_run(name, fielded, subs, key)

    def deliver_plain(self, name: str, records: list, start: int, stop: int, key: tuple[str, int],
                      now_ms: int) -> None:
        """Send ``records[start:stop]``, a plain run on topic ``name`` from
        partition ``key`` (``Fanout._hand_out``), to the connections subscribed
        to ``name`` (``MqttConnection.send_plain``)."""
        for conn, subs in self._audience(name):
            conn.send_plain(name, records, start, stop, subs, key, now_ms)

    def _audience(self, name: str) -> list:
        """(connection, its subscriptions whose filter matches ``name``) for every
        connected client with one, shared subscriptions aside. Kept per topic
        name until a subscription or a client comes or goes
        (``subscriptions_changed``): the filters are matched once per name,
        not once per message."""
        a = self._audiences.get(name)
        if a is None:
            exact, wild, _ = self._filters()
            found: dict[Any, list] = {}
            for conn, f, sub in exact.get(name, ()):
                found.setdefault(conn, []).append((f, sub))
            for conn, f, sub in wild:
                if topic_matches(f, name):
                    found.setdefault(conn, []).append((f, sub))
            a = [(conn, tuple(subs)) for conn, subs in found.items()]
            if len(self._audiences) >= _ROUTED_NAMES:
                self._audiences.clear()
            self._audiences[name] = a
        return a

    def _filters(self) -> tuple[dict[str, list], list, bool]:
        """The connected clients' subscriptions (shared ones aside) as (filter
        without wildcards -> [(connection, filter, Subscription)], the ones with
        wildcards, whether any is no-local), made again after ``subscriptions_changed``: a topic name is
        looked up among the first and matched against the second only, so
        10,000 clients on topics of their own cost one look-up, not 10,000 matches."""
        if self._by_filter is None:
            exact: dict[str, list] = {}
            wild = []
            no_local = False
            for conn in self.clients.values():
                s = conn.session
                if s is None:
                    continue
                for f, sub in s.subs.items():
                    if f.startswith("$share/"):
                        continue
                    no_local = no_local or sub.no_local
                    if "+" in f or "#" in f:
                        wild.append((conn, f, sub))
                    else:
                        exact.setdefault(f, []).append((conn, f, sub))
            self._by_filter = (exact, wild, no_local)
        return self._by_filter

    def subscriptions_changed(self) -> None:
        """A client connected or left, or its subscriptions changed: match again."""
        self._audiences.clear()
        self._by_filter = None

    def retained_for(self, f: str):
        now_ms = time.time_ns() // 1_000_000
        for name, r in list(self.retained.items()):
            if topic_matches(f, name):
                fields = publish_fields(r, now_ms)
                if fields is not None:
                    yield name, r, fields


def filters_overlap(a: str, b: str) -> bool:
    """Can one topic name match both MQTT filters ``a`` and ``b``?"""
    x, y = a.split("/"), b.split("/")
    for i in range(max(len(x), len(y))):
        p = x[i] if i < len(x) else None
        q = y[i] if i < len(y) else None
        if p == "#" or q == "#":
            return True
        if p is None or q is None:
            return False
        if p != q and p != "+" and q != "+":
            return False
    return True


def _address(sockname) -> str:
    h, p = sockname[:2]
    return f"[{h}]:{p}" if ":" in h else f"{h}:{p}"

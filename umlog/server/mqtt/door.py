"""The MQTT door: MQTT 3.1.1 and 5.0 clients on the same log as every other door.

Theory of operation
-------------------
Every PUBLISH becomes one record of the log topic ``[mqtt] topic``
(``mqtt-messages``): key = the MQTT topic name, value = the payload, MQTT 5
properties as headers (``record_headers``). QoS 1 and 2 are acknowledged once
the record is durable by the server's fsync policy (the hub's gate), so an
acknowledged message survives a restart like any acknowledged Kafka record.

Subscribers are served from the log, not from the publisher: the door tails
every partition of the topic from its end at start (``Fanout``), woken by the
hub at each append whatever door made it, and hands each new record to the
connections whose filters match its key read as an MQTT topic name. So a Kafka
producer writing key ``home/hall/temp`` into ``mqtt-messages`` reaches a
subscriber of ``home/+/temp``. The QoS a subscriber gets is the lower of its
subscription's and the message's (header ``mqtt-qos``; a record from another
door counts as QoS 1: its producer had it acknowledged durably).

Retained messages are a compacted topic ``mqtt-retained`` (key = MQTT topic
name; an empty retained payload writes a tombstone), replayed into memory when
the door starts, so they survive restarts.

What this door does not do yet, and says so to clients where MQTT 5 can: it
keeps no session after a connection ends (CONNACK's session present is always
0, QoS 1/2 messages published while a client is away are not queued for it);
shared subscriptions (``$share/...``: SUBACK 0x9E), subscription identifiers
(announced unavailable), MQTT over WebSocket, will delay (a will is published
at once), routing MQTT topics to other log topics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ..door import Door
from .settings import MQTT_SETTINGS

__all__ = ["MqttDoor", "RETAINED_TOPIC", "record_headers"]

log = logging.getLogger("umlog.server.mqtt")

RETAINED_TOPIC = "mqtt-retained"
RETAINED_CONFIG = {"cleanup.policy": "compact"}

# MQTT 5 properties kept as record headers, and the headers they come back from.
QOS_HEADER = "mqtt-qos"
RETAIN_HEADER = "mqtt-retain"
TTL_HEADER = "umlog-ttl-ms"  # the message expiry interval, as every door's TTL
_PROPERTY_HEADERS = {
    "content_type": "content-type",
    "response_topic": "mqtt-response-topic",
    "correlation_data": "mqtt-correlation-data",
    "payload_format_indicator": "mqtt-payload-format",
}
_HEADER_PROPERTIES = {h: p for p, h in _PROPERTY_HEADERS.items()}
_RESERVED = {QOS_HEADER, RETAIN_HEADER, TTL_HEADER, *_HEADER_PROPERTIES}


def record_headers(qos: int, retain: bool, props: dict) -> list[tuple[str, bytes]]:
    """The headers of the record a PUBLISH (or a will) becomes."""
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
    return h


def publish_fields(r, now_ms: int) -> tuple[int, bool, dict] | None:
    """(qos, retain, MQTT 5 properties) of a record, or None when it has expired."""
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
    """Tails the messages topic and hands new records to matching connections."""

    def __init__(self, door: MqttDoor) -> None:
        self.door = door
        self.topic = door.broker.topic(door.topic_name)
        self.cursors = [p.end_offset for p in self.topic.partitions]
        self.task: asyncio.Task | None = None
        # (partition, offset) -> the connection that published it (no-local)
        self.origin: dict[tuple[int, int], Any] = {}

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        hub = self.door.hub
        loop = asyncio.get_running_loop()
        while not hub.shutting_down:
            keys = [(self.topic.name, i) for i in range(len(self.topic.partitions))]
            fut = loop.create_future()
            hub.add_waiter(keys, fut)
            try:
                if not self._pump():
                    await fut
            finally:
                hub.remove_waiter(keys, fut)

    def _pump(self) -> bool:
        """Deliver what was appended since the last look; True if anything was."""
        moved = False
        parts = self.topic.partitions
        if len(parts) > len(self.cursors):  # partitions added: from their start
            self.cursors += [p.start_offset for p in parts[len(self.cursors):]]
        now_ms = time.time_ns() // 1_000_000
        for i, p in enumerate(parts):
            start = self.cursors[i]
            if start >= p.end_offset:
                continue
            start = max(start, p.start_offset)
            records = list(p.read(start, max_records=1000))
            if not records:
                continue
            moved = True
            self.cursors[i] = records[-1].offset + 1
            for r in records:
                origin = self.origin.pop((i, r.offset), None)
                if r.key is None:
                    continue  # no MQTT topic name
                try:
                    name = r.key.decode("utf-8")
                except UnicodeDecodeError:
                    continue
                self.door.deliver(name, r, origin, i, now_ms)
        return moved


class MqttDoor(Door):
    """MQTT 3.1.1 and 5.0 over TCP (see the module docstring)."""

    name = "mqtt"
    settings = MQTT_SETTINGS

    def __init__(self, hub: Any, options: dict[str, Any]) -> None:
        super().__init__(hub, options)
        self.broker = hub.broker
        self.topic_name = options.get("topic") or "mqtt-messages"
        self.max_packet_size = options.get("max_packet_size") or 16 * 1024 * 1024
        self.connect_timeout_s = (options.get("connect_timeout_ms") or 10_000) / 1000
        self.clients: dict[str, Any] = {}  # client id -> its connection (connected ones)
        self.retained: dict[str, Any] = {}  # MQTT topic name -> record
        self.fanout: Fanout | None = None
        self._server: asyncio.base_events.Server | None = None

    # --- the Door interface ---------------------------------------------------------------

    async def start(self) -> str:
        from ..settings import parse_hostport
        from .protocol import MqttConnection

        loop = asyncio.get_running_loop()
        self.hub.bind(loop)
        for name, config in ((self.topic_name, None), (RETAINED_TOPIC, RETAINED_CONFIG)):
            if name not in self.broker.topics():
                self.hub.create_topic(name, 1, config)
        self._load_retained()
        self.fanout = Fanout(self)
        self.fanout.start()
        host, port = parse_hostport(self.options["listen"], 1883)
        self._server = await loop.create_server(lambda: MqttConnection(self), host, port, reuse_address=True)
        h, p = self._server.sockets[0].getsockname()[:2]
        return f"[{h}]:{p}" if ":" in h else f"{h}:{p}"

    async def drain(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self.fanout is not None and self.fanout.task is not None:
            self.fanout.task.cancel()

    # --- publishing ----------------------------------------------------------------------

    async def publish(self, conn, topic: str, payload: bytes, qos: int, retain: bool, props: dict) -> None:
        """Append one message (and its retained copy); return once durable."""
        headers = record_headers(qos, retain, props)
        t = self.broker.topic(self.topic_name)
        md = t.append(payload, key=topic.encode(), headers=headers)
        if conn is not None and self.fanout is not None:
            self.fanout.origin[(md.partition, md.offset)] = conn
        appended = {t.partition(md.partition): md.offset + 1}
        if retain:
            rt = self.broker.topic(RETAINED_TOPIC)
            rmd = rt.append(payload or None, key=topic.encode(), headers=headers)
            appended[rt.partition(rmd.partition)] = rmd.offset + 1
            if payload:
                self.retained[topic] = next(iter(rt.partition(rmd.partition).read(rmd.offset, max_records=1)))
            else:
                self.retained.pop(topic, None)
        await self.hub.durable(appended)

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

    # --- delivering ----------------------------------------------------------------------

    def end_offsets(self) -> list[int]:
        return [p.end_offset for p in self.broker.topic(self.topic_name).partitions]

    def deliver(self, name: str, r, origin, partition: int, now_ms: int) -> None:
        fields = None
        for conn in list(self.clients.values()):
            qos = conn.matching_qos(name, origin, partition, r.offset)
            if qos is None:
                continue
            if fields is None:
                fields = publish_fields(r, now_ms)
                if fields is None:
                    return  # expired
            mqos, retain, props = fields
            conn.send_message(name, r.value or b"", min(qos[0], mqos), retain and qos[1], props)

    def retained_for(self, f: str):
        from .codec import topic_matches

        now_ms = time.time_ns() // 1_000_000
        for name, r in list(self.retained.items()):
            if topic_matches(f, name):
                fields = publish_fields(r, now_ms)
                if fields is not None:
                    yield name, r, fields

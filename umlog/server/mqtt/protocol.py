"""One MQTT connection: frames packets, answers them in order, and delivers.

Theory of operation
-------------------
``data_received`` only feeds the codec's reader and queues whole packets; one
task per connection (``_serve``) answers them in order, so a QoS 1 PUBACK is
written after the durable append it acknowledges and before anything that came
after it. Reading pauses while more than ``_MAX_QUEUED`` packets wait.

States: a connection first waits for CONNECT (closed after
``connect_timeout_ms`` without one); after CONNACK it serves until DISCONNECT,
a protocol error, a keep-alive timeout (1.5 x the client's keep alive with no
packet), a takeover (another connection with the same client id) or a server
shutdown. Every way out but DISCONNECT (reason 0) publishes the will.

Errors: a packet the codec refuses, or one the state forbids, ends this
connection only: MQTT 5 clients get a DISCONNECT (or, before CONNACK, a
CONNACK) with the reason code; 3.1.1 clients are disconnected, or get CONNACK
0x01 for an unknown protocol level.

Outgoing QoS 1/2 messages hold packet ids until PUBACK / PUBCOMP; at most the
client's receive maximum are in flight, the rest wait in order.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import uuid

from . import codec
from .codec import (
    Connack,
    Connect,
    Disconnect,
    MQTTError,
    PacketReader,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    check_topic_filter,
    check_topic_name,
    encode,
    parse_shared,
    topic_matches,
)

log = logging.getLogger("umlog.server.mqtt")

_MAX_QUEUED = 64
TOPIC_ALIAS_MAXIMUM = 64
# MQTT 5 reason codes the door answers with.
SUCCESS = 0x00
NO_SUBSCRIPTION_EXISTED = 0x11
UNSPECIFIED = 0x80
IMPLEMENTATION_SPECIFIC = 0x83
CLIENT_ID_NOT_VALID = 0x85
SERVER_SHUTTING_DOWN = 0x8B
KEEP_ALIVE_TIMEOUT = 0x8D
SESSION_TAKEN_OVER = 0x8E
PACKET_ID_NOT_FOUND = 0x92
TOPIC_ALIAS_INVALID = 0x94
SHARED_NOT_SUPPORTED = 0x9E
SUB_IDS_NOT_SUPPORTED = 0xA1


class MqttConnection(asyncio.Protocol):
    """One client connection (see the module docstring)."""

    def __init__(self, door) -> None:
        self.door = door
        self.hub = door.hub
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.reader = PacketReader(door.max_packet_size)
        self.queue: collections.deque = collections.deque()
        self.wakeup: asyncio.Event | None = None
        self.task: asyncio.Task | None = None
        self.version = 4
        self.client_id: str | None = None
        self.connected = False
        self.closed = False
        self.will = None
        self.keep_alive = 0
        self.last_active = 0.0
        self.busy = False
        self.subs: dict[str, codec.Subscription] = {}
        self.since: dict[str, list[int]] = {}  # filter -> end offsets of the messages topic when subscribed
        self.aliases: dict[int, str] = {}
        self.qos2_in: set[int] = set()  # PUBLISH QoS 2 ids appended, waiting for PUBREL
        self.inflight: dict[int, int] = {}  # our packet id -> PUBLISH QoS (2 until PUBREC, then 3 = PUBREL sent)
        self.waiting: collections.deque = collections.deque()  # messages held by the receive maximum
        self.receive_maximum = 65535
        self.client_max_packet = codec.MAX_PACKET_SIZE
        self._next_id = 0
        self._timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        loop = asyncio.get_running_loop()
        self.last_active = loop.time()
        if not self.hub.admit(self):
            transport.abort()
            self.closed = True
            return
        self.wakeup = asyncio.Event()
        self.task = loop.create_task(self._serve())
        self._timer = loop.call_later(self.door.connect_timeout_s, self._connect_timeout)

    def data_received(self, data: bytes) -> None:
        self.last_active = asyncio.get_running_loop().time()
        self.reader.feed(data)
        try:
            for p in self.reader.packets():
                self.queue.append(p)
        except MQTTError as e:
            self.queue.append(e)
        if len(self.queue) > _MAX_QUEUED:
            self.transport.pause_reading()
        self.wakeup.set()

    def connection_lost(self, exc) -> None:
        self._end(publish_will=True)

    # --- the hub's view -------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return not self.busy and not self.queue

    def close_idle(self, idle_s: float) -> None:
        log.info("mqtt %s: idle for %.0f s; closing connection", self.peer, idle_s)
        self.close()

    def close(self) -> None:
        """Server shutdown or hub sweep."""
        if self.connected and self.version == 5 and self.transport is not None and not self.transport.is_closing():
            self._write(Disconnect(SERVER_SHUTTING_DOWN))
        self._end(publish_will=False)

    # --- serving --------------------------------------------------------------------------

    async def _serve(self) -> None:
        try:
            while not self.closed:
                if not self.queue:
                    self.wakeup.clear()
                    if self.transport.is_reading() is False and not self.transport.is_closing():
                        self.transport.resume_reading()
                    await self.wakeup.wait()
                    continue
                p = self.queue.popleft()
                if isinstance(p, MQTTError):
                    self._refuse(p)
                    return
                self.busy = True
                try:
                    await self._handle(p)
                finally:
                    self.busy = False
        except MQTTError as e:
            self._refuse(e)
        except Exception:
            log.exception("mqtt %s: internal error; closing connection", self.peer)
            self._refuse(MQTTError("internal error", UNSPECIFIED))

    def _refuse(self, e: MQTTError) -> None:
        log.info("mqtt %s (%s): %s; closing connection", self.peer, self.client_id or "no client id", e)
        if self.transport is not None and not self.transport.is_closing():
            if not self.connected:
                if isinstance(e, codec.UnsupportedProtocolVersion) and self.version != 5:
                    self._write(Connack(False, 0x01))
                elif self.version == 5:
                    self._write(Connack(False, e.reason))
            elif self.version == 5:
                self._write(Disconnect(e.reason, {"reason_string": str(e)[:200]}))
        self._end(publish_will=True)

    async def _handle(self, p) -> None:
        if not self.connected:
            if not isinstance(p, Connect):
                raise codec.ProtocolError(f"first packet is {type(p).__name__}, not CONNECT")
            await self._connect(p)
            return
        if isinstance(p, Publish):
            await self._publish(p)
        elif isinstance(p, PubRel):
            found = p.packet_id in self.qos2_in
            self.qos2_in.discard(p.packet_id)
            self._write(PubComp(p.packet_id, SUCCESS if found else PACKET_ID_NOT_FOUND))
        elif isinstance(p, PubAck):
            self._settled(p.packet_id, 1)
        elif isinstance(p, PubRec):
            if self.inflight.get(p.packet_id) == 2 and p.reason < 0x80:
                self.inflight[p.packet_id] = 3
                self._write(PubRel(p.packet_id))
            else:
                self._settled(p.packet_id, 2)
        elif isinstance(p, PubComp):
            self._settled(p.packet_id, 3)
        elif isinstance(p, Subscribe):
            self._subscribe(p)
        elif isinstance(p, Unsubscribe):
            reasons = []
            for f in p.filters:
                self.since.pop(f, None)
                reasons.append(SUCCESS if self.subs.pop(f, None) is not None else NO_SUBSCRIPTION_EXISTED)
            self._write(Unsuback(p.packet_id, reasons if self.version == 5 else None))
        elif isinstance(p, PingReq):
            self._write(PingResp())
        elif isinstance(p, Disconnect):
            # MQTT 5 reason 0x04: "disconnect with will message".
            self._end(publish_will=p.reason == 0x04)
        elif isinstance(p, Connect):
            raise codec.ProtocolError("a second CONNECT")
        else:
            raise codec.ProtocolError(f"{type(p).__name__} is not sent by a client")

    async def _connect(self, p: Connect) -> None:
        self.version = self.reader.version = 5 if p.version == 5 else 4
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        props = {}
        cid = p.client_id
        if not cid:
            if self.version != 5 and not p.clean_start:
                self._write(Connack(False, 0x02))  # identifier rejected (3.1.1: a session needs an id)
                self._end(publish_will=False)
                return
            cid = "umlog-" + uuid.uuid4().hex
            if self.version == 5:
                props["assigned_client_identifier"] = cid
        if p.will is not None:
            check_topic_name(p.will.topic)
        if self.version == 5:
            self.receive_maximum = p.properties.get("receive_maximum", 65535)
            self.client_max_packet = p.properties.get("maximum_packet_size", codec.MAX_PACKET_SIZE)
            props.update(topic_alias_maximum=TOPIC_ALIAS_MAXIMUM, retain_available=1,
                         wildcard_subscription_available=1, subscription_identifier_available=0,
                         shared_subscription_available=0, maximum_packet_size=self.door.max_packet_size)
        old = self.door.clients.get(cid)
        if old is not None and old is not self:
            log.info("mqtt %s: client id %r connected again from %s; closing the older connection",
                     old.peer, cid, self.peer)
            old.taken_over()
        self.client_id = cid
        self.will = p.will
        self.keep_alive = p.keep_alive
        self.door.clients[cid] = self
        self.connected = True
        # No session outlives its connection yet: session present is always 0.
        self._write(Connack(False, 0, props))
        if self.keep_alive:
            self._arm_keep_alive()

    def taken_over(self) -> None:
        if self.version == 5:
            self._write(Disconnect(SESSION_TAKEN_OVER))
        self._end(publish_will=True)

    # --- keep alive ----------------------------------------------------------------------

    def _connect_timeout(self) -> None:
        self._timer = None
        if not self.connected:
            log.info("mqtt %s: no CONNECT within %.1f s; closing connection", self.peer, self.door.connect_timeout_s)
            self._end(publish_will=False)

    def _arm_keep_alive(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.keep_alive * 1.5, self._check_keep_alive)

    def _check_keep_alive(self) -> None:
        self._timer = None
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        quiet = loop.time() - self.last_active
        limit = self.keep_alive * 1.5
        if quiet >= limit:
            log.info("mqtt %s (%s): nothing for %.1f s (keep alive %d s); closing connection", self.peer,
                     self.client_id, quiet, self.keep_alive)
            if self.version == 5:
                self._write(Disconnect(KEEP_ALIVE_TIMEOUT))
            self._end(publish_will=True)
        else:
            self._timer = loop.call_later(limit - quiet, self._check_keep_alive)

    # --- publish in --------------------------------------------------------------------

    async def _publish(self, p: Publish) -> None:
        topic = p.topic
        alias = p.properties.pop("topic_alias", None) if self.version == 5 else None
        if alias is not None:
            if not 1 <= alias <= TOPIC_ALIAS_MAXIMUM:
                raise MQTTError(f"topic alias {alias} outside 1..{TOPIC_ALIAS_MAXIMUM}", TOPIC_ALIAS_INVALID)
            if topic:
                self.aliases[alias] = topic
            else:
                topic = self.aliases.get(alias)
                if topic is None:
                    raise codec.ProtocolError(f"topic alias {alias} used before it was set")
        if "subscription_identifier" in p.properties:
            raise codec.ProtocolError("a client PUBLISH with a subscription identifier")
        check_topic_name(topic)
        if p.qos == 2 and p.packet_id in self.qos2_in:
            self._write(PubRec(p.packet_id))  # a resend before PUBREL: stored once already
            return
        await self.door.publish(self, topic, p.payload, p.qos, p.retain, p.properties)
        if p.qos == 1:
            self._write(PubAck(p.packet_id))
        elif p.qos == 2:
            self.qos2_in.add(p.packet_id)
            self._write(PubRec(p.packet_id))

    # --- subscriptions ----------------------------------------------------------------

    def _subscribe(self, p: Subscribe) -> None:
        if self.version == 5 and "subscription_identifier" in p.properties:
            raise MQTTError("subscription identifiers are not supported", SUB_IDS_NOT_SUPPORTED)
        reasons, fresh = [], []
        for s in p.subscriptions:
            try:
                share, f = parse_shared(s.filter)
                check_topic_filter(f)
            except MQTTError as e:
                reasons.append(e.reason if self.version == 5 else UNSPECIFIED)
                continue
            if share is not None:
                reasons.append(SHARED_NOT_SUPPORTED if self.version == 5 else UNSPECIFIED)
                continue
            existed = s.filter in self.subs
            self.subs[s.filter] = s
            # Records appended before this SUBSCRIBE are not for it, even if the
            # fan-out has not reached them yet (a retained copy may be on its way).
            self.since[s.filter] = self.door.end_offsets()
            reasons.append(s.qos)
            if s.retain_handling == 0 or (s.retain_handling == 1 and not existed):
                fresh.append(s)
        self._write(Suback(p.packet_id, reasons))
        for s in fresh:
            for name, r, (qos, _retain, props) in self.door.retained_for(s.filter):
                self.send_message(name, r.value or b"", min(qos, s.qos), True, props)

    def matching_qos(self, name: str, origin, partition: int, offset: int) -> tuple[int, bool] | None:
        """(highest QoS, retain as published) over this client's filters that match
        the record at ``partition``/``offset``, or None."""
        if not self.connected or not self.subs:
            return None
        best = None
        for f, s in self.subs.items():
            if (s.no_local and origin is self) or not topic_matches(f, name):
                continue
            since = self.since.get(f)
            if since is not None and partition < len(since) and offset < since[partition]:
                continue
            if best is None or s.qos > best[0]:
                best = (s.qos, s.retain_as_published)
        return best

    # --- publish out -------------------------------------------------------------------

    def send_message(self, topic: str, payload: bytes, qos: int, retain: bool, props: dict) -> None:
        if self.closed:
            return
        if qos and len(self.inflight) >= self.receive_maximum:
            self.waiting.append((topic, payload, qos, retain, props))
            return
        self._send(topic, payload, qos, retain, props)

    def _send(self, topic, payload, qos, retain, props) -> None:
        pid = None
        if qos:
            pid = self._packet_id()
            self.inflight[pid] = qos
        frame = encode(Publish(topic, payload, qos, retain, False, pid, props if self.version == 5 else None),
                       self.version)
        if len(frame) > self.client_max_packet:
            if pid is not None:
                del self.inflight[pid]
            log.info("mqtt %s: a %d-byte message on %r is over the client's maximum packet size; not sent",
                     self.peer, len(frame), topic)
            return
        self.transport.write(frame)

    def _packet_id(self) -> int:
        while True:
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self.inflight:
                return self._next_id

    def _settled(self, pid: int, step: int) -> None:
        if self.inflight.get(pid) == step:
            del self.inflight[pid]
            while self.waiting and len(self.inflight) < self.receive_maximum:
                self._send(*self.waiting.popleft())
        else:
            log.debug("mqtt %s: acknowledgement of unknown packet id %d", self.peer, pid)

    # --- the end --------------------------------------------------------------------------

    def _write(self, p) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode(p, self.version))

    def _end(self, publish_will: bool) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.client_id is not None and self.door.clients.get(self.client_id) is self:
            del self.door.clients[self.client_id]
        will, self.will = self.will, None
        if publish_will and will is not None and self.connected and not self.hub.shutting_down:
            asyncio.get_running_loop().create_task(self._publish_will(will))
        self.hub.forget(self)
        if self.transport is not None:
            self.transport.close()
        if self.wakeup is not None:
            self.wakeup.set()

    async def _publish_will(self, will) -> None:
        try:
            await self.door.publish(None, will.topic, will.payload, will.qos, will.retain, dict(will.properties))
        except Exception:
            log.exception("mqtt %s: publishing the will of %r failed", self.peer, self.client_id)

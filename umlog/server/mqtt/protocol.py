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
shutdown. Every way out but DISCONNECT (reason 0) publishes the will (after
the MQTT 5 will delay, if the session outlives the connection: ``_will_out``).

Errors: a packet the codec refuses, or one the state forbids, ends this
connection only: MQTT 5 clients get a DISCONNECT (or, before CONNACK, a
CONNACK) with the reason code; 3.1.1 clients are disconnected, or get CONNACK
0x01 for an unknown protocol level.

The connection's session (``session.py``) holds what outlives it: the
subscriptions, the QoS 1/2 messages in flight (packet id -> message, until
PUBACK / PUBCOMP), the QoS 2 ids received and not released, the position in
the log. At most the client's receive maximum are in flight (and at most
``SESSION_WINDOW`` for a persistent session, whose record lists them); the rest
wait in order (``waiting``). A session (kept or clean) that falls more than
``MAX_WAITING`` behind drops its waiting messages and reads them again from
the log (``_catch_up``), as a kept one does when it comes back: a slow
subscriber costs the server no memory beyond that (QoS 0 messages published
meanwhile are not sent to it, as for a kept session while away).

Frames to a persistent session's client go through ``outbox``: written once
the session record that accounts for them is (``SessionStore``).

The transport is asyncio's (TCP) or ``ws.WsTransport`` (WebSocket): the same
few methods.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
import operator
import time
import uuid

from umlog._native.core import (
    MqttAckRun,
    MqttPublishRun,
    mqtt_encode_run,
    mqtt_encode_waiting,
    mqtt_runs,
    mqtt_settle,
    mqtt_wait_run,
)

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
    encode_publish,
    parse_shared,
    topic_matches,
)
from .door import PLAIN_HEADERS, QOS2_ID, QOS_HEADER, publish_fields, with_ids
from .session import NEVER, Outgoing, PendingWill, Session

log = logging.getLogger("umlog.server.mqtt")
_offset = operator.attrgetter("offset")

_MAX_QUEUED = 64
_LINGER_S = 1.0  # a closed connection's input is read and dropped this long (_close_transport)
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
RECEIVE_MAXIMUM_EXCEEDED = 0x93
TOPIC_ALIAS_INVALID = 0x94
BAD_USER_NAME_OR_PASSWORD = 0x86  # CONNACK, MQTT 5 (3.1.1: return code 4)
NOT_AUTHORIZED = 0x87
# Messages in flight to a persistent session (each is in its record), and how
# many may wait behind them before it reads them from the log again instead.
SESSION_WINDOW = 1000
MAX_WAITING = 1000


class MqttConnection(asyncio.Protocol):
    """One client connection (see the module docstring)."""

    def __init__(self, door) -> None:
        self.door = door
        self.hub = door.hub
        self.transport = None
        self.peer = "?"
        self.host = "*"
        self.principal: str | None = None  # set at CONNECT when security is on
        self.reader = PacketReader(door.max_packet_size)
        self.queue: collections.deque = collections.deque()
        self.wakeup: asyncio.Event | None = None
        self.task: asyncio.Task | None = None
        self.version = 4
        self.client_id: str | None = None
        self.session = None
        self.connected = False
        self.closed = False
        self.will = None
        self.keep_alive = 0
        self.last_active = 0.0
        self.busy = False
        self.aliases: dict[int, str] = {}  # the client's topic aliases
        # ours towards the client (MQTT 5: as many as its Topic Alias Maximum): topic name -> alias
        self.aliases_out: dict[str, int] = {}
        self.alias_out_max = 0
        # messages held by the receive maximum: (topic, payload, qos, retain, props, loc, share)
        self.waiting: collections.deque = collections.deque()
        self.outbox: list[bytes] = []
        self._corked: list[bytes] | None = None  # frames held for one write (write_now)
        self.receive_maximum = 65535
        self.client_max_packet = codec.MAX_PACKET_SIZE
        self.handover = False  # taken over: the session goes on with the new connection
        self._room = asyncio.Event()
        self._catching_up: asyncio.Task | None = None
        self._timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.host = peer[0] if peer else "*"
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
        if self.closed:
            return
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

    def abort(self) -> None:
        """The session could not be written: end without a word."""
        self.outbox = []
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
                    kind = type(p)
                    if kind is MqttPublishRun:
                        await self._publish_plain(self._take_runs(p))
                    elif kind is MqttAckRun:
                        self._acked_plain(self._take_runs(p))
                    elif kind is Publish and self.connected:
                        await self._publish_run(self._take_run(p))
                    elif kind is PubAck and self.connected:
                        self._acked(self._take_run(p))
                    else:
                        await self._handle(p)
                finally:
                    self.busy = False
        except MQTTError as e:
            self._refuse(e)
        except Exception:
            log.exception("mqtt %s: internal error; closing connection", self.peer)
            self._refuse(MQTTError("internal error", UNSPECIFIED))

    def _take_run(self, first) -> list:
        """``first`` and the packets of its type queued right behind it (a burst of
        PUBLISHes is stored together, one of PUBACKs settled together)."""
        run = [first]
        kind = type(first)
        q = self.queue
        while q and type(q[0]) is kind:
            run.append(q.popleft())
        return run

    def _take_runs(self, first):
        """``first`` (an MqttPublishRun or MqttAckRun) with the runs of its kind
        queued right behind it taken in."""
        kind = type(first)
        q = self.queue
        while q and type(q[0]) is kind:
            first.absorb(q.popleft())
        return first

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
        s = self.session
        if isinstance(p, Publish):
            await self._publish_run([p])
        elif isinstance(p, PubRel):
            found = p.packet_id in s.qos2_in
            s.qos2_in.discard(p.packet_id)
            if found:
                self.door.store.mark(s)
            self._write(PubComp(p.packet_id, SUCCESS if found else PACKET_ID_NOT_FOUND))
        elif isinstance(p, PubAck):
            self._settled(p.packet_id, 1)
        elif isinstance(p, PubRec):
            out = s.inflight.get(p.packet_id)
            if out is not None and out.state == 2 and p.reason < 0x80:
                out.state = 3
                if out.share is not None:  # the client holds it now: done for the share group
                    self.door.shares.ack(out.share)
                    out.share = None
                self.door.store.mark(s)
                self._write(PubRel(p.packet_id))
            else:
                self._settled(p.packet_id, 2)
        elif isinstance(p, PubComp):
            self._settled(p.packet_id, 3)
        elif isinstance(p, Subscribe):
            self._subscribe(p)
        elif isinstance(p, Unsubscribe):
            self._unsubscribe(p)
        elif isinstance(p, PingReq):
            self._write(PingResp())
        elif isinstance(p, Disconnect):
            expiry = p.properties.get("session_expiry_interval") if self.version == 5 else None
            if expiry is not None:
                if s.expiry == 0 and expiry != 0:
                    raise codec.ProtocolError("DISCONNECT sets a session expiry on a session that had none")
                s.expiry = None if expiry == NEVER else expiry
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
        if self.door.security is not None:
            self.principal = self._authenticate(p)
            if self.principal is None:
                self._write(Connack(False, BAD_USER_NAME_OR_PASSWORD if self.version == 5 else 0x04))
                self._end(publish_will=False)
                return
        if self.version == 5:
            expiry = p.properties.get("session_expiry_interval", 0)
            expiry = None if expiry == NEVER else expiry
            self.receive_maximum = p.properties.get("receive_maximum", 65535)
            self.client_max_packet = p.properties.get("maximum_packet_size", codec.MAX_PACKET_SIZE)
            self.alias_out_max = p.properties.get("topic_alias_maximum", 0)
            props.update(topic_alias_maximum=TOPIC_ALIAS_MAXIMUM, retain_available=1,
                         wildcard_subscription_available=1,
                         shared_subscription_available=1, maximum_packet_size=self.door.max_packet_size)
            if self.door.receive_maximum < 65535:
                props["receive_maximum"] = self.door.receive_maximum
        else:
            expiry = 0 if p.clean_start else None  # 3.1.1: a persistent session never expires
        keep_alive = self._keep_alive(p.keep_alive, props)
        if keep_alive is None:
            self._write(Connack(False, 0x02))  # 3.1.1 cannot be told another keep alive: identifier rejected
            self._end(publish_will=False)
            return
        store = self.door.store
        old = self.door.clients.get(cid)
        if old is not None and old is not self:
            log.info("mqtt %s: client id %r connected again from %s; closing the older connection",
                     old.peer, cid, self.peer)
            old.taken_over()
        s = store.sessions.get(cid)
        if s is not None and p.clean_start:
            store.discard(s)
            s = None
        present = s is not None
        if s is None:
            s = store.sessions[cid] = Session(cid, self.version, expiry)
            s.live = True  # a new session starts at the fan-out's position
        else:
            s.version, s.expiry = self.version, expiry
            s.cancel_will()  # resumed within the will delay: no will
            if s.timer is not None:
                s.timer.cancel()
                s.timer = None
        self.client_id = cid
        self.will = p.will
        self.keep_alive = keep_alive
        self.door.clients[cid] = self
        self.door.subscriptions_changed()
        self.session = s
        s.conn = self
        s.gone_at = None
        self.connected = True
        if self.principal is None:  # the plain message path (see _publish_plain); ACLs need the per-packet one
            self.reader.plain_headers = PLAIN_HEADERS
        store.mark(s)
        self._write(Connack(present, 0, props))
        if self.keep_alive:
            self._arm_keep_alive()
        if present:
            self._resend()
            self.door.rejoin_shares(s)
            if not s.live:
                self._catching_up = asyncio.get_running_loop().create_task(self._catch_up())

    def _keep_alive(self, asked: int, props: dict) -> int | None:
        """The keep alive this connection is held to: the client's, or, when it
        asks for none or more than ``max_keep_alive``, the cap, told to an MQTT
        5 client as Server Keep Alive (in ``props``). None: a 3.1.1 client asked
        for more, and cannot be told (refused, as mosquitto's max_keepalive does:
        holding it to less than it keeps to would close it whenever it idles)."""
        cap = self.door.max_keep_alive
        if not cap or 0 < asked <= cap:
            return asked
        if self.version != 5:
            log.info("mqtt %s: keep alive %d s asked for, more than max_keep_alive %d s; refused", self.peer,
                     asked, cap)
            return None
        props["server_keep_alive"] = cap
        return cap

    def _authenticate(self, p: Connect) -> str | None:
        """The principal of a CONNECT (security on): its user name and password
        checked, else the client certificate's subject, else anonymous."""
        from ..security import ANONYMOUS
        from ..security.tls import cert_principal

        if p.username is not None:
            password = (p.password or b"").decode("utf-8", "replace")
            return self.hub.authenticate_plain(p.username, password, "mqtt", self.peer)
        return cert_principal(self.transport) or ANONYMOUS

    def taken_over(self) -> None:
        if self.version == 5:
            self._write(Disconnect(SESSION_TAKEN_OVER))
        self.handover = True
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

    def _publish_topic(self, p: Publish) -> str:
        """The topic name of a client PUBLISH, its alias resolved (and set), checked."""
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
        return topic

    async def _publish_run(self, run: list[Publish]) -> None:
        """Consecutive client PUBLISHes, stored together and answered in order.

        Each is checked as it comes (alias, topic name, QoS 2 resend, WRITE);
        the ones to store go to the log in one ``door.publish_many`` (one
        append per log topic, one wait for durability), then every answer is
        written in one go, in the order of the PUBLISHes. A PUBLISH the
        codec's checks refuse ends the run: the ones before it are stored and
        answered, then the connection is refused.

        Receive Maximum (MQTT 5, 4.9): a new QoS 2 PUBLISH while the door's
        ``receive_maximum`` are unacknowledged (PUBREC'd awaiting PUBREL in
        ``qos2_in``, or earlier in this run) refuses the connection with 0x93.
        QoS 1 ones are not counted: each is acknowledged as soon as it is
        stored and holds nothing after, what waits unread is bounded by the
        read queue (``_MAX_QUEUED``), and the server's 0x93 is no requirement
        of the spec (the client's MUST NOT is, MQTT-3.3.4-7), so the plain path
        (``_publish_plain``) does no count.
        """
        s = self.session
        msgs = []
        answers = []  # (packet, stored?) in order; a packet not stored has its answer ready
        held = set()  # QoS 2 packet ids of this run: a repeat is a resend
        ends = None  # the log's end offsets, once a QoS 2 message is pending
        error = None
        for p in run:
            try:
                topic = self._publish_topic(p)
            except MQTTError as e:
                error = e
                break
            if p.qos == 2 and (p.packet_id in s.qos2_in or p.packet_id in held):
                answers.append((PubRec(p.packet_id), False))  # a resend before PUBREL: stored once already
                continue
            if self.principal is not None and not self.door.may(self, "WRITE", self.door.log_topic(topic)):
                log.info("mqtt %s (%s): PUBLISH to %r denied to %s", self.peer, self.client_id, topic,
                         self.principal)
                reason = NOT_AUTHORIZED if self.version == 5 else 0
                if p.qos:
                    answers.append(((PubAck if p.qos == 1 else PubRec)(p.packet_id, reason), False))
                continue
            props = p.properties
            if p.qos == 2:
                if self.version == 5 and len(s.qos2_in) + len(held) >= self.door.receive_maximum:
                    error = MQTTError(f"more than {self.door.receive_maximum} QoS 2 PUBLISHes unacknowledged "
                                      "(receive maximum)", RECEIVE_MAXIMUM_EXCEEDED)
                    break
                held.add(p.packet_id)
                if s.persistent:  # exactly once across a stop (session.py)
                    s.in2_pending[p.packet_id] = ends = ends or self.door.end_offsets()
                    props = {**props, QOS2_ID: f"{p.packet_id}:{self.client_id}"}
            msgs.append((topic, p.payload, p.qos, p.retain, props))
            answers.append((p, True))
        if ends:
            self.door.store.write_at_once(s)
        if msgs:
            await self.door.publish_many(self, msgs)
        frames = []
        for a, stored in answers:
            if not stored:
                frames.append(encode(a, self.version))
            elif a.qos == 1:
                frames.append(codec.encode_ack(codec.PUBACK, a.packet_id))
            elif a.qos == 2:
                s.qos2_in.add(a.packet_id)
                s.in2_pending.pop(a.packet_id, None)
                self.door.store.mark(s)
                frames.append(codec.encode_ack(codec.PUBREC, a.packet_id))
        if frames:
            self._write_frame(b"".join(frames))
        if error is not None:
            raise error

    async def _publish_plain(self, run: MqttPublishRun) -> None:
        """A run of plain PUBLISHes (QoS 0 or 1, no RETAIN, no properties, topic
        names checked: ``mqtt_scan``), stored together, then every PUBACK in one
        write: what ``_publish_run`` does for them, without a Python object per
        message. Only while no principal is set (no ACL to check per message)."""
        await self.door.publish_plain(self, run.keys, run.values, run.headers)
        acks = run.acks
        if acks:
            self._write_frame(acks)

    # --- subscriptions ----------------------------------------------------------------

    def _subscribe(self, p: Subscribe) -> None:
        sub_id = self._subscription_identifier(p)
        s = self.session
        reasons, fresh = [], []
        for sub in p.subscriptions:
            try:
                share, f = parse_shared(sub.filter)
                check_topic_filter(f)
            except MQTTError as e:
                reasons.append(e.reason if self.version == 5 else UNSPECIFIED)
                continue
            if share is not None and sub.no_local:
                raise codec.ProtocolError(f"no local on the shared subscription {sub.filter!r}")
            if self.principal is not None and not self._may_subscribe(f):
                log.info("mqtt %s (%s): SUBSCRIBE to %r denied to %s", self.peer, self.client_id, sub.filter,
                         self.principal)
                reasons.append(NOT_AUTHORIZED if self.version == 5 else UNSPECIFIED)
                continue
            existed = sub.filter in s.subs
            s.subs[sub.filter] = sub
            if sub_id is None:
                s.sub_ids.pop(sub.filter, None)
            else:
                s.sub_ids[sub.filter] = sub_id
            reasons.append(sub.qos)
            if share is not None:
                self.door.shares.join(s, share, f)
                continue  # retained messages are not sent to shared subscriptions
            # Records appended before this SUBSCRIBE are not for it, even if the
            # fan-out has not reached them yet (a retained copy may be on its way).
            if not existed:
                s.since[sub.filter] = self.door.end_offsets()
            if sub.retain_handling == 0 or (sub.retain_handling == 1 and not existed):
                fresh.append(sub)
        self.door.store.mark(s)
        self.door.subscriptions_changed()
        self._write(Suback(p.packet_id, reasons))
        for sub in fresh:
            for name, r, (qos, _retain, props) in self.door.retained_for(sub.filter):
                props = with_ids(props, () if sub_id is None else (sub_id,))
                self.send_message(name, r.value or b"", min(qos, sub.qos), True, props,
                                  (r.topic, r.partition, r.offset))

    def _subscription_identifier(self, p: Subscribe) -> int | None:
        """The subscription identifier of an MQTT 5 SUBSCRIBE (at most one), or None."""
        ids = p.properties.get("subscription_identifier") if self.version == 5 else None
        if not ids:
            return None
        if len(ids) > 1:
            raise codec.ProtocolError("a SUBSCRIBE with more than one subscription identifier")
        return ids[0]

    def _may_subscribe(self, f: str) -> bool:
        """READ on at least one log topic the filter can be fed from (a denial of
        every one is audited once)."""
        topics = self.door.read_topics(f)
        if any(self.door.may(self, "READ", t, audit=False) for t in topics):
            return True
        self.door.may(self, "READ", topics[-1])
        return False

    def _unsubscribe(self, p: Unsubscribe) -> None:
        s = self.session
        reasons = []
        for f in p.filters:
            s.since.pop(f, None)
            s.sub_ids.pop(f, None)
            found = s.subs.pop(f, None) is not None
            reasons.append(SUCCESS if found else NO_SUBSCRIPTION_EXISTED)
            if found:
                try:
                    share, real = parse_shared(f)
                except MQTTError:
                    continue
                if share is not None:
                    self.door.shares.leave(s, share, real)
        self.door.store.mark(s)
        self.door.subscriptions_changed()
        self._write(Unsuback(p.packet_id, reasons if self.version == 5 else None))

    def matching_qos(self, name: str, origin, key: tuple[str, int], offset: int) -> tuple[int, bool, tuple] | None:
        """(highest QoS, retain as published, subscription identifiers) over this
        session's filters that match the record at ``key``/``offset``, or None."""
        s = self.session
        if not self.connected or s is None or not s.subs:
            return None
        return self.best_qos([(f, sub) for f, sub in s.subs.items()
                              if not f.startswith("$share/") and topic_matches(f, name)], origin, key, offset)

    def best_qos(self, subs, origin, key: tuple[str, int], offset: int) -> tuple[int, bool, tuple] | None:
        """(highest QoS, retain as published, subscription identifiers) over
        ``subs`` ((filter, Subscription) pairs whose filter matches the record's
        topic name) that take the record at ``key``/``offset`` (no-local,
        subscribed before it), or None. The one copy sent carries the
        identifiers of every such subscription that has one (MQTT 5 3.3.4)."""
        s = self.session
        since_of, ids_of = s.since, s.sub_ids
        best = None
        ids = ()
        for f, sub in subs:
            if sub.no_local and origin is self:
                continue
            since = since_of.get(f)
            if since is not None and offset < since.get(key, 0):
                continue
            if best is None or sub.qos > best[0]:
                best = (sub.qos, sub.retain_as_published)
            if ids_of and f in ids_of:
                ids += (ids_of[f],)
        return None if best is None else (*best, ids)

    # --- publish out -------------------------------------------------------------------

    def ready(self) -> bool:
        return self.connected and not self.closed

    def window(self) -> int:
        s = self.session
        return min(self.receive_maximum, SESSION_WINDOW) if s is not None and s.persistent else self.receive_maximum

    def room(self) -> int:
        """How many more QoS 1/2 messages may be sent now (none wait)."""
        return self.window() - len(self.session.inflight) - len(self.waiting)

    def send_message(self, topic: str, payload: bytes, qos: int, retain: bool, props: dict,
                     loc: tuple[str, int, int] | None = None, share=None) -> None:
        s = self.session
        if self.closed or s is None:
            if share is not None:
                self.door.shares.give_back(share)
            return
        if (self.principal is not None and share is None
                and not self.door.may(self, "READ", self.door.log_topic(topic), audit=False)):
            return  # fed from a log topic this principal may not READ
        if qos and len(s.inflight) >= self.window():
            self.waiting.append((topic, payload, qos, retain, props, loc, share))
            if len(self.waiting) > MAX_WAITING and s.live:
                self._fall_behind()
            return
        self._send(topic, payload, qos, retain, props, loc, share)

    def send_run(self, topic: str, run: list, subs: tuple, key: tuple[str, int]) -> None:
        """The fan-out's records ``run`` ((record, the connection that published
        it, ``publish_fields``), in log order, all on ``topic``, from partition
        ``key``) that this connection's subscriptions ``subs`` take, sent as
        ``send_message`` would send them one by one; what holds for the whole
        run (the session, the ACL) is checked once, and the frames go in one write."""
        s = self.session
        if s is None or not s.live or not self.connected or self.closed:
            return
        if self.principal is not None and not self.door.may(self, "READ", self.door.log_topic(topic), audit=False):
            return  # fed from a log topic this principal may not READ
        inflight = s.inflight
        window = self.window()
        frames = []
        kept = False
        fixed = self._run_qos(subs, key, run[0][0].offset)
        for r, origin, (mqos, retain, props) in run:
            if fixed is None:
                best = self.best_qos(subs, origin, key, r.offset)
            else:
                best = fixed[origin is self]
            if best is None:
                continue
            qos = min(best[0], mqos)
            args = (topic, r.value or b"", qos, retain and best[1], with_ids(props, best[2]),
                    (key[0], key[1], r.offset))
            if qos and len(inflight) >= window:
                self.send_message(*args)  # waits for room, or falls behind
                if not s.live:
                    break
                continue
            frame = self._frame(*args, None)
            if frame is not None:
                frames.append(frame)
                kept = kept or qos > 0
        if kept:
            self.door.store.mark(s)
        if frames:
            self._write_frame(frames[0] if len(frames) == 1 else b"".join(frames))

    def send_plain(self, topic: str, records: list, start: int, stop: int, subs: tuple,
                   key: tuple[str, int], now_ms: int) -> None:
        """``records[start:stop]``, a plain run (``mqtt_runs``: every record
        on ``topic``, from partition ``key``, with nothing but its QoS header,
        published by no connection that matters for no-local), sent as
        ``send_run`` would, its frames and in-flight entries made in one native
        call (``mqtt_encode_run``); what the receive maximum has no room for
        waits (``mqtt_wait_run``). Anything that needs a look per message (a
        subscription made inside the run, subscription identifiers, a frame
        over the client's maximum packet size) goes to ``send_run``."""
        s = self.session
        if s is None or not s.live or not self.connected or self.closed:
            return
        first = records[start].offset
        uniform = self._subscribed_by(subs, key, first)  # one answer for the whole run
        best = self.best_qos(subs, None, key, first) if uniform else None  # no record here is this one's
        if uniform and (best is None or not best[2]):
            if best is None:
                return
            if self.principal is not None and not self.door.may(self, "READ", self.door.log_topic(topic), audit=False):
                return  # fed from a log topic this principal may not READ
            # As many as the receive maximum leaves room for go now, the rest wait.
            room = -1 if best[0] == 0 else 0 if self.waiting else max(0, self.window() - len(s.inflight))
            got = mqtt_encode_run(records, start, stop, topic, best[0], self.version, s, s.inflight,
                                  key[0], key[1], self.client_max_packet, room, False, self.aliases_out,
                                  self.alias_out_max)
            if got is not None:
                frames, kept, taken = got
                if kept:
                    self.door.store.mark(s)
                if frames:
                    self._write_frame(frames)
                if taken < stop:
                    mqtt_wait_run(records, taken, stop, topic, best[0], key[0], key[1], self.waiting)
                    if len(self.waiting) > MAX_WAITING and s.live:
                        self._fall_behind()
                return
        fielded = []
        for i in range(start, stop):
            r = records[i]
            fields = publish_fields(r, now_ms)
            if fields is not None:
                fielded.append((r, None, fields))
        if fielded:
            self.send_run(topic, fielded, subs, key)

    def _run_qos(self, subs, key: tuple[str, int], first: int) -> tuple | None:
        """``best_qos`` for a run of records from offset ``first`` on, as (for a
        record published by another connection, by this one), when the offset
        makes no difference (``_subscribed_by``); None when it does."""
        if not self._subscribed_by(subs, key, first):
            return None
        return self.best_qos(subs, None, key, first), self.best_qos(subs, self, key, first)

    def _subscribed_by(self, subs, key: tuple[str, int], first: int) -> bool:
        """Whether every subscription in ``subs`` was made at or before offset
        ``first`` of partition ``key``: then ``best_qos`` is the same for every
        record of a run from there on."""
        since_of = self.session.since
        for f, _ in subs:
            since = since_of.get(f)
            if since is not None and since.get(key, 0) > first:
                return False
        return True

    def _send(self, topic, payload, qos, retain, props, loc, share) -> None:
        frame = self._frame(topic, payload, qos, retain, props, loc, share)
        if frame is None:
            return
        if qos:
            self.door.store.mark(self.session)
        self._write_frame(frame)

    def _frame(self, topic, payload, qos, retain, props, loc, share) -> bytes | None:
        """The PUBLISH frame of a message, with a packet id and an in-flight entry
        for QoS 1 and 2; None (nothing kept) when it is over the client's maximum
        packet size."""
        s = self.session
        pid = None
        if qos:
            pid = s.packet_id()
            s.inflight[pid] = Outgoing(topic, payload, props, qos, retain, loc, share)
        alias = self.aliases_out.get(topic) if self.alias_out_max else None
        if alias is not None:  # the client knows it: the name is left out
            frame = encode_publish("", payload, qos, retain, False, pid, {**props, "topic_alias": alias}, 5)
        elif self.alias_out_max > len(self.aliases_out):
            alias = len(self.aliases_out) + 1  # given with this frame, if it goes
            frame = encode_publish(topic, payload, qos, retain, False, pid, {**props, "topic_alias": alias}, 5)
        else:
            frame = encode_publish(topic, payload, qos, retain, False, pid, props, self.version)
        if len(frame) > self.client_max_packet:
            if pid is not None:
                del s.inflight[pid]
            if share is not None:
                self.door.shares.ack(share)
            log.info("mqtt %s: a %d-byte message on %r is over the client's maximum packet size; not sent",
                     self.peer, len(frame), topic)
            return None
        if alias is not None:
            self.aliases_out.setdefault(topic, alias)
        return frame

    def _resend(self) -> None:
        """A session resumed: its unacknowledged messages again, with DUP, in order."""
        s = self.session
        now_ms = time.time_ns() // 1_000_000
        for pid, out in list(s.inflight.items()):
            if out.state == 3:
                self._write(PubRel(pid))
                continue
            if not out.topic:  # restored from its record: read the message again
                r = self.door.read_record(out.loc) if out.loc is not None else None
                fields = None if r is None or r.key is None else publish_fields(r, now_ms)
                if fields is None:  # gone from the log, or expired
                    del s.inflight[pid]
                    self.door.store.mark(s)
                    continue
                out.topic = r.key.decode("utf-8", "replace")
                out.payload = r.value or b""
                m = self.matching_qos(out.topic, None, out.loc[:2], out.loc[2])
                out.props = with_ids(fields[2], m[2] if m else ())
            frame = encode_publish(out.topic, out.payload, out.qos, out.retain, True, pid, out.props, self.version)
            self._write_frame(frame)

    def _settled(self, pid: int, step: int) -> None:
        if self._settle(pid, step):
            self._refill()

    def _acked(self, run: list[PubAck]) -> None:
        """PUBACKs read together: settle each, then fill the window once."""
        settled = False
        for p in run:
            settled = self._settle(p.packet_id, 1) or settled
        if settled:
            self._refill()

    def _acked_plain(self, run: MqttAckRun) -> None:
        """A run of PUBACKs: the plain ones settled natively (``mqtt_settle``),
        the rest (unknown ids, share-group messages) one by one."""
        s = self.session
        if s is None or not self.connected:
            return
        done, rest = mqtt_settle(run, s.inflight)
        settled = done > 0
        if settled:
            self.door.store.mark(s)
        for pid in rest:
            settled = self._settle(pid, 1) or settled
        if settled:
            self._refill()

    def _settle(self, pid: int, step: int) -> bool:
        """Forget the message in flight ``pid`` if it is at ``step`` (1: PUBACK
        awaited, 2: PUBREC, 3: PUBCOMP); False for an unknown one."""
        s = self.session
        out = s.inflight.get(pid)
        if out is None or out.state != step:
            log.debug("mqtt %s: acknowledgement of unknown packet id %d", self.peer, pid)
            return False
        del s.inflight[pid]
        if out.share is not None:
            self.door.shares.ack(out.share)
        self.door.store.mark(s)
        return True

    def _refill(self) -> None:
        """Room in the window: send what waits, wake the catch-up and the share groups."""
        s = self.session
        window = self.window()
        waiting = self.waiting
        frames = []
        while waiting and len(s.inflight) < window:
            # the plain ones in runs (one native call), any other one by one
            got, taken, kept = mqtt_encode_waiting(waiting, window - len(s.inflight), self.version, s, s.inflight,
                                                   self.client_max_packet, self.aliases_out, self.alias_out_max)
            if taken:
                frames.append(got)
                if kept:
                    self.door.store.mark(s)
                continue
            if frames:
                self._write_frame(b"".join(frames))
                frames = []
            self._send(*waiting.popleft())
        if frames:
            self._write_frame(b"".join(frames))
        self._room.set()
        self.door.shares.schedule()

    # --- catching up -----------------------------------------------------------------

    def _fall_behind(self) -> None:
        """Too much waits behind the receive maximum: forget it, read it from the log.

        What cannot be read again from the tailed topics stays waiting: a
        retained message (its record is in ``mqtt-retained``) or one without a
        place in the log; a share group's go back to the group."""
        s = self.session
        s.pos = self.door.position_of(s)
        self.door.shares.release(s, None, [w for w in self.waiting if w[-1] is not None])
        tailed = self.door.fanout.cursors if self.door.fanout is not None else {}
        kept = [w for w in self.waiting if w[-1] is None and (w[5] is None or (w[5][0], w[5][1]) not in tailed)]
        self.waiting.clear()
        self.waiting.extend(kept)
        s.live = False
        log.info("mqtt %s (%s): more than %d messages wait for acknowledgements; reading them from the log",
                 self.peer, self.client_id, MAX_WAITING)
        if self._catching_up is None:
            self._catching_up = asyncio.get_running_loop().create_task(self._catch_up())

    async def _catch_up(self) -> None:
        """Feed the session from its position up to the fan-out's, then live."""
        s = self.session
        try:
            while not self.closed and s.conn is self:
                room = self.room()
                if room <= 0:
                    self._room.clear()
                    await self._room.wait()
                    continue
                if not self._catch_up_step(room):
                    s.live = True
                    self.door.store.mark(s)
                    return
                self.door.store.mark(s)
                await asyncio.sleep(0)
        except Exception:
            log.exception("mqtt %s (%s): reading the session's messages from the log failed; closing connection",
                          self.peer, self.client_id)
            self._end(publish_will=True)
        finally:
            self._catching_up = None

    def _catch_up_step(self, room: int) -> bool:
        """Deliver up to ``room`` QoS >= 1 messages from the session's position;
        False once it stands at the fan-out's cursor everywhere. Plain runs
        (``mqtt_runs``) go out natively (``mqtt_encode_run``), the others
        message by message."""
        s = self.session
        fanout = self.door.fanout
        now_ms = time.time_ns() // 1_000_000
        behind = False
        matched: dict[str, list] = {}  # topic name -> the session's subscriptions matching it
        for k, p in list(fanout.partitions()):
            end = fanout.cursors[k]
            start = s.pos.setdefault(k, end)
            if start >= end:
                continue
            behind = True
            if room <= 0:
                break
            start = max(start, p.start_offset)
            records = p.read_list(start, min(500, end - start, room + 64))  # not much more than fits
            records = records[:bisect.bisect_left(records, end, key=_offset)]
            nxt = records[-1].offset + 1 if records else end
            for key, i, j, plain in mqtt_runs(records, QOS_HEADER):
                if room <= 0:
                    nxt = records[i].offset
                    break
                try:
                    name = None if key is None else key.decode("utf-8")
                except UnicodeDecodeError:
                    name = None
                if name is None:
                    continue
                subs = matched.get(name)
                if subs is None:
                    subs = matched[name] = [(f, sub) for f, sub in s.subs.items()
                                            if not f.startswith("$share/") and topic_matches(f, name)]
                if not subs:
                    continue
                first = records[i].offset
                best = self.best_qos(subs, None, k, first) if plain and self._subscribed_by(subs, k, first) else None
                if best is not None and not best[2]:
                    got = mqtt_encode_run(records, i, j, name, best[0], self.version, s, s.inflight, k[0],
                                          k[1], self.client_max_packet, room, True, self.aliases_out,
                                          self.alias_out_max)
                    if got is not None:
                        frames, kept, taken = got
                        room -= kept
                        if frames:
                            self._write_frame(frames)
                        if taken < j:
                            nxt = records[taken].offset
                            break
                        continue
                for r in records[i:j]:
                    best = self.best_qos(subs, None, k, r.offset)
                    fields = None if best is None else publish_fields(r, now_ms)
                    if fields is not None and min(best[0], fields[0]) >= 1:
                        if room <= 0:
                            nxt = r.offset
                            break
                        mqos, retain, props = fields
                        self.send_message(name, r.value or b"", min(best[0], mqos), retain and best[1],
                                          with_ids(props, best[2]), (k[0], k[1], r.offset))
                        room -= 1
                else:
                    continue
                break
            s.pos[k] = nxt
        return behind

    # --- the end --------------------------------------------------------------------------

    def _write(self, p) -> None:
        self._write_frame(encode(p, self.version))

    def _write_frame(self, frame: bytes) -> None:
        s = self.session
        if s is not None and s.persistent and self.connected and not self.closed:
            self.outbox.append(frame)
            self.door.store.hold(self)
        else:
            self.write_now(frame)

    def write_now(self, data: bytes) -> None:
        held = self._corked
        if held is None and self.door.corked is not None:
            # A fan-out pass: hold the frames until its end, then one write.
            held = self._corked = []
            self.door.corked.append(self)
        if held is not None:
            held.append(data)
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def uncork(self) -> None:
        """Write the frames held during a fan-out pass (``Fanout._pump``)."""
        held, self._corked = self._corked, None
        if held:
            self.write_now(b"".join(held))

    def _end(self, publish_will: bool) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.client_id is not None and self.door.clients.get(self.client_id) is self:
            del self.door.clients[self.client_id]
            self.door.subscriptions_changed()
        will, self.will = self.will, None
        if publish_will and will is not None and self.connected and not self.hub.shutting_down:
            self._will_out(will)
        self._detach()
        if self.door.store is not None:
            self.door.store.flush_now()
        self.hub.forget(self)
        self.uncork()  # frames held by a fan-out pass go before the close
        self._close_transport()
        if self.wakeup is not None:
            self.wakeup.set()
        self._room.set()

    def _close_transport(self) -> None:
        """Close the socket so the client reads what was written last (a
        DISCONNECT with its reason): closing with input unread makes the kernel
        reset the connection, and a client still sending (PUBRELs, say) would
        get the reset instead. So: half-close, drop what still comes
        (``data_received`` ignores it once closed) for ``_LINGER_S`` or until the
        client closes, then close. At shutdown, or where a half-close cannot
        be done (TLS, WebSocket), close at once."""
        t = self.transport
        if t is None or t.is_closing():
            return
        if self.hub.shutting_down or not t.can_write_eof():
            t.close()
            return
        try:
            t.write_eof()
        except (OSError, RuntimeError):
            t.close()
            return
        asyncio.get_running_loop().call_later(_LINGER_S, t.close)

    def _detach(self) -> None:
        """The session goes on without this connection (or ends, if its expiry is 0)."""
        s = self.session
        if s is None or s.conn is not self:
            return
        store = self.door.store
        s.pos = self.door.position_of(s)
        s.live = False
        # Shared messages not PUBREC'd go back to their groups, for any member.
        self.door.shares.release(s, None, [w for w in self.waiting if w[-1] is not None])
        self.waiting.clear()
        s.conn = None
        if self.handover:
            return  # the connection taking over attaches it
        if s.expiry == 0:
            store.discard(s)
        else:
            s.gone_at = time.time_ns() // 1_000_000
            store.mark(s)
            store.arm_expiry(s)

    def _will_out(self, will) -> None:
        """Publish the will now, or, with an MQTT 5 will delay and a session that
        outlives this connection, when the delay passes or the session ends,
        whichever is first; not at all if a connection resumes the session
        before (``SessionStore.pend_will``: kept in the session record, across
        a restart too)."""
        delay = will.properties.get("will_delay_interval", 0) if self.version == 5 else 0
        s = self.session
        if delay and s is not None and s.conn is self and s.expiry != 0:
            due = time.time_ns() // 1_000_000 + delay * 1000
            self.door.store.pend_will(s, PendingWill(will.topic, will.payload, will.qos, will.retain, will.properties,
                                                     due, self.principal, self.host, self.peer))
        else:
            asyncio.get_running_loop().create_task(self._publish_will(will))

    async def _publish_will(self, will) -> None:
        if self.hub.shutting_down:
            return  # the server is stopping
        if self.principal is not None and not self.door.may(self, "WRITE", self.door.log_topic(will.topic)):
            log.info("mqtt %s (%s): will on %r denied to %s", self.peer, self.client_id, will.topic, self.principal)
            return
        try:
            await self.door.publish(None, will.topic, will.payload, will.qos, will.retain, dict(will.properties))
        except Exception:
            log.exception("mqtt %s: publishing the will of %r failed", self.peer, self.client_id)

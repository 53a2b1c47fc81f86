"""One AMQP 0-9-1 connection: frames in, methods handled in order, frames out.

Frames are handled as they arrive, in ``data_received`` (nothing a method
does waits, except publisher confirms, which wait for ``hub.durable`` in a
task per channel, in order). Runs of whole basic.publish messages are read
in one native call (``amqp_scan_publishes``), everything else frame by frame;
the publishes of a read are appended together (one batch per exchange topic)
before any other method is handled and at the end of the read, and confirmed
with one ``basic.ack`` (multiple) per channel. A channel exception closes that channel
(channel.close with the reply code; its frames are ignored until
channel.close-ok); a connection exception sends connection.close and ignores
everything but connection.close-ok. Deliveries still unacknowledged when
their channel or connection closes are released: delivered again, with
``redelivered`` set.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import operator
import struct
import time

from pamqp import commands as cmd
from pamqp import frame as pframe

from umlog._native.core import amqp_deliver_frames, amqp_scan_publishes

from .codec import (
    FRAME_BODY,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    HEARTBEAT_FRAME,
    PROTOCOL_HEADER,
    FrameError,
    ack_method,
    check_table,
    content_frames,
    deliver_method,
    get_ok_method,
    lift_delay,
    method_frame,
    parse_ack,
    parse_properties,
    parse_publish,
    return_method,
)
from .door import (
    ACCESS_REFUSED,
    COMMAND_INVALID,
    NOT_ALLOWED,
    NOT_FOUND,
    NOT_IMPLEMENTED,
    PRECONDITION_FAILED,
    AmqpError,
    q_touch,
)
from .queues import Consumer, exchange_of_topic
from .settings import DEFAULT_EXCHANGE_TOPIC

__all__ = ["AmqpConnection"]

log = logging.getLogger("umlog.server.amqp")

FRAME_ERROR, SYNTAX_ERROR, CHANNEL_ERROR, UNEXPECTED_FRAME = 501, 502, 504, 505
# headers-table entries of a delivery, long-long values as RabbitMQ sends them (a Java client reads a Long)
_STREAM_OFFSET, _DELIVERY_COUNT = b"\x0fx-stream-offsetl", b"\x10x-delivery-countl"
_long = struct.Struct(">q")
CONNECTION_FORCED, NO_ROUTE = 320, 312
_head = struct.Struct(">BHI")
_method_id = struct.Struct(">HH")
PUBLISH, ACK = (60, 40), (60, 80)
PUBLISH_ID = b"\x00\x3c\x00\x28"
_OWNER, _RECORD = operator.itemgetter(0), operator.itemgetter(1)
# the exchange name of a record's topic, as basic.deliver carries it
EXCHANGE_NAMES: dict[str, bytes] = {DEFAULT_EXCHANGE_TOPIC: b""}
_WRITE_HIGH = 4 * 1024 * 1024  # deliveries wait while this much is unsent to the client
CAPABILITIES = {"publisher_confirms": True, "exchange_exchange_bindings": False, "basic.nack": True,
                "consumer_cancel_notify": True, "connection.blocked": True, "consumer_priorities": False,
                "authentication_failure_close": True, "per_consumer_qos": True, "direct_reply_to": False}


class Channel:
    """One open channel's state."""

    def __init__(self, conn: AmqpConnection, number: int) -> None:
        self.conn = conn
        self.number = number
        self.closing = False  # we sent channel.close; waiting for close-ok
        self.flow = True
        self.prefetch = 0  # for consumers made from now on (per_consumer_qos)
        self.global_prefetch = 0
        self.consumers: dict[str, Consumer] = {}
        # delivery tag -> ((consumer or None, handle, queue), record), oldest first
        self.unacked: collections.OrderedDict[int, tuple] = collections.OrderedDict()
        self.next_tag = 0
        self.handles: dict[str, tuple] = {}  # queue name -> (its group, a handle of it) for basic.get
        self.all_handles: list = []
        self.content: list | None = None  # [exchange, key, mandatory, headers, size, chunks, got]
        self.confirm = False
        self.seq = 0
        self.acked_seq = 0
        self.pending: dict = {}  # partition -> end offset, appended since the last confirm batch
        self.confirm_task: asyncio.Task | None = None
        self.last_queue: str | None = None  # queue.declare's, for methods naming the queue ""

    def unacked_count(self) -> int:
        return len(self.unacked)

    def can_deliver(self) -> bool:
        c = self.conn
        return self.flow and not self.closing and not c.closing and not c.write_paused

    def deliver(self, consumer: Consumer | None, rec, handle, queue=None, no_ack: bool = False,
                get_count: int | None = None) -> None:
        self.next_tag += 1
        tag = self.next_tag
        q = consumer.queue if consumer is not None else queue
        if consumer is not None:
            no_ack = consumer.no_ack
        extra = b""
        if q is not None and q.stream:
            extra = _STREAM_OFFSET + _long.pack(rec.offset)
        elif q is not None and q.kind == "quorum":  # from the first delivery (0), as RabbitMQ's quorum queues
            extra = _DELIVERY_COUNT + _long.pack(rec.delivery_count - 1)
        key = b"" if rec.key is None else bytes(rec.key)
        exchange = exchange_of_topic(rec.topic).encode()
        redelivered = rec.delivery_count > 1
        if get_count is None:
            m = deliver_method(consumer.tag.encode(), tag, redelivered, exchange, key)
        else:
            m = get_ok_method(tag, redelivered, exchange, key, get_count)
        if not no_ack:
            self.unacked[tag] = ((consumer, handle, q), rec)
            if consumer is not None:
                consumer.unacked += 1
        conn = self.conn
        conn.write(method_frame(self.number, m))
        conn.write(content_frames(self.number, rec.headers, rec.value, conn.frame_max, extra))

    def deliver_many(self, c: Consumer, recs: list) -> None:
        """basic.deliver of records ``c``'s handle acquired, as one run of frames
        built natively (a stream or quorum queue adds a header per message: one by one)."""
        q = c.queue
        if q.stream or q.kind == "quorum":
            for rec in recs:
                self.deliver(c, rec, c.handle)
            return
        first = self.next_tag + 1
        self.next_tag += len(recs)
        if not c.no_ack:
            self.unacked.update(zip(range(first, first + len(recs)), zip(itertools.repeat((c, c.handle, q)), recs)))
            c.unacked += len(recs)
        conn = self.conn
        conn.write(amqp_deliver_frames(recs, self.number, c.tag_bytes, first, conn.frame_max, EXCHANGE_NAMES))

    def cancelled_by_server(self, c: Consumer) -> None:
        """The queue went away: tell the client (consumer_cancel_notify)."""
        self.consumers.pop(c.tag, None)
        if not self.closing and self.conn.capable("consumer_cancel_notify"):
            self.conn.send_method(self.number, cmd.Basic.Cancel(consumer_tag=c.tag, nowait=True))


class AmqpConnection(asyncio.Protocol):
    """One client connection (see the module docstring)."""

    def __init__(self, door) -> None:
        self.door = door
        self.hub = door.hub
        self.transport = None
        self.peer = "?"
        self.buf = bytearray()
        self.got_header = False
        self.state = "header"  # header, start, tune, open, opened
        self.closing = False  # connection.close sent or received
        self.closed = False
        self.frame_max = door.frame_max
        self.channel_max = door.channel_max
        self.heartbeat = 0
        self.channels: dict[int, Channel] = {}
        self.client_properties: dict = {}
        self.principal: str | None = None
        self.user = b""  # the login name, which a message's user_id must be
        self.exclusive_queues: set[str] = set()
        self.last_active = 0.0
        self.last_sent = 0.0
        self.write_paused = False
        self.published = False
        self.blocked_sent = False
        self._out: list[bytes] = []
        self._batch: list[tuple] = []  # publishes read and not appended yet: (channel, exchange, key, ...)
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._confirming = 0

    # --- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        loop = asyncio.get_running_loop()
        self.last_active = self.last_sent = loop.time()
        if not self.hub.admit(self):
            transport.abort()
            self.closed = True
            return
        self.door.connections.add(self)
        # a client that says nothing is dropped after 10 s (RabbitMQ's handshake_timeout)
        self._timer = loop.call_later(10.0, self._handshake_timeout)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_active = asyncio.get_running_loop().time()
        buf = self.buf
        buf += data
        if not self.got_header:
            if len(buf) < 8:
                if not PROTOCOL_HEADER.startswith(bytes(buf[:8])):
                    self._bad_header()
                return
            if bytes(buf[:8]) not in (PROTOCOL_HEADER, b"AMQP\x01\x01\x00\x09"):
                self._bad_header()
                return
            del buf[:8]
            self.got_header = True
            self.state = "start"
            props = {"product": "umlog", "version": _version(), "platform": "Python",
                     "information": "umlog: AMQP 0-9-1 over a commit log", "capabilities": CAPABILITIES}
            self.send_method(0, cmd.Connection.Start(server_properties=props, mechanisms="PLAIN AMQPLAIN",
                                                     locales="en_US"))
        pos = 0
        n = len(buf)
        try:
            while n - pos >= 7 and not self.closed:
                if buf[pos] == FRAME_METHOD and self.state == "opened" and not self.closing:
                    chan = self.channels.get((buf[pos + 1] << 8) | buf[pos + 2])
                    if chan is not None and not chan.closing and chan.content is None \
                            and buf[pos + 7:pos + 11] == PUBLISH_ID:
                        pubs, after = amqp_scan_publishes(buf, pos, n, chan.number, self.frame_max,
                                                          self.door.max_message_size)
                        if pubs:
                            pos = after
                            self._publishes(chan, pubs)
                            continue
                if self._batch:
                    self._append_batch()  # what was published goes before whatever comes next
                ftype, ch, size = _head.unpack_from(buf, pos)
                if size + 8 > self.frame_max:
                    raise AmqpError(FRAME_ERROR, f"FRAME_ERROR - frame size {size + 8} larger than frame_max "
                                    f"{self.frame_max}", hard=True)
                end = pos + 7 + size
                if n < end + 1:
                    break
                if buf[end] != 0xCE:
                    raise AmqpError(FRAME_ERROR, "FRAME_ERROR - frame end byte is not 0xCE", hard=True)
                payload = bytes(buf[pos + 7:end])
                pos = end + 1
                if self.closing:
                    if ftype == FRAME_METHOD and payload[:4] in (b"\x00\x0a\x00\x33", b"\x00\x0a\x00\x32"):
                        self._closing_method(payload)
                    continue
                self._frame(ftype, ch, payload)
            if self._batch:
                self._append_batch()
        except AmqpError as e:
            self.connection_error(e)
        except FrameError as e:
            self.connection_error(AmqpError(FRAME_ERROR, f"FRAME_ERROR - {e}", hard=True))
        except Exception:
            log.exception("amqp %s: internal error; closing connection", self.peer)
            self.connection_error(AmqpError(541, "INTERNAL_ERROR", hard=True))
        del buf[:pos]
        if self._batch:  # publishes read before an error are kept, as they were read
            try:
                self._append_batch()
            except Exception:
                log.exception("amqp %s: appending publishes failed; closing connection", self.peer)
                self.connection_error(AmqpError(541, "INTERNAL_ERROR", hard=True))
        self._after_frames()
        self.flush()

    def connection_lost(self, exc) -> None:
        self._end()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._kick_queues()

    # --- the hub's view -------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return not self._confirming

    def close_idle(self, idle_s: float) -> None:
        log.info("amqp %s: idle for %.0f s; closing connection", self.peer, idle_s)
        self.close()

    def close(self) -> None:
        """Server shutdown or hub sweep: connection.close 320, then the transport."""
        if not self.closed and self.transport is not None and not self.transport.is_closing():
            if self.state == "opened" and not self.closing:
                self.send_method(0, cmd.Connection.Close(CONNECTION_FORCED, "CONNECTION_FORCED - broker forced "
                                                         "connection closure with reason 'shutdown'", 0, 0))
                self.flush()
        self._end()

    # --- writing ----------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self._out))
            self.last_sent = asyncio.get_running_loop().time()
        self._out.clear()

    def send_method(self, channel: int, method) -> None:
        self.write(pframe.marshal(method, channel))

    def capable(self, name: str) -> bool:
        caps = self.client_properties.get("capabilities") or {}
        return bool(caps.get(name))

    # --- errors -----------------------------------------------------------------------------------

    def _bad_header(self) -> None:
        """Not AMQP 0-9-1: the header we speak, then close (the spec's answer)."""
        log.info("amqp %s: not an AMQP 0-9-1 protocol header; closing connection", self.peer)
        if self.transport is not None:
            self.transport.write(PROTOCOL_HEADER)
        self._end()

    def connection_error(self, e: AmqpError, method: tuple[int, int] = (0, 0)) -> None:
        if self.closing or self.closed:
            return
        log.info("amqp %s: connection error %d: %s", self.peer, e.code, e.text)
        self.closing = True
        if self.state in ("header", "start"):
            # before connection.start-ok a client cannot take connection.close (spec 2.2.4): just close
            self.send_method(0, cmd.Connection.Close(e.code, e.text[:255], method[0], method[1]))
            self.flush()
            self._end()
            return
        self.send_method(0, cmd.Connection.Close(e.code, e.text[:255], method[0], method[1]))
        self.flush()
        self._release_all()
        # the client has a few seconds to answer close-ok
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(3.0, self._end)

    def channel_error(self, ch: Channel, e: AmqpError, method: tuple[int, int]) -> None:
        log.info("amqp %s: channel %d error %d: %s", self.peer, ch.number, e.code, e.text)
        self._close_channel(ch)
        ch.closing = True
        self.channels[ch.number] = ch
        self.send_method(ch.number, cmd.Channel.Close(e.code, e.text[:255], method[0], method[1]))

    def _handshake_timeout(self) -> None:
        self._timer = None
        if self.state != "opened" and not self.closed:
            log.info("amqp %s: no handshake within 10 s; closing connection", self.peer)
            self._end()

    # --- frames -----------------------------------------------------------------------------------

    def _frame(self, ftype: int, ch: int, payload: bytes) -> None:
        if ftype == FRAME_METHOD:
            if len(payload) < 4:
                raise AmqpError(FRAME_ERROR, "FRAME_ERROR - method frame too short", hard=True)
            mid = _method_id.unpack_from(payload, 0)
            if ch == 0:
                self._connection_method(mid, payload)
                return
            if self.state != "opened":
                raise AmqpError(CHANNEL_ERROR, "CHANNEL_ERROR - channel frame before connection.open-ok",
                                hard=True, ) from None
            chan = self.channels.get(ch)
            if chan is not None and chan.content is not None:
                raise AmqpError(UNEXPECTED_FRAME, f"UNEXPECTED_FRAME - expected content header for class 60, got "
                                f"a method frame on channel {ch}", hard=True)
            if chan is None:
                if mid != (20, 10):
                    raise AmqpError(CHANNEL_ERROR, f"CHANNEL_ERROR - expected 'channel.open' on channel {ch}",
                                    hard=True)
                if ch > self.channel_max:
                    raise AmqpError(NOT_ALLOWED, f"NOT_ALLOWED - channel {ch} is over channel_max "
                                    f"{self.channel_max}", hard=True)
                self.channels[ch] = Channel(self, ch)
                self.send_method(ch, cmd.Channel.OpenOk())
                return
            if chan.closing:
                if mid == (20, 41):  # close-ok
                    del self.channels[ch]
                elif mid == (20, 40):
                    self.send_method(ch, cmd.Channel.CloseOk())
                return
            try:
                self._channel_method(chan, mid, payload)
            except AmqpError as e:
                if e.hard:
                    raise
                self.channel_error(chan, e, mid)
            return
        if ftype == FRAME_HEARTBEAT:
            if ch != 0:  # spec 4.2.7: heartbeats are on channel 0; another is an invalid heartbeat frame
                raise AmqpError(FRAME_ERROR, f"FRAME_ERROR - heartbeat frame on channel {ch}", hard=True)
            return
        if ftype in (FRAME_HEADER, FRAME_BODY):
            chan = self.channels.get(ch)
            if chan is None or chan.closing:
                if chan is not None:
                    return  # content of a method the closed channel ignored
                if ch == 0 or self.state != "opened":
                    raise AmqpError(UNEXPECTED_FRAME, f"UNEXPECTED_FRAME - content frame on channel {ch}", hard=True)
                raise AmqpError(CHANNEL_ERROR, f"CHANNEL_ERROR - content frame on channel {ch}, which is not open",
                                hard=True)
            c = chan.content
            if c is None:
                raise AmqpError(UNEXPECTED_FRAME, "UNEXPECTED_FRAME - content frame without basic.publish",
                                hard=True)
            if ftype == FRAME_HEADER:
                if c[4] is not None:
                    raise AmqpError(UNEXPECTED_FRAME, "UNEXPECTED_FRAME - a second content header", hard=True)
                size, headers = parse_properties(payload)
                if size > self.door.max_message_size:
                    chan.content = None
                    self.channel_error(chan, AmqpError(PRECONDITION_FAILED, f"PRECONDITION_FAILED - message size "
                                       f"{size} is larger than the configured max size "
                                       f"{self.door.max_message_size}"), PUBLISH)
                    return
                c[3], c[4] = headers, size
            else:
                if c[4] is None:
                    raise AmqpError(UNEXPECTED_FRAME, "UNEXPECTED_FRAME - body frame before the content header",
                                    hard=True)
                c[5].append(payload)
                c[6] += len(payload)
                if c[6] > c[4]:
                    raise AmqpError(FRAME_ERROR, "FRAME_ERROR - more body than the content header said", hard=True)
            if c[6] == c[4]:
                chan.content = None
                body = c[5][0] if len(c[5]) == 1 else b"".join(c[5])
                bad = _bad_property(c[3], self.user)
                if bad is not None:
                    self.channel_error(chan, bad, PUBLISH)
                    return
                self._publish(chan, c[0], c[1], c[2], c[3], body)
            return
        raise AmqpError(FRAME_ERROR, f"FRAME_ERROR - unknown frame type {ftype}", hard=True)

    def _decode(self, payload: bytes):
        try:
            _, _, m = pframe.unmarshal(_head.pack(FRAME_METHOD, 0, len(payload)) + payload + b"\xce")
        except Exception as e:
            # a malformed frame, as RabbitMQ answers it (SYNTAX_ERROR is for decoded values out of range)
            raise AmqpError(FRAME_ERROR, f"FRAME_ERROR - cannot decode method: {e}", hard=True) from None
        return m

    # --- connection methods ------------------------------------------------------------------------

    def _connection_method(self, mid: tuple[int, int], payload: bytes) -> None:
        expected = {"start": (10, 11), "tune": (10, 31), "open": (10, 40)}.get(self.state)
        if expected is not None and mid != expected and mid != (10, 50):
            raise AmqpError(COMMAND_INVALID, f"COMMAND_INVALID - expected method {expected}, got {mid} during "
                            "the handshake", hard=True)
        m = self._decode(payload)
        if mid == (10, 11):  # start-ok
            self.client_properties = dict(m.client_properties or {})
            self.principal = self._authenticate(m.mechanism, m.response)
            if self.principal is None:
                return
            self.state = "tune"
            self.send_method(0, cmd.Connection.Tune(channel_max=self.channel_max, frame_max=self.door.frame_max,
                                                    heartbeat=self.door.heartbeat_s))
        elif mid == (10, 31):  # tune-ok
            if m.frame_max and m.frame_max < 4096:
                raise AmqpError(SYNTAX_ERROR, f"SYNTAX_ERROR - frame_max {m.frame_max} is below 4096", hard=True)
            self.frame_max = min(m.frame_max or self.door.frame_max, self.door.frame_max)
            self.channel_max = min(m.channel_max or self.channel_max, self.channel_max)
            self.heartbeat = m.heartbeat
            self.state = "open"
        elif mid == (10, 40):  # open
            if m.virtual_host not in ("/", ""):
                raise AmqpError(NOT_ALLOWED, f"NOT_ALLOWED - vhost {m.virtual_host} not found (one vhost here: /)",
                                hard=True)
            self.state = "opened"
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.send_method(0, cmd.Connection.OpenOk())
            if self.heartbeat:
                self._arm_heartbeat()
            if self.door.blocked:
                self.set_blocked(True)
        elif mid == (10, 50):  # close
            self.closing = True
            self.send_method(0, cmd.Connection.CloseOk())
            self.flush()
            self._end()
        elif mid == (10, 51):  # close-ok without our close
            self._end()
        elif mid == (10, 70):  # update-secret
            self.send_method(0, cmd.Connection.UpdateSecretOk())
        elif mid[0] != 10:  # a channel's method on channel 0, which is never opened (RabbitMQ's code)
            raise AmqpError(CHANNEL_ERROR, f"CHANNEL_ERROR - unexpected method {m.name} on channel 0", hard=True)
        else:
            raise AmqpError(COMMAND_INVALID, f"COMMAND_INVALID - unexpected method {m.name} on channel 0", hard=True)

    def _closing_method(self, payload: bytes) -> None:
        if payload[:4] == b"\x00\x0a\x00\x32":  # their close crossing ours
            self.send_method(0, cmd.Connection.CloseOk())
            self.flush()
        self._end()

    def _authenticate(self, mechanism: str, response) -> str | None:
        user = password = ""
        raw = response if isinstance(response, bytes) else str(response).encode("utf-8", "surrogateescape")
        if mechanism == "PLAIN":
            parts = raw.split(b"\x00")
            if len(parts) == 3:
                user, password = parts[1].decode("utf-8", "replace"), parts[2].decode("utf-8", "replace")
        elif mechanism == "AMQPLAIN":
            try:
                from pamqp import decode as pdecode

                t = pdecode.field_table(struct.pack(">I", len(raw)) + raw)[1]
                user, password = str(t.get("LOGIN", "")), str(t.get("PASSWORD", ""))
            except Exception:
                pass
        else:
            self.state = "tune"  # so that the client reads the close (start-ok was sent)
            self.connection_error(AmqpError(ACCESS_REFUSED, f"ACCESS_REFUSED - unknown mechanism {mechanism}",
                                            hard=True))
            return None
        principal = self.door.authenticate(user, password, self.peer)
        if principal is None:
            self.state = "tune"
            self.connection_error(AmqpError(ACCESS_REFUSED, f"ACCESS_REFUSED - Login was refused using "
                                            f"authentication mechanism {mechanism}. For details see the broker "
                                            "logfile.", hard=True))
            return None
        self.user = user.encode()
        return principal

    def _arm_heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.5, self.heartbeat / 2), self._beat)

    def _beat(self) -> None:
        self._timer = None
        if self.closed:
            return
        now = asyncio.get_running_loop().time()
        if now - self.last_active > 2 * self.heartbeat:
            log.info("amqp %s: missed heartbeats from client, timeout: %ds; closing connection", self.peer,
                     self.heartbeat)
            self._end()
            return
        if now - self.last_sent >= self.heartbeat / 2:
            self.write(HEARTBEAT_FRAME)
        self._arm_heartbeat()

    def set_blocked(self, on: bool) -> None:
        """The disk alarm: publishers stop being read (and are told, if they can hear it)."""
        if self.state != "opened" or self.closed:
            return
        if self.capable("connection.blocked") and on != self.blocked_sent:
            self.blocked_sent = on
            self.send_method(0, cmd.Connection.Blocked("low on disk") if on else cmd.Connection.Unblocked())
            self.flush()
        if self.transport is not None and self.published:
            if on:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    # --- channel methods ---------------------------------------------------------------------------

    def _channel_method(self, ch: Channel, mid: tuple[int, int], payload: bytes) -> None:
        door = self.door
        n = ch.number
        if mid == PUBLISH:
            try:
                exchange, key, mandatory, immediate = parse_publish(payload)
            except (IndexError, struct.error):
                raise AmqpError(FRAME_ERROR, "FRAME_ERROR - cannot decode basic.publish", hard=True) from None
            e = self._publish_exchange(exchange, immediate)
            ch.content = [e, key, mandatory, None, None, [], 0]
            return
        if mid == ACK:
            try:
                tag, multiple = parse_ack(payload)
            except (IndexError, struct.error):
                raise AmqpError(FRAME_ERROR, "FRAME_ERROR - cannot decode basic.ack", hard=True) from None
            self._settle(ch, tag, multiple, "ack")
            return
        m = self._decode(payload)
        if mid == (20, 40):  # channel.close
            self._close_channel(ch)
            del self.channels[n]
            self.send_method(n, cmd.Channel.CloseOk())
        elif mid == (20, 41):
            pass
        elif mid == (20, 10):  # the spec's channel.open rule: only on a channel not open
            raise AmqpError(CHANNEL_ERROR, f"CHANNEL_ERROR - second 'channel.open' on channel {n}", hard=True)
        elif mid == (20, 20):  # flow
            ch.flow = bool(m.active)
            self.send_method(n, cmd.Channel.FlowOk(active=ch.flow))
            if ch.flow:
                self._kick_queues()
        elif mid == (20, 21):  # flow-ok (we never send flow)
            pass
        elif mid == (40, 10):  # exchange.declare
            if not m.passive:
                door.authorize(self.principal, "CREATE", "TOPIC", m.exchange or "amq.default", self.peer)
            door.declare_exchange(m.exchange, m.exchange_type, m.passive, m.durable, m.auto_delete, m.internal,
                                  dict(m.arguments or {}))
            if not m.nowait:
                self.send_method(n, cmd.Exchange.DeclareOk())
        elif mid == (40, 20):  # exchange.delete
            door.authorize(self.principal, "DELETE", "TOPIC", m.exchange, self.peer)
            door.delete_exchange(m.exchange, m.if_unused)
            if not m.nowait:
                self.send_method(n, cmd.Exchange.DeleteOk())
        elif mid in ((40, 30), (40, 40)):
            raise AmqpError(NOT_IMPLEMENTED, "NOT_IMPLEMENTED - exchange to exchange bindings are not served",
                            hard=True)
        elif mid == (50, 10):  # queue.declare
            args = dict(m.arguments or {})
            door.authorize(self.principal, "READ", "GROUP", m.queue or "amq.gen", self.peer)
            q = door.declare_queue(self, m.queue, m.passive, m.durable, m.exclusive, m.auto_delete, args)
            ch.last_queue = q.name
            if q.max_length is not None:
                q.enforce_max_length()
            if not m.nowait:
                count = q.count_ready() if not q.stream else 0
                self.send_method(n, cmd.Queue.DeclareOk(queue=q.name, message_count=count,
                                                        consumer_count=len(q.consumers)))
        elif mid == (50, 20):  # queue.bind
            door.authorize(self.principal, "READ", "TOPIC", m.exchange or "amq.default", self.peer)
            door.bind(self, self._queue_name(ch, m.queue), m.exchange, m.routing_key, dict(m.arguments or {}))
            if not m.nowait:
                self.send_method(n, cmd.Queue.BindOk())
        elif mid == (50, 50):  # queue.unbind
            door.unbind(self, self._queue_name(ch, m.queue), m.exchange, m.routing_key, dict(m.arguments or {}))
            self.send_method(n, cmd.Queue.UnbindOk())
        elif mid == (50, 30):  # queue.purge
            q = door.queue(self._queue_name(ch, m.queue), self)
            count = q.purge()
            if not m.nowait:
                self.send_method(n, cmd.Queue.PurgeOk(message_count=count))
        elif mid == (50, 40):  # queue.delete
            count = door.delete_queue(self, self._queue_name(ch, m.queue), m.if_unused, m.if_empty)
            if not m.nowait:
                self.send_method(n, cmd.Queue.DeleteOk(message_count=count))
        elif mid == (60, 10):  # qos
            if m.global_:
                ch.global_prefetch = m.prefetch_count
            else:
                ch.prefetch = m.prefetch_count
            self.send_method(n, cmd.Basic.QosOk())
            self._kick_queues()
        elif mid == (60, 20):  # consume
            self._consume(ch, m)
        elif mid == (60, 30):  # cancel
            c = ch.consumers.pop(m.consumer_tag, None)
            if c is not None:
                self._drop_consumer(c)
            if not m.nowait:
                self.send_method(n, cmd.Basic.CancelOk(consumer_tag=m.consumer_tag))
        elif mid == (60, 70):  # get
            self._get(ch, m)
        elif mid == (60, 90):  # reject
            self._settle(ch, m.delivery_tag, False, "requeue" if m.requeue else "reject")
        elif mid == (60, 120):  # nack
            self._settle(ch, m.delivery_tag, m.multiple, "requeue" if m.requeue else "reject")
        elif mid in ((60, 110), (60, 100)):  # recover, recover-async
            self._settle(ch, 0, True, "requeue")
            if mid == (60, 110):
                self.send_method(n, cmd.Basic.RecoverOk())
        elif mid == (85, 10):  # confirm.select
            ch.confirm = True
            if not m.nowait:
                self.send_method(n, cmd.Confirm.SelectOk())
        elif mid[0] == 90:
            raise AmqpError(NOT_IMPLEMENTED, "NOT_IMPLEMENTED - transactions (tx.*) are not served; use publisher "
                            "confirms", hard=True)
        else:
            raise AmqpError(COMMAND_INVALID, f"COMMAND_INVALID - unexpected method {m.name}", hard=True)

    def _queue_name(self, ch: Channel, name: str) -> str:
        if name:
            return name
        last = ch.last_queue
        if last is None:
            raise AmqpError(NOT_FOUND, "NOT_FOUND - no previously declared queue")
        return last

    # --- publishing --------------------------------------------------------------------------------

    def _publish_exchange(self, exchange: str, immediate: bool):
        """The exchange a basic.publish names, if this connection may publish to it."""
        if immediate:
            raise AmqpError(NOT_IMPLEMENTED, "NOT_IMPLEMENTED - immediate=true", hard=True)
        door = self.door
        e = door.exchange(exchange)
        if e.internal:
            raise AmqpError(ACCESS_REFUSED, f"ACCESS_REFUSED - cannot publish to internal exchange '{exchange}'")
        door.authorize(self.principal, "WRITE", "TOPIC", e.topic, self.peer)
        return e

    def _publishes(self, ch: Channel, pubs: list) -> None:
        """Whole messages read in one run on channel ``ch`` (``amqp_scan_publishes``)."""
        last = None
        for exchange, key, bits, headers, table, body in pubs:
            if ch.closing:
                return  # a publish before failed: the channel ignores the rest
            if table is not None:
                check_table(table)
                headers = lift_delay(headers, table)
            bad = _bad_property(headers, self.user)
            if bad is not None:
                self.channel_error(ch, bad, PUBLISH)
                return
            if exchange != last:
                try:
                    e = self._publish_exchange(exchange.decode("utf-8", "replace"), bool(bits & 2))
                except AmqpError as err:
                    if err.hard:
                        raise
                    self.channel_error(ch, err, PUBLISH)
                    return
                last = exchange
            self._publish(ch, e, key, bool(bits & 1), headers, body)

    def _publish(self, ch: Channel, e, key: bytes, mandatory: bool, headers, body: bytes) -> None:
        if not self.published:
            self.published = True
            if self.door.blocked and self.transport is not None:
                self.transport.pause_reading()  # a new publisher is held by the disk alarm too (set_blocked)
        self._batch.append((ch, e, key, mandatory, headers, body))
        if ch.confirm:
            ch.seq += 1

    def _append_batch(self) -> None:
        """Append the publishes read so far: one append_many (one batch written) per
        exchange topic, then the returns of mandatory ones no queue took."""
        batch, self._batch = self._batch, []
        door = self.door
        by_topic: dict[str, list] = {}
        for b in batch:
            by_topic.setdefault(b[1].topic, []).append(b)
        for topic, pubs in by_topic.items():
            t = door._ensure_topic(topic)
            values, keys, headers = [b[5] for b in pubs], [b[2] for b in pubs], [b[4] for b in pubs]
            if t.num_partitions == 1:
                p = t.partitions[0]
                end = t.append_many(values, keys, headers, partition=0).stop
                for ch in {b[0] for b in pubs}:
                    if ch.confirm:
                        ch.pending[p] = end
            else:  # a topic made with more partitions elsewhere: routed by key, as any append
                for b, (i, o) in zip(pubs, t.append_many(values, keys, headers)):
                    ch = b[0]
                    if ch.confirm:
                        p = t.partitions[i]
                        ch.pending[p] = max(ch.pending.get(p, 0), o + 1)
        for ch, e, key, mandatory, headers, body in batch:
            if mandatory and not door.routed_anywhere(e, key, headers):
                self.write(method_frame(ch.number, return_method(NO_ROUTE, "NO_ROUTE", e.name.encode(), key)))
                self.write(content_frames(ch.number, headers, body, self.frame_max))

    def _after_frames(self) -> None:
        """Publishes of this read that wait for a confirm (appended as whole
        batches, so written: a SIGKILL cannot lose what is confirmed): confirm
        them once durable."""
        for ch in self.channels.values():
            if ch.pending:
                pending, ch.pending = ch.pending, {}
                prev = ch.confirm_task
                self._confirming += 1
                ch.confirm_task = asyncio.get_running_loop().create_task(self._confirm(ch, prev, pending, ch.seq))

    async def _confirm(self, ch: Channel, prev, pending: dict, seq: int) -> None:
        try:
            if prev is not None:
                await asyncio.shield(prev)
            ok = True
            try:
                await self.hub.durable(pending)
            except Exception:
                log.exception("amqp %s: a confirmed publish could not be made durable: nack", self.peer)
                ok = False
            if self.closed or ch.closing or self.channels.get(ch.number) is not ch:
                return
            self.write(method_frame(ch.number, ack_method(seq, seq - ch.acked_seq > 1, nack=not ok)))
            ch.acked_seq = seq
        finally:
            self._confirming -= 1

    # --- consuming ----------------------------------------------------------------------------------

    def _consume(self, ch: Channel, m) -> None:
        door = self.door
        q = door.queue(self._queue_name(ch, m.queue), self)
        door.authorize(self.principal, "READ", "GROUP", q.name, self.peer)
        tag = m.consumer_tag or f"amq.ctag-{id(self):x}-{ch.number}-{len(ch.consumers)}-{time.monotonic_ns()}"
        if tag in ch.consumers:
            raise AmqpError(NOT_ALLOWED, f"NOT_ALLOWED - attempt to reuse consumer tag '{tag}'", hard=True)
        if m.exclusive and q.consumers or any(c.exclusive for c in q.consumers.values()):
            raise AmqpError(ACCESS_REFUSED, f"ACCESS_REFUSED - queue '{q.name}' in vhost '/' in exclusive use")
        args = dict(m.arguments or {})
        c = Consumer(tag, ch, q, m.no_ack, ch.prefetch, m.exclusive)
        if q.stream:
            spec = args.get("x-stream-offset", "next")
            if isinstance(spec, bytes):
                spec = spec.decode()
            try:
                q.stream_start(c, spec)
            except ValueError as e:
                raise AmqpError(PRECONDITION_FAILED, f"PRECONDITION_FAILED - {e}") from None
        else:
            c.handle = q.group.sibling()
            ch.all_handles.append(c.handle)
        ch.consumers[tag] = c
        q.consumers[(self, ch.number, tag)] = c
        q.had_consumer = True
        q_touch(q)
        if not m.nowait:
            self.send_method(ch.number, cmd.Basic.ConsumeOk(consumer_tag=tag))
        self.flush()  # consume-ok goes before the first delivery
        q.kick()

    def _drop_consumer(self, c: Consumer) -> None:
        q = c.queue
        q.consumers.pop((self, c.channel.number, c.tag), None)
        if not q.consumers and q.auto_delete and q.had_consumer:
            self.door.remove_queue(q)
        else:
            q_touch(q)

    def _get(self, ch: Channel, m) -> None:
        q = self.door.queue(self._queue_name(ch, m.queue), self)
        self.door.authorize(self.principal, "READ", "GROUP", q.name, self.peer)
        if q.stream:
            raise AmqpError(PRECONDITION_FAILED, "PRECONDITION_FAILED - stream queues do not support basic.get")
        q_touch(q)
        if q.max_length is not None:
            q.enforce_max_length()
        group, handle = ch.handles.get(q.name, (None, None))
        if group is not q.group:  # none yet, or the queue was declared anew since
            handle = q.group.sibling()
            ch.handles[q.name] = (q.group, handle)
            ch.all_handles.append(handle)
        rec = q.get_one(handle)
        if rec is None:
            self.send_method(ch.number, cmd.Basic.GetEmpty())
            return
        left = q.count_ready(limit=100_000)
        ch.deliver(None, rec, handle, q, m.no_ack, get_count=left)
        if m.no_ack:
            self.door.settle(handle.ack, [rec], q)

    def _settle(self, ch: Channel, tag: int, multiple: bool, how: str) -> None:
        """ack / requeue / reject one delivery, or every one up to ``tag`` (0: all)."""
        un = ch.unacked
        if multiple:
            # tags are handed out in order, so those up to ``tag`` are the oldest entries
            if not tag or (un and next(reversed(un)) <= tag):
                entries = list(un.values())
                un.clear()
            else:
                n = 0
                for t in un:
                    if t > tag:
                        break
                    n += 1
                entries = [un.popitem(last=False)[1] for _ in range(n)]
        else:
            if tag not in un:
                raise AmqpError(PRECONDITION_FAILED, f"PRECONDITION_FAILED - unknown delivery tag {tag}")
            entries = [un.pop(tag)]
        by_owner: dict[tuple, list] = {}
        for owner, run in itertools.groupby(entries, key=_OWNER):  # a run: deliveries of one batch
            recs = by_owner.get(owner)
            if recs is None:
                recs = by_owner[owner] = []
            recs += map(_RECORD, run)
        queues = set()
        for (c, handle, q), recs in by_owner.items():
            if c is not None:
                c.unacked -= len(recs)
            queues.add(q)
            if handle is None:
                continue
            if how == "ack":
                self.door.settle(handle.ack, recs, q)
            elif how == "requeue":
                self.door.settle(lambda rs, h=handle: h.release(rs, delay_ms=0), recs, q)
            else:
                q.dead_letter(handle, [(r, "rejected") for r in recs])
        if ch.global_prefetch:  # the room freed is the channel's: any of its consumers may use it
            queues.update(c.queue for c in ch.consumers.values())
        for q in queues:
            q.kick()

    def _kick_queues(self) -> None:
        for ch in self.channels.values():
            for c in ch.consumers.values():
                c.queue.kick()

    # --- ending ---------------------------------------------------------------------------------------

    def _close_channel(self, ch: Channel) -> None:
        """Consumers go, deliveries not acknowledged are released (redelivered)."""
        ch.content = None
        for c in list(ch.consumers.values()):
            self._drop_consumer(c)
        ch.consumers.clear()
        queues = {owner[2] for owner, _ in ch.unacked.values()}
        ch.unacked.clear()
        for h in ch.all_handles:
            try:
                h.release_held()
            except Exception:
                log.exception("amqp %s: releasing the deliveries of channel %d failed", self.peer, ch.number)
        ch.all_handles.clear()
        ch.handles.clear()
        for q in queues:
            q.kick()

    def _release_all(self) -> None:
        for ch in list(self.channels.values()):
            self._close_channel(ch)

    def _end(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._release_all()
        self.channels.clear()
        for name in list(self.exclusive_queues):
            q = self.door.queues.get(name)
            if q is not None and q.owner is self:
                self.door.remove_queue(q)
        self.exclusive_queues.clear()
        self.door.connections.discard(self)
        self.hub.forget(self)
        if self.transport is not None:
            self.flush()
            self.transport.close()


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("umlog")
    except Exception:
        return "0"


def _bad_property(headers, user: bytes) -> AmqpError | None:
    """RabbitMQ's checks of a published message's properties (406, the channel
    closes): ``user_id`` must be the connection's login name (a sender cannot
    pass for another), ``expiration`` a whole number of milliseconds."""
    for k, v in headers:
        if k == "amqp-expiration":
            if not v.isdigit():
                return AmqpError(PRECONDITION_FAILED, f"PRECONDITION_FAILED - invalid expiration "
                                 f"'{bytes(v).decode('utf-8', 'replace')}'")
        elif k == "amqp-user-id" and v != user:
            return AmqpError(PRECONDITION_FAILED, f"PRECONDITION_FAILED - user_id property set to "
                             f"'{bytes(v).decode('utf-8', 'replace')}' but authenticated user was "
                             f"'{user.decode('utf-8', 'replace')}'")
    return None

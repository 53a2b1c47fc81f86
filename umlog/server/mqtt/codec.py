"""MQTT 3.1.1 and 5.0 packets: a sans-I/O codec (bytes in, packets out, and back).

Theory of operation
-------------------
``PacketReader`` is fed whatever the socket gave (``feed``) and yields whole
packets (``packets()``); it never does I/O. Every packet is a small slotted
class; ``encode(packet, version)`` turns one back into bytes. The protocol
version (4 = 3.1.1, 5 = 5.0; 3 = 3.1 is read as 3.1.1) comes from the
CONNECT, which is decoded the same in both: a reader switches to the version of
the CONNECT it reads (``reader.version``), at once, since the packets after it
may be in the same bytes. A client-side reader is told the version instead.

Errors carry the MQTT 5 reason code the server answers with (a CONNACK or
DISCONNECT reason code), so the door maps a decoding failure straight onto the
wire: ``MalformedPacket`` (0x81: bytes that do not parse), ``ProtocolError``
(0x82: parses, but the spec forbids it, e.g. reserved flag bits set),
``PacketTooLarge`` (0x95: over the maximum packet size; detected from the
fixed header, before the body is buffered), ``UnsupportedProtocolVersion``
(0x84). A decoding error leaves the reader unusable: the connection is
closed.

MQTT 5 properties are a dict keyed by property name (``"message_expiry_interval"``);
``user_property`` is a list of (name, value) pairs and ``subscription_identifier``
a list of ints (both may repeat); any other property twice is a protocol
error. In 3.1.1 packets have no properties and no reason codes where 5.0 added
them: those fields are simply not encoded.

Layout of the fixed header, the same for every packet::

    byte 0      packet type (4 bits) | flags (4 bits)
    bytes 1..4  remaining length: variable byte integer, 7 bits per byte, low first

Topic names and filters are checked here (``check_topic_name``,
``check_topic_filter``) and matched by ``topic_matches``; wildcard filters
never match a topic name starting with ``$`` at a leading wildcard.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from umlog._native.core import mqtt_publish_frame, mqtt_scan

__all__ = [
    "MQTTError", "MalformedPacket", "ProtocolError", "PacketTooLarge", "UnsupportedProtocolVersion",
    "Connect", "Will", "Connack", "Publish", "PubAck", "PubRec", "PubRel", "PubComp", "Subscribe",
    "Subscription", "Suback", "Unsubscribe", "Unsuback", "PingReq", "PingResp", "Disconnect", "Auth",
    "PacketReader", "encode", "encode_ack", "encode_publish", "decode_packet", "check_topic_name",
    "check_topic_filter", "topic_matches",
    "parse_shared", "MAX_PACKET_SIZE",
]

# Packet types.
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 10, 11, 12, 13, 14, 15

# The largest remaining length a variable byte integer can say (268,435,455)
# plus the fixed header: the protocol's own maximum packet size.
MAX_REMAINING = 268_435_455
MAX_PACKET_SIZE = MAX_REMAINING + 5

# Reason codes used by the codec itself (the door uses the rest by number).
MALFORMED = 0x81
PROTOCOL_ERROR = 0x82
UNSUPPORTED_VERSION = 0x84
TOO_LARGE = 0x95
TOPIC_FILTER_INVALID = 0x8F
TOPIC_NAME_INVALID = 0x90


class MQTTError(ValueError):
    """A packet the server refuses; ``reason`` is the MQTT 5 reason code to answer with."""

    reason = MALFORMED

    def __init__(self, message: str, reason: int | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class MalformedPacket(MQTTError):
    reason = MALFORMED


class ProtocolError(MQTTError):
    reason = PROTOCOL_ERROR


class PacketTooLarge(MQTTError):
    reason = TOO_LARGE


class UnsupportedProtocolVersion(MQTTError):
    reason = UNSUPPORTED_VERSION


# --- properties (MQTT 5, section 2.2.2.2) ------------------------------------------------------

_BYTE, _U16, _U32, _VARINT, _STR, _BIN, _PAIR = range(7)
# id: (name, type)
PROPERTIES: dict[int, tuple[str, int]] = {
    0x01: ("payload_format_indicator", _BYTE),
    0x02: ("message_expiry_interval", _U32),
    0x03: ("content_type", _STR),
    0x08: ("response_topic", _STR),
    0x09: ("correlation_data", _BIN),
    0x0B: ("subscription_identifier", _VARINT),
    0x11: ("session_expiry_interval", _U32),
    0x12: ("assigned_client_identifier", _STR),
    0x13: ("server_keep_alive", _U16),
    0x15: ("authentication_method", _STR),
    0x16: ("authentication_data", _BIN),
    0x17: ("request_problem_information", _BYTE),
    0x18: ("will_delay_interval", _U32),
    0x19: ("request_response_information", _BYTE),
    0x1A: ("response_information", _STR),
    0x1C: ("server_reference", _STR),
    0x1F: ("reason_string", _STR),
    0x21: ("receive_maximum", _U16),
    0x22: ("topic_alias_maximum", _U16),
    0x23: ("topic_alias", _U16),
    0x24: ("maximum_qos", _BYTE),
    0x25: ("retain_available", _BYTE),
    0x26: ("user_property", _PAIR),
    0x27: ("maximum_packet_size", _U32),
    0x28: ("wildcard_subscription_available", _BYTE),
    0x29: ("subscription_identifier_available", _BYTE),
    0x2A: ("shared_subscription_available", _BYTE),
}
PROPERTY_IDS = {name: (pid, typ) for pid, (name, typ) in PROPERTIES.items()}
_REPEATABLE = {"user_property", "subscription_identifier"}
# Properties that must not be 0 where present (receive maximum, maximum packet size, sub id).
_NONZERO = {"receive_maximum", "maximum_packet_size", "subscription_identifier"}

_u16 = struct.Struct(">H")
_u32 = struct.Struct(">I")


# --- primitives ---------------------------------------------------------------------------------

def encode_varint(n: int) -> bytes:
    if not 0 <= n <= MAX_REMAINING:
        raise ValueError(f"variable byte integer out of range: {n}")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _utf8(s: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > 0xFFFF:
        raise ValueError(f"string of {len(b)} bytes is longer than MQTT's 65,535")
    return _u16.pack(len(b)) + b


def _binary(b: bytes) -> bytes:
    if len(b) > 0xFFFF:
        raise ValueError(f"binary data of {len(b)} bytes is longer than MQTT's 65,535")
    return _u16.pack(len(b)) + bytes(b)


class _Cursor:
    """Reads a packet's body; every read checks the bounds (MalformedPacket)."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf, pos: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf) if end is None else end

    def left(self) -> int:
        return self.end - self.pos

    def take(self, n: int) -> bytes:
        if n > self.end - self.pos:
            raise MalformedPacket(f"truncated: needs {n} more bytes, {self.end - self.pos} left")
        b = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return b

    def byte(self) -> int:
        if self.pos >= self.end:
            raise MalformedPacket("truncated: needs 1 more byte, 0 left")
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def u16(self) -> int:
        return _u16.unpack(self.take(2))[0]

    def u32(self) -> int:
        return _u32.unpack(self.take(4))[0]

    def varint(self) -> int:
        n = shift = 0
        for i in range(4):
            b = self.byte()
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                if i and b == 0:
                    raise MalformedPacket("variable byte integer not in its shortest form")
                return n
            shift += 7
        raise MalformedPacket("variable byte integer longer than 4 bytes")

    def binary(self) -> bytes:
        return self.take(self.u16())

    def string(self) -> str:
        raw = self.binary()
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedPacket("a string is not well-formed UTF-8") from None
        if "\x00" in s:
            raise MalformedPacket("a string contains U+0000")
        return s


def _read_properties(c: _Cursor) -> dict:
    n = c.varint()
    if n > c.left():
        raise MalformedPacket(f"properties of {n} bytes with {c.left()} left in the packet")
    end = c.pos + n
    props: dict = {}
    while c.pos < end:
        pid = c.varint()
        spec = PROPERTIES.get(pid)
        if spec is None:
            raise MalformedPacket(f"unknown property identifier 0x{pid:02x}")
        name, typ = spec
        if typ == _BYTE:
            v = c.byte()
        elif typ == _U16:
            v = c.u16()
        elif typ == _U32:
            v = c.u32()
        elif typ == _VARINT:
            v = c.varint()
        elif typ == _STR:
            v = c.string()
        elif typ == _BIN:
            v = c.binary()
        else:
            v = (c.string(), c.string())
        if name in _NONZERO and v == 0:
            raise ProtocolError(f"property {name} is 0")
        if name in _REPEATABLE:
            props.setdefault(name, []).append(v)
        elif name in props:
            raise ProtocolError(f"property {name} appears twice")
        else:
            props[name] = v
    if c.pos != end:
        raise MalformedPacket("properties overrun their length")
    return props


def encode_properties(props: dict | None) -> bytes:
    if not props:
        return b"\x00"
    out = bytearray()
    for name, v in props.items():
        try:
            pid, typ = PROPERTY_IDS[name]
        except KeyError:
            raise ValueError(f"unknown MQTT property {name!r}") from None
        for item in (v if name in _REPEATABLE else (v,)):
            out += encode_varint(pid)
            if typ == _BYTE:
                out.append(item)
            elif typ == _U16:
                out += _u16.pack(item)
            elif typ == _U32:
                out += _u32.pack(item)
            elif typ == _VARINT:
                out += encode_varint(item)
            elif typ == _STR:
                out += _utf8(item)
            elif typ == _BIN:
                out += _binary(item)
            else:
                out += _utf8(item[0]) + _utf8(item[1])
    return encode_varint(len(out)) + bytes(out)


# --- packets ------------------------------------------------------------------------------------

class _Packet:
    __slots__ = ()
    type = 0

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and all(getattr(self, s) == getattr(other, s) for s in self.__slots__)

    def __repr__(self) -> str:
        fields = ", ".join(f"{s}={getattr(self, s)!r:.60}" for s in self.__slots__)
        return f"{type(self).__name__}({fields})"


class Will:
    __slots__ = ("topic", "payload", "qos", "retain", "properties")

    def __init__(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                 properties: dict | None = None) -> None:
        self.topic, self.payload, self.qos, self.retain = topic, payload, qos, retain
        self.properties = properties or {}

    __eq__ = _Packet.__eq__
    __repr__ = _Packet.__repr__


class Connect(_Packet):
    __slots__ = ("version", "client_id", "clean_start", "keep_alive", "username", "password", "will",
                 "properties", "protocol_name")
    type = CONNECT

    def __init__(self, client_id: str = "", *, version: int = 4, clean_start: bool = True, keep_alive: int = 60,
                 username: str | None = None, password: bytes | None = None, will: Will | None = None,
                 properties: dict | None = None, protocol_name: str | None = None) -> None:
        self.version, self.client_id, self.clean_start, self.keep_alive = version, client_id, clean_start, keep_alive
        self.username, self.password, self.will = username, password, will
        self.properties = properties or {}
        self.protocol_name = protocol_name or ("MQIsdp" if version == 3 else "MQTT")


class Connack(_Packet):
    __slots__ = ("session_present", "reason", "properties")
    type = CONNACK

    def __init__(self, session_present: bool = False, reason: int = 0, properties: dict | None = None) -> None:
        self.session_present, self.reason, self.properties = session_present, reason, properties or {}


class Publish(_Packet):
    __slots__ = ("topic", "payload", "qos", "retain", "dup", "packet_id", "properties")
    type = PUBLISH

    def __init__(self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False, dup: bool = False,
                 packet_id: int | None = None, properties: dict | None = None) -> None:
        self.topic, self.payload, self.qos, self.retain, self.dup = topic, payload, qos, retain, dup
        self.packet_id, self.properties = packet_id, properties or {}


class _Ack(_Packet):
    """PUBACK, PUBREC, PUBREL, PUBCOMP: a packet id, and in MQTT 5 a reason and properties."""

    __slots__ = ("packet_id", "reason", "properties")

    def __init__(self, packet_id: int, reason: int = 0, properties: dict | None = None) -> None:
        self.packet_id, self.reason, self.properties = packet_id, reason, properties or {}


class PubAck(_Ack):
    __slots__ = ()
    type = PUBACK


class PubRec(_Ack):
    __slots__ = ()
    type = PUBREC


class PubRel(_Ack):
    __slots__ = ()
    type = PUBREL


class PubComp(_Ack):
    __slots__ = ()
    type = PUBCOMP


class Subscription:
    """One topic filter of a SUBSCRIBE with its options (MQTT 5 section 3.8.3.1)."""

    __slots__ = ("filter", "qos", "no_local", "retain_as_published", "retain_handling")

    def __init__(self, filter: str, qos: int = 0, no_local: bool = False, retain_as_published: bool = False,
                 retain_handling: int = 0) -> None:
        self.filter, self.qos, self.no_local = filter, qos, no_local
        self.retain_as_published, self.retain_handling = retain_as_published, retain_handling

    __eq__ = _Packet.__eq__
    __repr__ = _Packet.__repr__


class Subscribe(_Packet):
    __slots__ = ("packet_id", "subscriptions", "properties")
    type = SUBSCRIBE

    def __init__(self, packet_id: int, subscriptions: list[Subscription], properties: dict | None = None) -> None:
        self.packet_id, self.subscriptions, self.properties = packet_id, subscriptions, properties or {}


class Suback(_Packet):
    __slots__ = ("packet_id", "reasons", "properties")
    type = SUBACK

    def __init__(self, packet_id: int, reasons: list[int], properties: dict | None = None) -> None:
        self.packet_id, self.reasons, self.properties = packet_id, reasons, properties or {}


class Unsubscribe(_Packet):
    __slots__ = ("packet_id", "filters", "properties")
    type = UNSUBSCRIBE

    def __init__(self, packet_id: int, filters: list[str], properties: dict | None = None) -> None:
        self.packet_id, self.filters, self.properties = packet_id, filters, properties or {}


class Unsuback(_Packet):
    __slots__ = ("packet_id", "reasons", "properties")
    type = UNSUBACK

    def __init__(self, packet_id: int, reasons: list[int] | None = None, properties: dict | None = None) -> None:
        self.packet_id, self.reasons, self.properties = packet_id, reasons or [], properties or {}


class PingReq(_Packet):
    __slots__ = ()
    type = PINGREQ


class PingResp(_Packet):
    __slots__ = ()
    type = PINGRESP


class Disconnect(_Packet):
    __slots__ = ("reason", "properties")
    type = DISCONNECT

    def __init__(self, reason: int = 0, properties: dict | None = None) -> None:
        self.reason, self.properties = reason, properties or {}


class Auth(_Packet):
    __slots__ = ("reason", "properties")
    type = AUTH

    def __init__(self, reason: int = 0, properties: dict | None = None) -> None:
        self.reason, self.properties = reason, properties or {}


# --- decoding -----------------------------------------------------------------------------------

# Fixed-header flags every packet but PUBLISH must carry (section 2.1.3).
_FLAGS = {CONNECT: 0, CONNACK: 0, PUBACK: 0, PUBREC: 0, PUBREL: 2, PUBCOMP: 0, SUBSCRIBE: 2, SUBACK: 0,
          UNSUBSCRIBE: 2, UNSUBACK: 0, PINGREQ: 0, PINGRESP: 0, DISCONNECT: 0, AUTH: 0}


def _packet_id(c: _Cursor) -> int:
    pid = c.u16()
    if pid == 0:
        raise ProtocolError("packet identifier 0")
    return pid


def _decode_connect(c: _Cursor) -> Connect:
    name = c.string()
    level = c.byte()
    if name == "MQIsdp" and level == 3:
        pass
    elif name != "MQTT":
        raise UnsupportedProtocolVersion(f"protocol name {name!r} is not MQTT")
    elif level not in (4, 5):
        raise UnsupportedProtocolVersion(f"protocol level {level} (umlog speaks MQTT 3.1, 3.1.1 and 5.0)")
    flags = c.byte()
    if flags & 0x01:
        raise MalformedPacket("CONNECT reserved flag is set")
    keep_alive = c.u16()
    props = _read_properties(c) if level == 5 else {}
    client_id = c.string()
    will = None
    will_qos = (flags >> 3) & 3
    if flags & 0x04:
        if will_qos == 3:
            raise MalformedPacket("will QoS 3")
        will_props = _read_properties(c) if level == 5 else {}
        will = Will(c.string(), c.binary(), will_qos, bool(flags & 0x20), will_props)
    elif will_qos or flags & 0x20:
        raise MalformedPacket("will QoS or will retain set without the will flag")
    username = c.string() if flags & 0x80 else None
    password = c.binary() if flags & 0x40 else None
    if password is not None and username is None and level != 5:
        raise MalformedPacket("a password without a user name (MQTT 3.1.1)")
    return Connect(client_id, version=level, clean_start=bool(flags & 0x02), keep_alive=keep_alive,
                   username=username, password=password, will=will, properties=props, protocol_name=name)


def _decode_publish(c: _Cursor, flags: int, version: int) -> Publish:
    qos = (flags >> 1) & 3
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    dup = bool(flags & 0x08)
    if dup and qos == 0:
        raise MalformedPacket("PUBLISH with DUP set at QoS 0")
    topic = c.string()
    packet_id = _packet_id(c) if qos else None
    props = _read_properties(c) if version == 5 else {}
    return Publish(topic, c.take(c.left()), qos, bool(flags & 0x01), dup, packet_id, props)


def _decode_ack(cls, c: _Cursor, version: int):
    pid = _packet_id(c)
    reason, props = 0, {}
    if version == 5 and c.left():
        reason = c.byte()
        if c.left():
            props = _read_properties(c)
    return cls(pid, reason, props)


def _decode_subscribe(c: _Cursor, version: int) -> Subscribe:
    pid = _packet_id(c)
    props = _read_properties(c) if version == 5 else {}
    subs = []
    while c.left():
        f = c.string()
        o = c.byte()
        if version == 5:
            if o & 0xC0:
                raise MalformedPacket("SUBSCRIBE options reserved bits set")
            rh = (o >> 4) & 3
            if rh == 3:
                raise ProtocolError("retain handling 3")
            sub = Subscription(f, o & 3, bool(o & 4), bool(o & 8), rh)
        else:
            if o & 0xFC:
                raise MalformedPacket("SUBSCRIBE requested QoS reserved bits set")
            sub = Subscription(f, o & 3)
        if sub.qos == 3:
            raise MalformedPacket("SUBSCRIBE with QoS 3")
        subs.append(sub)
    if not subs:
        raise ProtocolError("SUBSCRIBE without a topic filter")
    return Subscribe(pid, subs, props)


def _decode_suback(c: _Cursor, version: int, cls=Suback):
    pid = _packet_id(c)
    props = _read_properties(c) if version == 5 else {}
    return cls(pid, list(c.take(c.left())), props)


def _decode_unsubscribe(c: _Cursor, version: int) -> Unsubscribe:
    pid = _packet_id(c)
    props = _read_properties(c) if version == 5 else {}
    filters = []
    while c.left():
        filters.append(c.string())
    if not filters:
        raise ProtocolError("UNSUBSCRIBE without a topic filter")
    return Unsubscribe(pid, filters, props)


def _decode_reason_and_properties(cls, c: _Cursor, version: int):
    if version != 5 or not c.left():
        return cls()
    reason = c.byte()
    return cls(reason, _read_properties(c) if c.left() else {})


def decode_packet(first: int, body, version: int):
    """One packet from its first byte and its body (the bytes after the remaining length)."""
    ptype, flags = first >> 4, first & 0x0F
    if ptype != PUBLISH and _FLAGS.get(ptype, -1) != flags:
        if ptype == 0:
            raise MalformedPacket("packet type 0 is reserved")
        raise MalformedPacket(f"packet type {ptype} with fixed-header flags {flags:#x}")
    c = _Cursor(body)
    if ptype == PUBLISH:
        p = _decode_publish(c, flags, version)
    elif ptype == CONNECT:
        p = _decode_connect(c)
    elif ptype == CONNACK:
        ack_flags = c.byte()
        if ack_flags & 0xFE:
            raise MalformedPacket("CONNACK reserved flags set")
        reason = c.byte()
        p = Connack(bool(ack_flags & 1), reason, _read_properties(c) if version == 5 else {})
    elif ptype in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        p = _decode_ack({PUBACK: PubAck, PUBREC: PubRec, PUBREL: PubRel, PUBCOMP: PubComp}[ptype], c, version)
    elif ptype == SUBSCRIBE:
        p = _decode_subscribe(c, version)
    elif ptype == SUBACK:
        p = _decode_suback(c, version)
    elif ptype == UNSUBSCRIBE:
        p = _decode_unsubscribe(c, version)
    elif ptype == UNSUBACK:
        p = _decode_suback(c, version, Unsuback) if version == 5 else Unsuback(_packet_id(c))
    elif ptype == PINGREQ:
        p = PingReq()
    elif ptype == PINGRESP:
        p = PingResp()
    elif ptype == DISCONNECT:
        p = _decode_reason_and_properties(Disconnect, c, version)
    else:  # AUTH
        if version != 5:
            raise MalformedPacket("AUTH is an MQTT 5 packet")
        p = _decode_reason_and_properties(Auth, c, version)
    if c.left():
        raise MalformedPacket(f"{type(p).__name__} has {c.left()} bytes past its end")
    return p


class PacketReader:
    """Frames a byte stream into packets (see the module docstring).

    :param max_packet_size: the largest packet accepted (whole, fixed header
        included); a larger one raises PacketTooLarge from its fixed header.
    """

    def __init__(self, max_packet_size: int = MAX_PACKET_SIZE, version: int = 4) -> None:
        self.max_packet_size = max_packet_size
        self.version = version
        # Set (to the plain record headers by QoS) by a server connection: runs
        # of plain PUBLISHes and PUBACKs come out as MqttPublishRun/MqttAckRun.
        self.plain_headers = None
        self._buf = bytearray()

    def feed(self, data) -> None:
        self._buf += data

    def buffered(self) -> int:
        return len(self._buf)

    def packets(self) -> Iterator:
        """Every whole packet buffered so far, in order; stops at a partial one.

        Runs of plain PUBLISH and PUBACK packets are decoded natively
        (``mqtt_scan``, one call per run); it leaves every other packet, and
        any it is unsure of, to the decoder here, which raises the errors.
        With ``plain_headers`` set, such a run is one object (see mqtt_scan)."""
        buf = self._buf
        pos = 0
        try:
            while True:
                run: list = []
                pos = mqtt_scan(buf, pos, self.version, self.max_packet_size, run, Publish, PubAck,
                                self.plain_headers)
                yield from run
                n = len(buf) - pos
                if n < 2:
                    return
                length = shift = 0
                i = pos + 1
                while True:
                    if i >= len(buf):
                        return  # remaining length not all here yet
                    b = buf[i]
                    length |= (b & 0x7F) << shift
                    i += 1
                    if not b & 0x80:
                        if i - pos > 2 and b == 0:
                            raise MalformedPacket("remaining length not in its shortest form")
                        break
                    shift += 7
                    if shift > 21:
                        raise MalformedPacket("remaining length longer than 4 bytes")
                total = i - pos + length
                if total > self.max_packet_size:
                    raise PacketTooLarge(f"packet of {total} bytes exceeds the maximum packet size "
                                         f"{self.max_packet_size}")
                if len(buf) - pos < total:
                    return
                first = buf[pos]
                body = memoryview(buf)[i:i + length]
                try:
                    p = decode_packet(first, body, self.version)
                finally:
                    body.release()
                pos += total
                if p.type == CONNECT:
                    # What follows in the same bytes is already in the CONNECT's version.
                    self.version = 5 if p.version == 5 else 4
                yield p
        finally:
            if pos:
                del buf[:pos]


# --- encoding -----------------------------------------------------------------------------------

def _frame(first: int, body: bytes) -> bytes:
    return bytes([first]) + encode_varint(len(body)) + body


def encode_publish(topic: str, payload, qos: int = 0, retain: bool = False, dup: bool = False,
                   packet_id: int | None = None, properties: dict | None = None, version: int = 4) -> bytes:
    """The bytes of a PUBLISH, without making a ``Publish`` first (the fan-out
    encodes one per message it delivers, natively)."""
    props = encode_properties(properties) if version == 5 else b""
    return mqtt_publish_frame(topic, payload, (dup << 3) | (qos << 1) | int(retain), packet_id or 0, props)


def encode_ack(ptype: int, packet_id: int) -> bytes:
    """A PUBACK, PUBREC, PUBREL or PUBCOMP with reason 0 and no properties: the
    same four bytes in 3.1.1 and 5.0 (the answer to most PUBLISHes)."""
    return _ACK_FIRST[ptype] + _u16.pack(packet_id)


_ACK_FIRST = {t: bytes([(t << 4) | _FLAGS[t], 2]) for t in (PUBACK, PUBREC, PUBREL, PUBCOMP)}


def _props(p, version: int) -> bytes:
    return encode_properties(p.properties) if version == 5 else b""


def encode(p, version: int = 4) -> bytes:
    """The bytes of packet ``p`` in MQTT ``version`` (4 = 3.1.1, 5 = 5.0)."""
    t = p.type
    if t == PUBLISH:
        return encode_publish(p.topic, p.payload, p.qos, p.retain, p.dup, p.packet_id, p.properties, version)
    if t == CONNACK:
        return _frame(0x20, bytes([int(p.session_present), p.reason]) + _props(p, version))
    if t in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        body = _u16.pack(p.packet_id)
        if version == 5 and (p.reason or p.properties):
            body += bytes([p.reason]) + (encode_properties(p.properties) if p.properties else b"")
        return _frame((t << 4) | _FLAGS[t], body)
    if t in (SUBACK, UNSUBACK):
        if t == UNSUBACK and version != 5:
            return _frame(0xB0, _u16.pack(p.packet_id))
        return _frame(t << 4, _u16.pack(p.packet_id) + _props(p, version) + bytes(p.reasons))
    if t in (PINGREQ, PINGRESP):
        return bytes([t << 4, 0])
    if t in (DISCONNECT, AUTH):
        if version != 5 or (not p.reason and not p.properties and t == DISCONNECT):
            return bytes([t << 4, 0])
        return _frame(t << 4, bytes([p.reason]) + (encode_properties(p.properties) if p.properties else b""))
    if t == SUBSCRIBE:
        body = bytearray(_u16.pack(p.packet_id) + _props(p, version))
        for s in p.subscriptions:
            o = s.qos
            if version == 5:
                o |= (s.no_local << 2) | (s.retain_as_published << 3) | (s.retain_handling << 4)
            body += _utf8(s.filter) + bytes([o])
        return _frame(0x82, bytes(body))
    if t == UNSUBSCRIBE:
        return _frame(0xA2, _u16.pack(p.packet_id) + _props(p, version) + b"".join(_utf8(f) for f in p.filters))
    if t == CONNECT:
        v = p.version
        flags = (p.clean_start << 1)
        will = b""
        if p.will is not None:
            w = p.will
            flags |= 0x04 | (w.qos << 3) | (w.retain << 5)
            will = (encode_properties(w.properties) if v == 5 else b"") + _utf8(w.topic) + _binary(w.payload)
        if p.username is not None:
            flags |= 0x80
        if p.password is not None:
            flags |= 0x40
        body = (_utf8(p.protocol_name) + bytes([v, flags]) + _u16.pack(p.keep_alive)
                + (encode_properties(p.properties) if v == 5 else b"") + _utf8(p.client_id) + will
                + (_utf8(p.username) if p.username is not None else b"")
                + (_binary(p.password) if p.password is not None else b""))
        return _frame(0x10, body)
    raise TypeError(f"not an MQTT packet: {p!r}")


# --- topics -------------------------------------------------------------------------------------

def check_topic_name(name: str) -> None:
    """A PUBLISH topic name: non-empty, no wildcards (section 4.7.3)."""
    if not name:
        raise MQTTError("empty topic name", TOPIC_NAME_INVALID)
    if "+" in name or "#" in name:
        raise MQTTError(f"topic name {name!r} contains a wildcard", TOPIC_NAME_INVALID)
    if len(name.encode()) > 0xFFFF:
        raise MQTTError("topic name longer than 65,535 bytes", TOPIC_NAME_INVALID)


def check_topic_filter(f: str) -> None:
    """A SUBSCRIBE filter: ``#`` only whole and last, ``+`` only a whole level."""
    if not f:
        raise MQTTError("empty topic filter", TOPIC_FILTER_INVALID)
    levels = f.split("/")
    for i, lv in enumerate(levels):
        if "#" in lv and (lv != "#" or i != len(levels) - 1):
            raise MQTTError(f"topic filter {f!r}: '#' must be a whole last level", TOPIC_FILTER_INVALID)
        if "+" in lv and lv != "+":
            raise MQTTError(f"topic filter {f!r}: '+' must be a whole level", TOPIC_FILTER_INVALID)


def parse_shared(f: str) -> tuple[str | None, str]:
    """``$share/GROUP/FILTER`` -> (GROUP, FILTER); any other filter -> (None, f)."""
    if not f.startswith("$share/"):
        return None, f
    parts = f.split("/", 2)
    if len(parts) < 3 or not parts[1] or "+" in parts[1] or "#" in parts[1] or not parts[2]:
        raise MQTTError(f"shared subscription {f!r} is not $share/GROUP/FILTER", TOPIC_FILTER_INVALID)
    return parts[1], parts[2]


def topic_matches(f: str, name: str) -> bool:
    """Whether filter ``f`` matches topic name ``name`` (section 4.7; ``$`` rule 4.7.2)."""
    if name.startswith("$") and f[:1] in ("+", "#"):
        return False
    fl = f.split("/")
    nl = name.split("/")
    for i, lv in enumerate(fl):
        if lv == "#":
            return True  # also matches the parent level: "a/#" matches "a"
        if i >= len(nl):
            return False
        if lv != "+" and lv != nl[i]:
            return False
    return len(fl) == len(nl)

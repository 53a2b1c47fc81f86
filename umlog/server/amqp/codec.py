"""AMQP 0-9-1 bytes: frames, the hot methods, content properties <-> record headers, routing matches.

``pamqp`` decodes the client's methods and encodes the server's; the few
methods on the message path (basic.publish and basic.ack in, basic.deliver,
basic.get-ok, basic.return and basic.ack out) are packed by hand, and so are
content headers, because their properties must come back byte for byte. What
is done per message (reading runs of basic.publish frames, writing runs of
basic.deliver frames, content properties both ways) is native:
``umlog/_native/amqp.pyx``, one call per run of messages.

Properties as record headers
----------------------------
A published message becomes one record: key = routing key, value = body, and
one header per property present (absent properties have no header)::

    content_type      content-type            (the name MQTT's content type uses too)
    content_encoding  amqp-content-encoding
    headers           amqp-headers            the field table's bytes as the client sent them
                                              (without its length prefix): every field type kept
    delivery_mode     amqp-delivery-mode      ASCII decimal
    priority          amqp-priority           ASCII decimal
    correlation_id    amqp-correlation-id
    reply_to          amqp-reply-to
    expiration        amqp-expiration         as sent (ms, ASCII)
    message_id        amqp-message-id
    timestamp         amqp-timestamp          ASCII decimal seconds
    type              amqp-type
    user_id           amqp-user-id
    app_id            amqp-app-id
    cluster_id        amqp-cluster-id

Short strings are stored as their bytes. A record with other headers (from
another door: Kafka headers, MQTT user properties, dead-letter headers) is
delivered with them as long-string entries of the headers table, after the
entries of ``amqp-headers``.
"""

from __future__ import annotations

import datetime
import re
import struct

from pamqp import decode as pdecode
from pamqp import encode as pencode

from umlog._native.core import amqp_content_frames, amqp_parse_properties

__all__ = ["PROTOCOL_HEADER", "FRAME_END", "parse_properties", "check_table", "content_frames",
           "deliver_method", "get_ok_method", "return_method", "ack_method", "topic_regex", "headers_match",
           "record_table", "add_death", "PROP_HEADERS", "lift_delay", "DELAY_KEYS"]

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"

_frame_head = struct.Struct(">BHI")
_H = struct.Struct(">H")
_I = struct.Struct(">I")
_Q = struct.Struct(">Q")
_q = struct.Struct(">q")

# (record header, kind) in property-flag order (bit 15 first). Kinds: s shortstr,
# t table, o octet, q timestamp (long long).
PROP_HEADERS = (
    ("content-type", "s"), ("amqp-content-encoding", "s"), ("amqp-headers", "t"), ("amqp-delivery-mode", "o"),
    ("amqp-priority", "o"), ("amqp-correlation-id", "s"), ("amqp-reply-to", "s"), ("amqp-expiration", "s"),
    ("amqp-message-id", "s"), ("amqp-timestamp", "q"), ("amqp-type", "s"), ("amqp-user-id", "s"),
    ("amqp-app-id", "s"), ("amqp-cluster-id", "s"),
)
_PROP_INDEX = {name: i for i, (name, _) in enumerate(PROP_HEADERS)}
# record headers that say how the record was stored, never shown as table entries
HIDDEN = {"umlog-ttl-ms"}


class FrameError(ValueError):
    """Bytes that are not a valid frame or field (the connection is closed with 501/502)."""


def _shortstr(b: bytes) -> bytes:
    if len(b) > 255:
        b = b[:255]
    return bytes((len(b),)) + b


# --- content headers ------------------------------------------------------------------------------
# The per-message work is native (umlog/_native/amqp.pyx, with the same property table).

def parse_properties(payload: bytes | memoryview) -> tuple[int, list[tuple[str, bytes]]]:
    """A content-header frame's payload -> (body size, record headers)."""
    try:
        size, headers, table = amqp_parse_properties(payload)
    except ValueError as e:
        raise FrameError(str(e)) from None
    if table is not None:
        check_table(table)
        headers = lift_delay(headers, table)
    return size, headers


DELAY_KEYS = ("umlog-delay-ms", "umlog-deliver-at")  # umlog/delivery/delay.py's headers


def lift_delay(headers, table: bytes):
    """Record headers with a delay asked for in the headers table: its
    ``umlog-delay-ms`` / ``umlog-deliver-at`` entries become record headers of
    those names (ASCII, where the delay hook of every append path reads them)
    and leave the table, whose other entries stay byte for byte. ``headers``
    as they are when the table has none (a substring test, the common case)."""
    if b"umlog-delay-ms" not in table and b"umlog-deliver-at" not in table:
        return headers
    kept, lifted, pos, end = bytearray(), [], 0, len(table)
    while pos < end:
        n = table[pos]
        name = bytes(table[pos + 1:pos + 1 + n]).decode("utf-8", "replace")
        used, value = pdecode.embedded_value(bytes(table[pos + 1 + n:]))
        entry_end = pos + 1 + n + used
        if name in DELAY_KEYS:
            lifted.append((name, value if isinstance(value, bytes) else str(value).encode()))
        else:
            kept += table[pos:entry_end]
        pos = entry_end
    out = [(k, v) for k, v in headers if k != "amqp-headers"]
    if kept:
        out.append(("amqp-headers", bytes(kept)))
    return out + lifted


def check_table(raw: bytes) -> None:
    """A headers table (without its length prefix) must decode: it is stored as sent."""
    try:
        pdecode.field_table(_I.pack(len(raw)) + raw)
    except Exception as e:  # pamqp raises ValueError/struct.error/... on garbage
        raise FrameError(f"bad headers table: {e}") from None


def content_frames(channel: int, headers, body: bytes, frame_max: int, extra_table: bytes = b"") -> bytes:
    """The header frame and the body frames (split to ``frame_max``) of one message
    from its record headers (``extra_table``: encoded entries added to its headers table)."""
    return amqp_content_frames(channel, headers, b"" if body is None else body, frame_max, extra_table)


def method_frame(channel: int, payload: bytes) -> bytes:
    return _frame_head.pack(FRAME_METHOD, channel, len(payload)) + payload + b"\xce"


def deliver_method(consumer_tag: bytes, tag: int, redelivered: bool, exchange: bytes, key: bytes) -> bytes:
    return (b"\x00\x3c\x00\x3c" + _shortstr(consumer_tag) + _Q.pack(tag) + (b"\x01" if redelivered else b"\x00")
            + _shortstr(exchange) + _shortstr(key))


def get_ok_method(tag: int, redelivered: bool, exchange: bytes, key: bytes, count: int) -> bytes:
    return (b"\x00\x3c\x00\x47" + _Q.pack(tag) + (b"\x01" if redelivered else b"\x00") + _shortstr(exchange)
            + _shortstr(key) + _I.pack(max(0, min(count, 0xFFFFFFFF))))


def return_method(code: int, text: str, exchange: bytes, key: bytes) -> bytes:
    return b"\x00\x3c\x00\x32" + _H.pack(code) + _shortstr(text.encode()) + _shortstr(exchange) + _shortstr(key)


def ack_method(tag: int, multiple: bool, nack: bool = False) -> bytes:
    return (b"\x00\x3c\x00\x78" if nack else b"\x00\x3c\x00\x50") + _Q.pack(tag) + (b"\x01" if multiple else b"\x00")


def parse_publish(payload) -> tuple[str, bytes, bool, bool]:
    """basic.publish arguments: (exchange, routing key, mandatory, immediate)."""
    pos = 6
    n = payload[pos]
    exchange = bytes(payload[pos + 1:pos + 1 + n]).decode("utf-8", "replace")
    pos += 1 + n
    n = payload[pos]
    key = bytes(payload[pos + 1:pos + 1 + n])
    pos += 1 + n
    bits = payload[pos]
    return exchange, key, bool(bits & 1), bool(bits & 2)


def parse_ack(payload) -> tuple[int, bool]:
    (tag,) = _Q.unpack_from(payload, 4)
    return tag, bool(payload[12] & 1)


# --- routing -----------------------------------------------------------------------------------------

def topic_regex(pattern: str) -> re.Pattern:
    """A topic exchange's binding key (``*`` one word, ``#`` zero or more) as a regex."""
    words: list[str] = []
    for w in pattern.split("."):
        if w == "#" and words and words[-1] == "#":
            continue
        words.append(w)
    if words == ["#"]:
        return re.compile(r".*", re.S)
    out = ""
    for i, w in enumerate(words):
        if w == "#":
            out += r"(?:.*\.)?" if i == 0 else r"(?:\..*)?"
            continue
        piece = r"[^.]*" if w == "*" else re.escape(w)
        sep = "" if i == 0 or (i == 1 and words[0] == "#") else r"\."
        out += sep + piece
    return re.compile(out, re.S)


def record_table(headers) -> dict:
    """The AMQP headers table a record is delivered with, decoded (headers exchanges match on it)."""
    table = {}
    for k, v in headers:
        if k == "amqp-headers" and v:
            try:
                table.update(pdecode.field_table(_I.pack(len(v)) + bytes(v))[1])
            except Exception:
                pass
        elif k not in _PROP_INDEX and k not in HIDDEN:
            table[k] = b"" if v is None else bytes(v)
    return table


def _same(a, b) -> bool:
    if isinstance(a, bytes):
        a = a.decode("utf-8", "replace")
    if isinstance(b, bytes):
        b = b.decode("utf-8", "replace")
    return a == b


def headers_match(args: dict, table: dict) -> bool:
    """A headers exchange binding (``x-match`` all/any, also ``all-with-x``/``any-with-x``)."""
    mode = args.get("x-match", "all")
    if isinstance(mode, bytes):
        mode = mode.decode()
    with_x = mode.endswith("-with-x")
    wanted = [(k, v) for k, v in args.items() if k != "x-match" and (with_x or not k.startswith("x-"))]
    if not wanted:
        return mode.startswith("all")
    hits = 0
    for k, v in wanted:
        if k in table and (v is None or _same(v, table[k])):
            hits += 1
        elif mode.startswith("all"):
            return False
    return hits == len(wanted) if mode.startswith("all") else hits > 0


# --- dead letters ------------------------------------------------------------------------------------

_DEATH_KEYS = ("x-death", "x-first-death-reason", "x-first-death-queue", "x-first-death-exchange",
               "x-last-death-reason", "x-last-death-queue", "x-last-death-exchange")


def add_death(headers, queue: str, reason: str, exchange: str, routing_key: bytes, now_s: int) -> list:
    """The record headers of a dead letter: ``x-death`` (RabbitMQ's format: one
    entry per (queue, reason), newest first, with its count) and the
    ``x-first-death-*``/``x-last-death-*`` headers set in its table; the
    expiration is dropped (as RabbitMQ does, so that it does not expire again)
    and kept as the entry's ``original-expiration``. The table's other entries
    stay byte for byte, and ``count`` is a long-long as RabbitMQ sends it
    (clients such as Spring AMQP read it as a Long)."""
    out = [(k, v) for k, v in headers if k not in ("amqp-headers", "amqp-expiration", "umlog-ttl-ms")]
    raw, expiration = b"", None
    for k, v in headers:
        if k == "amqp-headers" and v:
            raw = bytes(v)
        elif k == "amqp-expiration" and v:
            expiration = bytes(v).decode("utf-8", "replace")
    kept, found = _split_table(raw)
    deaths = list(found.get("x-death") or [])
    rk = routing_key.decode("utf-8", "replace")
    when = datetime.datetime.fromtimestamp(now_s, datetime.UTC)
    entry = None
    for d in deaths:
        if _same(d.get("queue"), queue) and _same(d.get("reason"), reason):
            entry = d
            break
    if entry is not None:
        deaths.remove(entry)
        entry = dict(entry)
        entry["count"] = int(entry.get("count", 0)) + 1
        entry["time"] = when
    else:
        entry = {"count": 1, "reason": reason, "queue": queue, "time": when, "exchange": exchange,
                 "routing-keys": [rk]}
        if expiration is not None:
            entry["original-expiration"] = expiration
    deaths.insert(0, entry)
    first = {k: found.get(f"x-first-death-{k}", v) for k, v in (("reason", reason), ("queue", queue),
                                                                 ("exchange", exchange))}
    array = b"".join(b"F" + _death_table(d) for d in deaths)
    table = bytearray(kept)
    table += _shortstr(b"x-death") + b"A" + _I.pack(len(array)) + array
    for k, v in (*((f"x-first-death-{k}", v) for k, v in first.items()), ("x-last-death-reason", reason),
                 ("x-last-death-queue", queue), ("x-last-death-exchange", exchange)):
        table += _shortstr(k.encode()) + pencode.encode_table_value(v)
    out.append(("amqp-headers", bytes(table)))
    return out


def _split_table(raw: bytes) -> tuple[bytes, dict]:
    """A headers table (no length prefix): the bytes of its entries other than
    the dead-letter ones, and those decoded (a table that does not decode is
    dropped, as it could not be delivered anyway)."""
    kept, found, pos, end = bytearray(), {}, 0, len(raw)
    try:
        while pos < end:
            n = raw[pos]
            name = raw[pos + 1:pos + 1 + n].decode("utf-8", "replace")
            used, value = pdecode.embedded_value(raw[pos + 1 + n:])
            entry_end = pos + 1 + n + used
            if name in _DEATH_KEYS:
                found[name] = value
            else:
                kept += raw[pos:entry_end]
            pos = entry_end
    except Exception:
        return b"", {}
    return bytes(kept), found


def _death_table(d: dict) -> bytes:
    """One ``x-death`` entry as a field table (with its length), ``count`` a long-long."""
    body = bytearray()
    for k, v in d.items():
        body += _shortstr(k.encode())
        body += b"l" + _q.pack(int(v)) if k == "count" else pencode.encode_table_value(v)
    return _I.pack(len(body)) + body

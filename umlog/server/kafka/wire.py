"""Hand-written codecs for the hot paths of the Kafka door; everything else uses kio.

Three things live here, each checked against kio as the oracle in
``tests/server/kafka/test_wire.py``:

* the request header (v1, or v2 for flexible versions), read straight from the
  frame without building a dataclass;
* the Produce request decoder (v0-v11; v0-v2 carry old message sets, which
  ``legacy.py`` converts): record-batch bytes are handed on as
  ``memoryview`` slices of the received frame, never copied in Python. The
  frame is a private ``bytearray``, so the engine can assign offsets in place;
* the Fetch response encoder (v0-v12; v0-v3 carry old message sets that
  ``legacy.py`` converted): headers are packed into small
  ``bytearray`` pieces and the stored batch buffers are put between them as
  they are, so one ``transport.writelines`` sends them without re-encoding.
  And the Produce response encoder, which is small but runs once per request.

Why not kio for these: kio's reader copies the records field into ``bytes``
and its writer is pure Python over dataclasses (see bench/README.md for the
measured ratio).

Everything here is pure Python with ``struct`` and ``memoryview``; a native
version can replace it later behind the same functions.

Malformed input raises ``umlog.errors.RemoteProtocolError`` naming the field
("truncated produce request at topic_data"), never ``struct.error``/IndexError.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

from umlog.errors import RemoteProtocolError

__all__ = [
    "RequestHeader",
    "read_request_header",
    "ProducePartitionData",
    "ProduceRequestData",
    "decode_produce_request",
    "encode_produce_response",
    "FetchPartitionResult",
    "encode_fetch_response",
    "write_uvarint",
    "read_uvarint",
]

_i16 = struct.Struct(">h")
_i32 = struct.Struct(">i")
_i64 = struct.Struct(">q")
_hhi = struct.Struct(">hhi")  # api_key, api_version, correlation_id
_ih = struct.Struct(">ih")


# --- unsigned varints (flexible versions: compact lengths, tag counts) ---------


def write_uvarint(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def read_uvarint(buf: memoryview, pos: int) -> tuple[int, int]:
    """(value, next position); at most 5 bytes (u32) like Kafka's readUnsignedVarint."""
    value = 0
    shift = 0
    n = len(buf)
    while True:
        if pos >= n:
            raise RemoteProtocolError("truncated unsigned varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise RemoteProtocolError("unsigned varint longer than 5 bytes")


def _skip_tagged_fields(buf: memoryview, pos: int) -> int:
    count, pos = read_uvarint(buf, pos)
    for _ in range(count):
        _tag, pos = read_uvarint(buf, pos)
        size, pos = read_uvarint(buf, pos)
        pos += size
        if pos > len(buf):
            raise RemoteProtocolError("truncated tagged field")
    return pos


# --- request header ------------------------------------------------------------------


class RequestHeader:
    """Request header v1 (or v2 when ``flexible``): the fields every request starts with."""

    __slots__ = ("api_key", "api_version", "correlation_id", "client_id", "body_pos")

    def __init__(self, api_key: int, api_version: int, correlation_id: int,
                 client_id: str | None, body_pos: int) -> None:
        self.api_key = api_key
        self.api_version = api_version
        self.correlation_id = correlation_id
        self.client_id = client_id
        self.body_pos = body_pos

    def __repr__(self) -> str:
        return (f"RequestHeader(api_key={self.api_key}, api_version={self.api_version}, "
                f"correlation_id={self.correlation_id}, client_id={self.client_id!r})")


def read_request_prefix(buf: memoryview) -> tuple[int, int, int]:
    """(api_key, api_version, correlation_id): the first 8 bytes, same in every version."""
    if len(buf) < 8:
        raise RemoteProtocolError(f"request of {len(buf)} bytes is shorter than a header")
    return _hhi.unpack_from(buf, 0)


def read_request_header(buf: memoryview, flexible: bool) -> RequestHeader:
    """Parse the header; ``flexible`` selects v2 (adds tagged fields after client_id).

    client_id is a legacy nullable string even in v2 (Kafka special-cases it).
    """
    api_key, api_version, correlation_id = read_request_prefix(buf)
    if len(buf) < 10:
        raise RemoteProtocolError("truncated request header at client_id")
    (n,) = _i16.unpack_from(buf, 8)
    pos = 10
    client_id = None
    if n >= 0:
        if pos + n > len(buf):
            raise RemoteProtocolError("truncated request header at client_id")
        client_id = bytes(buf[pos:pos + n]).decode("utf-8", "replace")
        pos += n
    elif n != -1:
        raise RemoteProtocolError(f"bad client_id length {n}")
    if flexible:
        pos = _skip_tagged_fields(buf, pos)
    return RequestHeader(api_key, api_version, correlation_id, client_id, pos)


# --- Produce request (v0-v11) --------------------------------------------------------


class ProducePartitionData:
    __slots__ = ("index", "records")

    def __init__(self, index: int, records: memoryview | None) -> None:
        self.index = index
        self.records = records  # a view into the request frame, or None


class ProduceRequestData:
    """A decoded Produce request; ``topics`` is ``[(name, [ProducePartitionData])]``."""

    __slots__ = ("transactional_id", "acks", "timeout_ms", "topics")

    def __init__(self, transactional_id: str | None, acks: int, timeout_ms: int,
                 topics: list[tuple[str, list[ProducePartitionData]]]) -> None:
        self.transactional_id = transactional_id
        self.acks = acks
        self.timeout_ms = timeout_ms
        self.topics = topics


class _Cursor:
    """Bounds-checked reader over a memoryview, naming the field on truncation."""

    __slots__ = ("buf", "pos", "end", "what")

    def __init__(self, buf: memoryview, pos: int, what: str) -> None:
        self.buf = buf
        self.pos = pos
        self.end = len(buf)
        self.what = what

    def _need(self, n: int, field: str) -> None:
        if n < 0 or self.pos + n > self.end:
            raise RemoteProtocolError(f"truncated {self.what} at {field}")

    def i16(self, field: str) -> int:
        self._need(2, field)
        (v,) = _i16.unpack_from(self.buf, self.pos)
        self.pos += 2
        return v

    def i32(self, field: str) -> int:
        self._need(4, field)
        (v,) = _i32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def uvarint(self, field: str) -> int:
        try:
            v, self.pos = read_uvarint(self.buf, self.pos)
        except RemoteProtocolError:
            raise RemoteProtocolError(f"truncated {self.what} at {field}") from None
        return v

    def string(self, field: str, flexible: bool, nullable: bool = False) -> str | None:
        if flexible:
            n = self.uvarint(field) - 1
        else:
            n = self.i16(field)
        if n < 0:
            if n == -1 and nullable:
                return None
            raise RemoteProtocolError(f"bad length {n} in {self.what} at {field}")
        self._need(n, field)
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", "replace")
        self.pos += n
        return s

    def nullable_bytes(self, field: str, flexible: bool) -> memoryview | None:
        if flexible:
            n = self.uvarint(field) - 1
        else:
            n = self.i32(field)
        if n < 0:
            if n == -1:
                return None
            raise RemoteProtocolError(f"bad length {n} in {self.what} at {field}")
        self._need(n, field)
        v = self.buf[self.pos:self.pos + n]
        self.pos += n
        return v

    def array_len(self, field: str, flexible: bool) -> int:
        n = self.uvarint(field) - 1 if flexible else self.i32(field)
        if n < 0:
            return 0  # a null array holds nothing
        # Each element takes at least one byte: refuse absurd counts early.
        if n > self.end - self.pos:
            raise RemoteProtocolError(f"array length {n} exceeds {self.what} at {field}")
        return n

    def tags(self) -> None:
        try:
            self.pos = _skip_tagged_fields(self.buf, self.pos)
        except RemoteProtocolError:
            raise RemoteProtocolError(f"truncated {self.what} at tagged fields") from None


def decode_produce_request(buf: memoryview, pos: int, version: int) -> ProduceRequestData:
    """Decode a Produce request body starting at ``pos`` of the frame (v0-v2
    have no transactional_id).

    Record sets are returned as views of ``buf``; keep the frame alive while they are used.
    """
    flexible = version >= 9
    c = _Cursor(buf, pos, "produce request")
    transactional_id = c.string("transactional_id", flexible, nullable=True) if version >= 3 else None
    acks = c.i16("acks")
    timeout_ms = c.i32("timeout_ms")
    topics: list[tuple[str, list[ProducePartitionData]]] = []
    for _ in range(c.array_len("topic_data", flexible)):
        name = c.string("topic_data.name", flexible)
        parts: list[ProducePartitionData] = []
        for _ in range(c.array_len("partition_data", flexible)):
            index = c.i32("partition_data.index")
            records = c.nullable_bytes("partition_data.records", flexible)
            if flexible:
                c.tags()
            parts.append(ProducePartitionData(index, records))
        if flexible:
            c.tags()
        topics.append((name, parts))  # type: ignore[arg-type]
    if flexible:
        c.tags()
    # Trailing bytes are ignored, as Kafka does (see dispatch.py).
    return ProduceRequestData(transactional_id, acks, timeout_ms, topics)


# --- Produce response (v0-v11) -----------------------------------------------------


def _put_string(out: bytearray, s: str, flexible: bool) -> None:
    b = s.encode()
    if flexible:
        write_uvarint(out, len(b) + 1)
    else:
        out += _i16.pack(len(b))
    out += b


def _put_array_len(out: bytearray, n: int, flexible: bool) -> None:
    if flexible:
        write_uvarint(out, n + 1)
    else:
        out += _i32.pack(n)


_partition_resp = struct.Struct(">ihqq")  # index, error_code, base_offset, log_append_time_ms
_partition_resp_v0 = struct.Struct(">ihq")  # v0-v1: index, error_code, base_offset


def encode_produce_response(
    version: int,
    topics: Sequence[tuple[str, Sequence[tuple[int, int, int, int, int]]]],
    throttle_ms: int = 0,
) -> bytearray:
    """Produce response body. ``topics`` is ``[(name, [(partition, error_code,
    base_offset, log_append_time_ms, log_start_offset)])]``. record_errors and
    error_message (v8+) are always empty/null; v0 has no throttle time, v0-v1
    no log append time.
    """
    flexible = version >= 9
    out = bytearray()
    _put_array_len(out, len(topics), flexible)
    for name, parts in topics:
        _put_string(out, name, flexible)
        _put_array_len(out, len(parts), flexible)
        for index, error_code, base_offset, append_time, log_start in parts:
            if version >= 2:
                out += _partition_resp.pack(index, error_code, base_offset, append_time)
            else:
                out += _partition_resp_v0.pack(index, error_code, base_offset)
            if version >= 5:
                out += _i64.pack(log_start)
            if version >= 8:
                _put_array_len(out, 0, flexible)  # record_errors
                if flexible:
                    out.append(0)  # null compact string
                else:
                    out += b"\xff\xff"  # null string
            if flexible:
                out.append(0)  # partition tagged fields
        if flexible:
            out.append(0)  # topic tagged fields
    if version >= 1:
        out += _i32.pack(throttle_ms)
    if flexible:
        out.append(0)
    return out


# --- Fetch response (v0-v12) ----------------------------------------------------------


class FetchPartitionResult:
    """One partition of a Fetch response; ``records`` is a list of stored batch buffers."""

    __slots__ = ("index", "error_code", "high_watermark", "log_start_offset", "records")

    def __init__(self, index: int, error_code: int, high_watermark: int,
                 log_start_offset: int, records: list | None) -> None:
        self.index = index
        self.error_code = error_code
        self.high_watermark = high_watermark
        self.log_start_offset = log_start_offset
        self.records = records

    @property
    def size(self) -> int:
        return sum(len(r) for r in self.records) if self.records else 0


_fetch_part_head = struct.Struct(">ihqq")  # index, error, high_watermark, last_stable_offset
_fetch_part_head_v0 = struct.Struct(">ihq")  # v0-v3: index, error, high_watermark


def encode_fetch_response(
    version: int,
    topics: Iterable[tuple[str, Sequence[FetchPartitionResult]]],
    throttle_ms: int = 0,
    error_code: int = 0,
    session_id: int = 0,
) -> list:
    """Fetch response body as a list of buffers: packed headers between the stored
    batch buffers, which are passed through untouched (no copy, no re-encoding).

    last_stable_offset is the high watermark (no transactions); aborted_transactions
    is null; preferred_read_replica (v11+) is -1. v0 has no throttle time, v0-v3
    neither last_stable_offset nor aborted_transactions (their records are old
    message sets, converted by the caller). ``records`` of None is written
    as a null field and is only for tests of how clients take it: the handler
    answers an error row with empty records, as Kafka does.
    """
    flexible = version >= 12
    pieces: list = []
    out = bytearray(_i32.pack(throttle_ms) if version >= 1 else b"")
    if version >= 7:
        out += _ih.pack(error_code, session_id)
    topics = list(topics)
    _put_array_len(out, len(topics), flexible)
    for name, parts in topics:
        _put_string(out, name, flexible)
        _put_array_len(out, len(parts), flexible)
        for p in parts:
            if version < 4:
                out += _fetch_part_head_v0.pack(p.index, p.error_code, p.high_watermark)
            else:
                out += _fetch_part_head.pack(p.index, p.error_code, p.high_watermark, p.high_watermark)
                if version >= 5:
                    out += _i64.pack(p.log_start_offset)
                # aborted_transactions: null
                if flexible:
                    out.append(0)
                else:
                    out += b"\xff\xff\xff\xff"
            if version >= 11:
                out += b"\xff\xff\xff\xff"  # preferred_read_replica -1
            records = p.records
            if records is None:
                if flexible:
                    out.append(0)
                else:
                    out += b"\xff\xff\xff\xff"
            else:
                size = 0
                for r in records:
                    size += len(r)
                if flexible:
                    write_uvarint(out, size + 1)
                else:
                    out += _i32.pack(size)
                if size:
                    pieces.append(out)
                    pieces.extend(records)
                    out = bytearray()
            if flexible:
                out.append(0)  # partition tagged fields
        if flexible:
            out.append(0)  # topic tagged fields
    if flexible:
        out.append(0)
    pieces.append(out)
    return pieces


"""An independent pure-Python model of Kafka's RecordBatch v2, for differential
tests of the native core. Written from the format description (core.pyi and
Kafka's DefaultRecordBatch docs) with ``struct``; slow and simple on purpose.

    batch   = baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 |
              magic i8 | crc u32 | attributes i16 | lastOffsetDelta i32 |
              baseTimestamp i64 | maxTimestamp i64 | producerId i64 |
              producerEpoch i16 | baseSequence i32 | recordsCount i32 | records
    record  = length varint | attributes i8 | timestampDelta varlong |
              offsetDelta varint | keyLength varint | key | valueLength varint |
              value | headersCount varint | (keyLen varint | key | valLen varint | val)*

The CRC32C covers attributes .. end. Compression is not modelled here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

HEADER = struct.Struct(">qiibIhiqqqhii")
assert HEADER.size == 61

_POLY = 0x82F63B78


def _make_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table.append(c)
    return table


CRC_TABLE = _make_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """Bytewise table CRC32C; crc continues from a previous result."""
    c = crc ^ 0xFFFFFFFF
    for b in bytes(data):
        c = CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


# --- varints -----------------------------------------------------------------------

def unzigzag(u: int) -> int:
    return (u >> 1) ^ -(u & 1)


def write_uvarint(u: int) -> bytes:
    out = bytearray()
    while True:
        if u < 0x80:
            out.append(u)
            return bytes(out)
        out.append((u & 0x7F) | 0x80)
        u >>= 7


def write_varint(v: int) -> bytes:
    assert -(1 << 31) <= v < (1 << 31)
    return write_uvarint(((v << 1) ^ (v >> 31)) & 0xFFFFFFFF)


def write_varlong(v: int) -> bytes:
    assert -(1 << 63) <= v < (1 << 63)
    return write_uvarint(((v << 1) ^ (v >> 63)) & 0xFFFFFFFFFFFFFFFF)


class OracleDecodeError(ValueError):
    pass


def read_uvarint(buf: bytes, pos: int, max_bytes: int) -> tuple[int, int]:
    u = 0
    for i in range(max_bytes):
        if pos >= len(buf):
            raise OracleDecodeError("truncated")
        b = buf[pos]
        pos += 1
        u |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            return u, pos
    raise OracleDecodeError("too long")


def read_varint(buf: bytes, pos: int = 0) -> tuple[int, int]:
    u, pos = read_uvarint(buf, pos, 5)
    u &= 0xFFFFFFFF
    v = unzigzag(u)
    return v, pos


def read_varlong(buf: bytes, pos: int = 0) -> tuple[int, int]:
    u, pos = read_uvarint(buf, pos, 10)
    u &= 0xFFFFFFFFFFFFFFFF
    return unzigzag(u), pos


# --- batches -------------------------------------------------------------------------

@dataclass
class ORecord:
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple = ()


@dataclass
class OBatch:
    base_offset: int = 0
    partition_leader_epoch: int = 0
    attributes: int = 0
    last_offset_delta: int = 0
    base_timestamp: int = 0
    max_timestamp: int = 0
    producer_id: int = -1
    producer_epoch: int = -1
    base_sequence: int = -1
    crc: int = 0
    records: list = field(default_factory=list)


def _bytes_field(b: bytes | None) -> bytes:
    if b is None:
        return write_varint(-1)
    return write_varint(len(b)) + bytes(b)


def encode_record(offset_delta: int, ts_delta: int, key, value, headers) -> bytes:
    body = bytearray(b"\x00")
    body += write_varlong(ts_delta)
    body += write_varint(offset_delta)
    body += _bytes_field(key)
    body += _bytes_field(value)
    body += write_varint(len(headers))
    for hk, hv in headers:
        hk = hk.encode() if isinstance(hk, str) else bytes(hk)
        body += write_varint(len(hk)) + hk
        body += _bytes_field(hv)
    return write_varint(len(body)) + bytes(body)


def encode_batch(values, keys=None, headers=None, timestamps=None, *, base_offset=0,
                 now_ms=0, attributes=0, producer_id=-1, producer_epoch=-1,
                 base_sequence=-1, partition_leader_epoch=0, max_timestamp=None) -> bytes:
    n = len(values)
    keys = keys if keys is not None else [None] * n
    headers = headers if headers is not None else [None] * n
    ts = [now_ms if t is None else t for t in (timestamps or [None] * n)]
    base_ts = ts[0]
    recs = b"".join(
        encode_record(i, ts[i] - base_ts, keys[i], values[i], headers[i] or ())
        for i in range(n))
    max_ts = max(ts) if max_timestamp is None else max_timestamp
    tail = struct.pack(">hiqqqhii", attributes, n - 1, base_ts, max_ts, producer_id,
                       producer_epoch, base_sequence, n) + recs
    crc = crc32c(tail)
    return struct.pack(">qiibI", base_offset, len(tail) + 9, partition_leader_epoch, 2,
                       crc) + tail


def decode_batch(buf: bytes, pos: int = 0) -> tuple[OBatch, int]:
    """One uncompressed batch at pos -> (OBatch, next position)."""
    buf = bytes(buf)
    if len(buf) - pos < 61:
        raise OracleDecodeError("truncated header")
    (base_offset, length, ple, magic, crc, attrs, lod, base_ts, max_ts, pid, pepoch,
     bseq, count) = HEADER.unpack_from(buf, pos)
    end = pos + 12 + length
    if length < 49 or end > len(buf):
        raise OracleDecodeError("bad length")
    if magic != 2:
        raise OracleDecodeError("bad magic")
    if crc32c(buf[pos + 21:end]) != crc:
        raise OracleDecodeError("bad crc")
    if attrs & 7:
        raise OracleDecodeError("compressed batches are not modelled")
    b = OBatch(base_offset, ple, attrs, lod, base_ts, max_ts, pid, pepoch, bseq, crc)
    p = pos + 61
    for _ in range(count):
        rlen, p = read_varint(buf, p)
        rend = p + rlen
        if rlen < 0 or rend > end:
            raise OracleDecodeError("bad record length")
        p += 1
        tsd, p = read_varlong(buf, p)
        od, p = read_varint(buf, p)
        key, p = _read_bytes(buf, p)
        value, p = _read_bytes(buf, p)
        hc, p = read_varint(buf, p)
        hs = []
        for _ in range(hc):
            kl, p = read_varint(buf, p)
            hk = buf[p:p + kl].decode("utf-8", "replace")
            p += kl
            hv, p = _read_bytes(buf, p)
            hs.append((hk, hv))
        if p != rend:
            raise OracleDecodeError("record length mismatch")
        t = max_ts if attrs & 0x08 else base_ts + tsd
        b.records.append(ORecord(base_offset + od, t, key, value, tuple(hs)))
    if p != end:
        raise OracleDecodeError("bytes left over")
    return b, end


def _read_bytes(buf: bytes, p: int):
    n, p = read_varint(buf, p)
    if n < 0:
        return None, p
    if p + n > len(buf):
        raise OracleDecodeError("truncated")
    return buf[p:p + n], p + n

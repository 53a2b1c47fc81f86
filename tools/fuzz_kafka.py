"""Fuzz a running ``umlog serve`` with bad Kafka frames (hypothesis-driven).

Each hypothesis example is one client connection that sends one "case":

* ``raw``: random bytes, length prefix included or not;
* ``header``: a plausible header (any API key, any version) and a random body;
* ``request``: a request of a known API and version generated from kio's
  schemas (every API key kio knows, versions in and out of our ranges), then
  maybe mutated: bytes flipped, cut, inserted or deleted; the length prefix
  fixed up or left lying;
* ``produce``: a Produce request (v3-v11) whose record batches are valid or
  broken: a flipped bit (bad CRC), a lying recordsCount / lastOffsetDelta /
  batchLength / attributes with the CRC recomputed, garbage records or garbage
  "compressed" bytes with a valid CRC, a batch cut short, magic 0/1/3;
* ``length``: absurd length prefixes (negative, 0-7, over the limit, 2**31-1,
  or a length promising more than ever comes);

several frames per connection (pipelined), sent whole or in random chunks.
The client reads the answers for a moment (or until the server closes).

Invariants, checked after every case and at the end:

* the server process is alive and its log has no ERROR line, traceback or
  asyncio exception (every bad input is an error code or a closed
  connection plus a WARNING line);
* every answer is a well-formed response frame of the request's API and
  version (decoded with kio), in request order;
* a "good client" thread keeps producing and fetching on its own connection
  the whole time, and never sees an error (the server keeps serving others);
* every ``--check-every`` cases and at the end, a fresh connection can still
  produce and fetch (canary);
* at the end (server stopped with SIGTERM, exit code 0): every stored batch is
  CRC-valid with dense offsets (``harness.check_data_dir``), and every stored
  batch of a client topic is byte for byte one the fuzzer generated as valid (baseOffset and
  partitionLeaderEpoch aside, which the CRC does not cover): nothing from a
  refused or mutated batch is ever stored.

Usage::

    python tools/fuzz_kafka.py --seconds 600
    python tools/fuzz_kafka.py --examples 20000 --seed 1
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import io
import os
import random
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
import typing
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Server, check_data_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kio.index import load_request_schema, load_response_schema
from kio.schema.request_header.v1.header import RequestHeader as RequestHeaderV1
from kio.schema.request_header.v2.header import RequestHeader as RequestHeaderV2
from kio.serial import entity_reader, entity_writer

from umlog._native.core import crc32c, encode_batch

TOPICS = ("fz0", "fz1", "fz2")  # auto-created, 2 partitions each
CANARY = "canary"
GOOD = "good-client"
MAX_REQUEST = 1 << 20  # the fuzzed server's --max-request-size


def _i32(n: int) -> bytes:
    return struct.pack(">i", n)


# --- which (api key, version) kio can encode ------------------------------------------


def _kio_requests() -> list[tuple[int, int, typing.Any]]:
    out = []
    for key in range(0, 100):
        for version in range(0, 20):
            try:
                cls = load_request_schema(key, version)
            except Exception:
                continue
            out.append((key, version, cls))
    return out


KIO_REQUESTS = _kio_requests()


def _response_class(key: int, version: int):
    try:
        return load_response_schema(key, version)
    except Exception:
        return None


# --- record batches ----------------------------------------------------------------------


class Batches:
    """Every batch generated as valid, keyed by its bytes minus baseOffset and
    partitionLeaderEpoch (not covered by the CRC; the broker sets baseOffset)."""

    def __init__(self) -> None:
        self.valid: set[bytes] = set()
        self.lock = threading.Lock()

    @staticmethod
    def key(batch: bytes) -> bytes:
        return bytes(batch[8:12]) + bytes(batch[16:])

    def add(self, batch: bytes) -> bytes:
        with self.lock:
            self.valid.add(self.key(batch))
        return batch


BATCHES = Batches()


def _fix_crc(b: bytearray) -> None:
    b[17:21] = struct.pack(">I", crc32c(bytes(b[21:])))


@st.composite
def valid_batch(draw) -> bytes:
    n = draw(st.integers(1, 5))
    values = draw(st.lists(st.one_of(st.none(), st.binary(max_size=40)), min_size=n, max_size=n))
    keys = draw(st.one_of(st.none(), st.lists(st.one_of(st.none(), st.binary(max_size=8)), min_size=n, max_size=n)))
    codec = draw(st.sampled_from([0, 0, 0, 1, 2, 3, 4]))
    kw = {}
    if draw(st.booleans()):
        kw = dict(producer_id=draw(st.integers(0, 1 << 40)), producer_epoch=draw(st.integers(0, 3)),
                  base_sequence=draw(st.integers(0, 100)))
    batch = encode_batch(values, keys, timestamps=[1_700_000_000_000 + i for i in range(n)], codec=codec, **kw)
    return BATCHES.add(batch)


MUTATIONS = ("flip", "count", "last_delta", "length", "attributes", "records_garbage", "cut", "magic",
             "compressed_garbage", "offset_delta", "records_count_neg")


@st.composite
def broken_batch(draw) -> bytes:
    """A batch that must be refused (CORRUPT_MESSAGE and friends), never stored."""
    b = bytearray(draw(valid_batch()))
    m = draw(st.sampled_from(MUTATIONS))
    if m == "flip":  # any CRC-covered bit, or the CRC itself
        i = draw(st.integers(17, len(b) - 1))
        b[i] ^= 1 << draw(st.integers(0, 7))
    elif m == "count":  # recordsCount lies, CRC recomputed
        (count,) = struct.unpack_from(">i", b, 57)
        b[57:61] = _i32(count + draw(st.sampled_from([-1, 1, 2, 1000, -count - 5])))
        _fix_crc(b)
    elif m == "records_count_neg":
        b[57:61] = _i32(draw(st.sampled_from([-1, -(2**31), 2**31 - 1])))
        _fix_crc(b)
    elif m == "last_delta":  # lastOffsetDelta lies, CRC recomputed
        (lod,) = struct.unpack_from(">i", b, 23)
        b[23:27] = _i32(lod + draw(st.sampled_from([-1, 1, 7, -(2**31) - lod, 2**31 - 1 - lod])))
        _fix_crc(b)
    elif m == "length":  # batchLength lies
        (length,) = struct.unpack_from(">i", b, 8)
        b[8:12] = _i32(draw(st.sampled_from([length - 1, length + 1, 0, 48, -1, 2**31 - 1])))
    elif m == "attributes":  # unknown codec 5-7, CRC recomputed
        (attrs,) = struct.unpack_from(">h", b, 21)
        b[21:23] = struct.pack(">h", (attrs & ~7) | draw(st.sampled_from([5, 6, 7])))
        _fix_crc(b)
    elif m == "records_garbage":  # the records region replaced, CRC recomputed
        garbage = draw(st.binary(min_size=1, max_size=60))
        b = b[:61] + bytearray(garbage)
        b[8:12] = _i32(len(b) - 12)
        _fix_crc(b)
    elif m == "compressed_garbage":  # a codec bit set over bytes that are not that codec
        (attrs,) = struct.unpack_from(">h", b, 21)
        b[21:23] = struct.pack(">h", (attrs & ~7) | draw(st.sampled_from([1, 2, 3, 4])))
        b = b[:61] + bytearray(draw(st.binary(min_size=1, max_size=60)))
        b[8:12] = _i32(len(b) - 12)
        _fix_crc(b)
    elif m == "cut":
        b = b[: draw(st.integers(0, len(b) - 1))]
    elif m == "magic":
        b[16] = draw(st.sampled_from([0, 1, 3, 255]))
        _fix_crc(b)
    elif m == "offset_delta":  # record 0 says offsetDelta 1 (uncompressed batches), CRC recomputed
        at = _record0_offset_delta(b)
        if at is None:
            b[20] ^= 1  # compressed: a CRC byte instead
        else:
            b[at] = 0x02  # zig-zag 1 (was 0x00: offsetDelta 0)
            _fix_crc(b)
    return bytes(b)


def _skip_varint(b: bytearray, pos: int) -> int:
    while b[pos] & 0x80:
        pos += 1
    return pos + 1


def _record0_offset_delta(b: bytearray) -> int | None:
    """Position of record 0's offsetDelta (one byte, 0x00) in an uncompressed batch."""
    if struct.unpack_from(">h", b, 21)[0] & 7 or len(b) < 66:
        return None
    pos = _skip_varint(b, 61)  # record length
    pos = _skip_varint(b, pos + 1)  # attributes, then timestampDelta
    return pos if b[pos] == 0 else None


def records_field():
    """What goes in a Produce partition's records: valid, broken, or a mix."""
    one = st.one_of(valid_batch(), broken_batch())
    return st.one_of(
        st.none(),
        st.just(b""),
        valid_batch(),
        broken_batch(),
        st.lists(one, min_size=2, max_size=3).map(b"".join),
        st.binary(max_size=100),
    )


# --- kio entities with biased values -------------------------------------------------------

_INT = {"int8": (-(2**7), 2**7 - 1), "int16": (-(2**15), 2**15 - 1), "int32": (-(2**31), 2**31 - 1),
        "int64": (-(2**63), 2**63 - 1), "uint16": (0, 2**16 - 1)}
_TOPICISH = ("name", "topic", "topic_name", "group_id", "resource_name", "transactional_id", "key")
_SMALLISH = ("index", "partition", "partition_index", "num_partitions", "count", "replication_factor",
             "partitions", "replica_id", "broker_id", "leader_epoch", "current_leader_epoch")


def _int_strategy(kt: str, name: str):
    lo, hi = _INT[kt]
    edges = [v for v in (0, 1, -1, 2, lo, hi, lo + 1, hi - 1) if lo <= v <= hi]
    if name in _SMALLISH:
        return st.one_of(st.integers(max(lo, -1), min(hi, 3)), st.sampled_from(edges))
    return st.one_of(st.sampled_from(edges), st.integers(max(lo, -2), min(hi, 1000)), st.integers(lo, hi))


def _string_strategy(name: str):
    weird = st.text(max_size=12) | st.sampled_from(["", ".", "..", "a" * 300, "x/y", "__consumer_offsets",
                                                    "fz0\x00", "fz.0", "fz_0"])
    if name in _TOPICISH:
        return st.one_of(st.sampled_from(TOPICS), st.sampled_from(TOPICS), weird)
    return st.one_of(st.text(max_size=16), weird)


def _ms_strategy():
    return st.one_of(st.integers(0, 50), st.sampled_from([-1, 2**31 - 1]), st.integers(0, 2**31 - 1))


def _scalar(kt: str, name: str, tp):
    if kt in _INT:
        return _int_strategy(kt, name)
    if kt == "bool":
        return st.booleans()
    if kt == "string":
        return _string_strategy(name)
    if kt == "bytes":
        return st.binary(max_size=48)
    if kt == "records":
        return records_field()
    if kt == "uuid":
        return st.one_of(st.none(), st.uuids(), st.just(uuid.UUID(int=0)))
    if kt == "timedelta_i32":
        return _ms_strategy().map(lambda n: datetime.timedelta(milliseconds=n))
    if kt == "timedelta_i64":
        return st.one_of(st.integers(-1, 10**6), st.sampled_from([-(10**15), 10**15])).map(
            lambda n: datetime.timedelta(milliseconds=n))
    if kt == "float64":
        return st.floats(allow_nan=True)
    raise ValueError(f"no strategy for kafka_type {kt!r} ({tp})")


_entity_cache: dict[type, typing.Any] = {}


def entity(cls, depth: int = 0):
    """A strategy for a kio entity class, fields biased towards edge values."""
    if cls in _entity_cache:
        return _entity_cache[cls]
    hints = typing.get_type_hints(cls)
    fields = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        kt = f.metadata.get("kafka_type")
        args = typing.get_args(tp)
        nullable = type(None) in args
        inner = [a for a in args if a is not type(None)] if nullable else [tp]
        base = inner[0]
        is_array = typing.get_origin(base) is tuple
        elem = typing.get_args(base)[0] if is_array else base
        if kt is None:
            sub = entity(elem, depth + 1) if depth < 4 else st.nothing()
        else:
            sub = _scalar(kt, f.name, elem)
        if kt == "records":
            s = sub  # records_field includes None
        elif is_array:
            s = st.lists(sub, max_size=3 if depth < 2 else 1).map(tuple)
        else:
            s = sub
        if nullable and kt != "records":
            s = st.one_of(st.none(), s)
        fields[f.name] = s
    strat = st.builds(cls, **fields)
    _entity_cache[cls] = strat
    return strat


def request_bytes(cls, body, correlation_id: int, client_id: str | None = "fuzz") -> bytes:
    hcls = RequestHeaderV2 if cls.__flexible__ else RequestHeaderV1
    out = io.BytesIO()
    entity_writer(hcls)(out, hcls(request_api_key=cls.__api_key__, request_api_version=cls.__version__,
                                  correlation_id=correlation_id, client_id=client_id))
    entity_writer(cls)(out, body)
    return out.getvalue()


# --- cases --------------------------------------------------------------------------------


@dataclasses.dataclass
class Frame:
    data: bytes  # what is sent, length prefix included
    key: int = -1  # api key and version of a well-formed request (-1: unknown)
    version: int = -1
    correlation_id: int = -1
    body_ok: bool = False  # an untouched kio-encoded request
    no_answer: bool = False  # Produce with acks=0

    @property
    def whole(self) -> bool:
        """Exactly one frame with a length the server accepts."""
        return len(self.data) >= 4 and 8 <= struct.unpack_from(">i", self.data)[0] == len(self.data) - 4 \
            <= MAX_REQUEST


@dataclasses.dataclass
class Case:
    kind: str
    frames: list[Frame]
    chunks: list[int]  # split points (sent with a short pause between)

    @property
    def data(self) -> bytes:
        return b"".join(f.data for f in self.frames)

    def __repr__(self) -> str:
        return f"Case({self.kind}, {[f.data[:200].hex() for f in self.frames]}, chunks={self.chunks})"


_corr = st.integers(0, 2**31 - 1)


@st.composite
def mutate(draw, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete", "set"]))
        if not b:
            break
        i = draw(st.integers(0, len(b) - 1))
        if op == "flip":
            b[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del b[i:]
        elif op == "insert":
            b[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del b[i:i + draw(st.integers(1, 8))]
        else:
            b[i] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF]))
    return bytes(b)


@st.composite
def request_frame(draw) -> Frame:
    key, version, cls = draw(st.sampled_from(KIO_REQUESTS))
    corr = draw(_corr)
    body = draw(entity(cls))
    try:
        raw = request_bytes(cls, body, corr, draw(st.one_of(st.none(), st.sampled_from(["fuzz", "", "é" * 3]))))
    except Exception:  # kio refuses a value we drew (out of its range): send junk instead
        raw = struct.pack(">hhi", key, version, corr) + draw(st.binary(max_size=40))
        return Frame(_i32(len(raw)) + raw, key, version, corr)
    if draw(st.integers(0, 2)) == 0:
        mutated = draw(mutate(raw))
        lying = draw(st.integers(0, 4)) == 0
        n = len(raw) if lying else len(mutated)
        return Frame(_i32(n) + mutated)  # its header may be mutated too: nothing to compare the answer with
    return Frame(_i32(len(raw)) + raw, key, version, corr, body_ok=True,
                 no_answer=key == 0 and getattr(body, "acks", None) == 0)


@st.composite
def produce_frame(draw) -> Frame:
    version = draw(st.integers(3, 11))
    cls = load_request_schema(0, version)
    m = sys.modules[cls.__module__]
    parts = draw(st.lists(st.tuples(st.integers(-1, 2), records_field()), min_size=1, max_size=3))
    topic = draw(st.one_of(st.sampled_from(TOPICS), _string_strategy("name")))
    kw = {"transactional_id": None} if "transactional_id" in cls.__dataclass_fields__ else {}
    acks = draw(st.sampled_from([1, -1, 1, 0, 2, -2]))
    body = cls(acks=acks, timeout=datetime.timedelta(milliseconds=1000),
               topic_data=(m.TopicProduceData(name=topic, partition_data=tuple(
                   m.PartitionProduceData(index=i, records=r) for i, r in parts)),), **kw)
    corr = draw(_corr)
    raw = request_bytes(cls, body, corr)
    return Frame(_i32(len(raw)) + raw, 0, version, corr, body_ok=True, no_answer=acks == 0)


@st.composite
def header_frame(draw) -> Frame:
    key = draw(st.one_of(st.integers(0, 80), st.sampled_from([-1, 32767, -32768, 1000])))
    version = draw(st.one_of(st.integers(-1, 20), st.sampled_from([-32768, 32767])))
    corr = draw(_corr)
    client = draw(st.one_of(st.just(b"\xff\xff"), st.binary(max_size=6).map(lambda c: struct.pack(">h", len(c)) + c),
                            st.sampled_from([struct.pack(">h", 30000), struct.pack(">h", -2)])))
    tags = draw(st.sampled_from([b"", b"\x00", b"\x01\x00\x00", b"\xff\xff\xff\xff\xff\x0f"]))
    body = draw(st.binary(max_size=80))
    raw = struct.pack(">hhi", key, version, corr) + client + tags + body
    return Frame(_i32(len(raw)) + raw, key, version, corr)


@st.composite
def raw_frame(draw) -> Frame:
    data = draw(st.binary(min_size=1, max_size=120))
    if draw(st.booleans()):
        data = _i32(len(data)) + data
    return Frame(data)


@st.composite
def length_frame(draw) -> Frame:
    n = draw(st.sampled_from([-(2**31), -1, 0, 1, 4, 7, MAX_REQUEST + 1, 2**31 - 1, 64, 4096]))
    tail = draw(st.binary(max_size=70))
    return Frame(_i32(n) + tail)


KINDS = {
    "raw": raw_frame(),
    "header": header_frame(),
    "request": request_frame(),
    "produce": produce_frame(),
    "length": length_frame(),
}


@st.composite
def cases(draw) -> Case:
    kind = draw(st.sampled_from(["raw", "header", "request", "request", "request", "produce", "produce", "length"]))
    frames = draw(st.lists(KINDS[kind], min_size=1, max_size=3))
    if draw(st.integers(0, 3)) == 0:  # a valid request after the bad ones, on the same connection
        frames.append(draw(request_frame().filter(lambda f: f.body_ok)))
    total = sum(len(f.data) for f in frames)
    chunks = sorted(set(draw(st.lists(st.integers(1, max(1, total - 1)), max_size=3)))) if total > 1 else []
    return Case(kind, frames, chunks)


# --- the target -----------------------------------------------------------------------------


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def recv_frame(sock: socket.socket) -> bytes | None:
    head = _recv_exact(sock, 4)
    if head is None:
        return None
    (n,) = struct.unpack(">i", head)
    return _recv_exact(sock, n)


def check_response(frame: bytes, sent: dict[int, Frame]) -> str | None:
    """None if ``frame`` is a well-formed response to one of the frames sent; else why not."""
    if len(frame) < 4:
        return f"response of {len(frame)} bytes"
    (corr,) = struct.unpack_from(">i", frame, 0)
    f = sent.get(corr)
    if f is None:
        return None  # answered a frame whose header we did not build (raw/mutated): nothing to compare
    cls = _response_class(f.key, f.version)
    if cls is None:
        return None
    pos = 4
    if f.key == 18:  # ApiVersions: header v0; an unsupported version gets a v0 body
        try:
            entity_reader(cls)(frame, pos)
        except Exception:
            entity_reader(load_response_schema(18, 0))(frame, pos)
        return None
    if cls.__flexible__:
        if frame[pos] != 0:
            return f"response header tagged fields {frame[pos]}"
        pos += 1
    try:
        _, used = entity_reader(cls)(frame, pos)
    except Exception as e:
        return f"{cls.__name__} v{f.version} does not decode: {e!r}"
    if pos + used != len(frame):
        return f"{cls.__name__} v{f.version}: {len(frame) - pos - used} trailing bytes"
    return None


class Target:
    """The server under fuzz and its invariant checks."""

    def __init__(self, server: Server, wait: float = 0.1) -> None:
        self.server = server
        self.wait = wait
        self.log_pos = 0
        self.cases = 0
        self.frames = 0
        self.responses = 0
        self.closed_by_server = 0
        self.warnings = 0
        self.kinds: dict[str, int] = {}
        self.last_case_path = server.data_dir.rstrip("/") + ".last-case"

    def new_log(self) -> str:
        with open(self.server.log_path) as f:
            f.seek(self.log_pos)
            text = f.read()
            self.log_pos = f.tell()
        return text

    def check_server(self, alive: bool = True) -> None:
        if alive:
            assert self.server.alive(), f"the server died:\n{self.server.log_text()[-4000:]}"
        text = self.new_log()
        self.warnings += text.count(" WARNING ")
        bad = [ln for ln in text.splitlines()
               if " ERROR " in ln or "CRITICAL" in ln or "Traceback" in ln or "Exception in" in ln
               or "exception was never retrieved" in ln]
        assert not bad, "server logged an error:\n" + "\n".join(bad[:10])

    def run_case(self, case: Case) -> None:
        with open(self.last_case_path, "w") as f:
            f.write(repr(case))
        self.cases += 1
        self.kinds[case.kind] = self.kinds.get(case.kind, 0) + 1
        data = case.data
        # The correlation ids as sent (a mutated frame keeps its header, or not).
        ids = [struct.unpack_from(">i", f.data, 8)[0] if len(f.data) >= 12 else None for f in case.frames]
        sent = {f.correlation_id: f for f in case.frames if f.key >= 0 and ids.count(f.correlation_id) == 1}
        self.frames += len(case.frames)
        # Answers to wait for: the whole frames up to the first one the server
        # will close on or wait behind (then EOF or the timeout ends the wait).
        expected = 0
        for f in case.frames:
            if not f.whole:
                break
            expected += 0 if f.no_answer else 1
        sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=5)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pos = 0
            try:
                for cut in [*case.chunks, len(data)]:
                    sock.sendall(data[pos:cut])
                    pos = cut
                    if cut < len(data):
                        time.sleep(0.001)
            except (BrokenPipeError, ConnectionResetError):
                self.closed_by_server += 1
                return
            sock.settimeout(self.wait)
            got = 0
            order = [f.correlation_id for f in case.frames]
            while True:
                try:
                    frame = recv_frame(sock)
                except TimeoutError:
                    break
                except ConnectionResetError:
                    self.closed_by_server += 1
                    break
                if frame is None:
                    self.closed_by_server += 1
                    break
                got += 1
                self.responses += 1
                why = check_response(frame, sent)
                assert why is None, f"bad response: {why}"
                (corr,) = struct.unpack_from(">i", frame, 0)
                if corr in sent:  # responses keep request order
                    assert corr in order, f"response {corr} out of order (sent {ids})"
                    order = order[order.index(corr) + 1:]
                if got >= expected and case.frames[-1].whole:
                    break
        finally:
            sock.close()
        self.check_server()

    def canary(self, seq: int) -> None:
        """A fresh client can still produce and fetch."""
        value = b"canary-%d" % seq
        batch = BATCHES.add(encode_batch([value], timestamps=[1_700_000_000_000]))
        sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=10)
        try:
            resp = call(sock, produce_request(CANARY, 0, batch), 0, 9)
            part = resp.responses[0].partition_responses[0]
            assert part.error_code == 0, f"canary produce failed: {part.error_code}"
            fetched = call(sock, fetch_request(CANARY, 0, part.base_offset), 1, 12)
            data = fetched.responses[0].partitions[0].records
            assert data and value in bytes(data), "canary record not fetched back"
        finally:
            sock.close()


def produce_request(topic: str, partition: int, batch: bytes, acks: int = 1):
    cls = load_request_schema(0, 9)
    m = sys.modules[cls.__module__]
    return cls(transactional_id=None, acks=acks, timeout=datetime.timedelta(milliseconds=5000), topic_data=(
        m.TopicProduceData(name=topic, partition_data=(m.PartitionProduceData(index=partition, records=batch),)),))


def fetch_request(topic: str, partition: int, offset: int, max_wait_ms: int = 0):
    cls = load_request_schema(1, 12)
    m = sys.modules[cls.__module__]
    return cls(max_wait=datetime.timedelta(milliseconds=max_wait_ms), min_bytes=1, max_bytes=1 << 20,
               isolation_level=0, session_id=0, session_epoch=-1, topics=(m.FetchTopic(topic=topic, partitions=(
                   m.FetchPartition(partition=partition, fetch_offset=offset, partition_max_bytes=1 << 20),)),),
               forgotten_topics_data=(), rack_id="")


def call(sock: socket.socket, body, corr: int, version: int):
    cls = type(body)
    sock.sendall(_i32(len(raw := request_bytes(cls, body, corr))) + raw)
    frame = recv_frame(sock)
    assert frame is not None, "connection closed"
    rcls = load_response_schema(cls.__api_key__, version)
    (got,) = struct.unpack_from(">i", frame, 0)
    assert got == corr
    resp, _ = entity_reader(rcls)(frame, 5 if rcls.__flexible__ else 4)
    return resp


class GoodClient(threading.Thread):
    """Produces and fetches on one long-lived connection while the fuzzer runs."""

    def __init__(self, port: int) -> None:
        super().__init__(name="good-client", daemon=True)
        self.port = port
        self.stop_event = threading.Event()
        self.rounds = 0
        self.error: str | None = None
        self.max_latency = 0.0

    def run(self) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            try:
                while not self.stop_event.wait(0.02):
                    value = b"good-%d" % self.rounds
                    batch = BATCHES.add(encode_batch([value], timestamps=[1_700_000_000_000]))
                    t0 = time.monotonic()
                    r = call(sock, produce_request(GOOD, 0, batch), 2 * self.rounds, 9)
                    part = r.responses[0].partition_responses[0]
                    assert part.error_code == 0, f"produce error {part.error_code}"
                    f = call(sock, fetch_request(GOOD, 0, part.base_offset), 2 * self.rounds + 1, 12)
                    data = f.responses[0].partitions[0].records
                    assert data and value in bytes(data), "record not fetched back"
                    self.max_latency = max(self.max_latency, time.monotonic() - t0)
                    self.rounds += 1
            finally:
                sock.close()
        except Exception as e:  # reported by the fuzzer's checks
            self.error = repr(e)


def create_topics(port: int) -> None:
    cls = load_request_schema(19, 7)
    m = sys.modules[cls.__module__]
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        topics = tuple(m.CreatableTopic(name=n, num_partitions=2, replication_factor=1, assignments=(), configs=())
                       for n in (*TOPICS, CANARY, GOOD))
        r = call(sock, cls(topics=topics, timeout=datetime.timedelta(seconds=10), validate_only=False), 1, 7)
        assert all(t.error_code in (0, 36) for t in r.topics), r
    finally:
        sock.close()


def stored_batches_are_valid(data_dir: str) -> int:
    """Every stored batch is one generated as valid; returns how many were checked."""
    n = 0
    for entry in os.listdir(data_dir):
        d = os.path.join(data_dir, entry)
        if entry == "meta" or not os.path.isdir(d) or entry.startswith("__"):
            continue  # internal topics (__consumer_offsets) are written by the server itself
        for name in sorted(os.listdir(d)):
            if not name.endswith(".log"):
                continue
            with open(os.path.join(d, name), "rb") as f:
                data = f.read()
            pos = 0
            while pos < len(data):
                size = 12 + struct.unpack_from(">i", data, pos + 8)[0]
                batch = data[pos:pos + size]
                assert Batches.key(batch) in BATCHES.valid, (
                    f"{d}/{name} at {pos}: a stored batch the fuzzer never sent as valid: {batch[:80].hex()}")
                pos += size
                n += 1
    return n


def run(work: str, *, seconds: float = 5.0, examples: int | None = None, seed: int | None = None,
        check_every: int = 50, log=print) -> dict:
    """Fuzz a fresh server for ``seconds`` (or ``examples`` cases); returns counts, raises on a violation."""
    data = os.path.join(work, "data")
    server = Server(data, "--max-request-size", str(MAX_REQUEST), "--default-partitions", "2")
    server.start()
    target = Target(server)
    good = GoodClient(server.port)
    rnd = random.Random(seed)
    t0 = time.monotonic()
    deadline = t0 + seconds if examples is None else float("inf")
    budget = examples if examples is not None else 10**9
    try:
        create_topics(server.port)
        target.check_server()
        good.start()
        rounds = 0
        while target.cases < budget and time.monotonic() < deadline:
            n = min(check_every, budget - target.cases)

            @settings(max_examples=n, deadline=None, database=None, derandomize=False,
                      suppress_health_check=list(HealthCheck))
            @given(case=cases())
            def one(case):
                if time.monotonic() >= deadline:
                    return
                target.run_case(case)

            if seed is not None:
                one = __import__("hypothesis").seed(rnd.getrandbits(64))(one)
            one()
            rounds += 1
            target.canary(rounds)
            assert good.error is None, f"the good client failed: {good.error}"
        good.stop_event.set()
        good.join(30)
        assert good.error is None, f"the good client failed: {good.error}"
        assert good.rounds > 0, "the good client never completed a round"
        target.check_server()
        rss = server.rss_kb()
    finally:
        good.stop_event.set()
        rc = server.stop()
    assert rc == 0, f"server exit code {rc}:\n{server.log_text()[-3000:]}"
    target.check_server(alive=False)
    scanned = check_data_dir(data)
    stored = stored_batches_are_valid(data)
    return {"cases": target.cases, "frames": target.frames, "responses": target.responses,
            "closed_by_server": target.closed_by_server, "warnings_logged": target.warnings,
            "good_client_rounds": good.rounds, "good_client_max_latency_s": round(good.max_latency, 3),
            "batches_stored": stored, "batches_scanned": scanned["batches"], "rss_mb": round(rss / 1024, 1),
            "seconds": round(time.monotonic() - t0, 1), "kinds": target.kinds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--examples", type=int, default=None, help="stop after this many cases instead")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--check-every", type=int, default=50, help="cases between canary checks")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (server log, last case)")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="umlog-fuzz-")
    ok = False
    try:
        r = run(work, seconds=a.seconds, examples=a.examples, seed=a.seed, check_every=a.check_every)
        print(" ".join(f"{k}={v}" for k, v in r.items()))
        print("OK: the server survived every case, kept serving, stored only valid batches")
        ok = True
    finally:
        if a.keep or not ok:
            print("work dir kept:", work, "(data.server.log, data.last-case)")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

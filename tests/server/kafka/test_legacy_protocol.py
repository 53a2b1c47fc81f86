"""Produce v0-2, Fetch v0-3 and ListOffsets v0 frame by frame, through the door's
dispatch over a real engine. Frames are built here from Kafka's request schemas
of those versions (kio, Kafka 4's schemas, no longer has them); answers are
parsed the same way, and their message sets with kafka-python's reader."""

from __future__ import annotations

import gzip
import os
import struct
import warnings
import zlib

import pytest
from kio.schema.errors import ErrorCode

import umlog
from umlog.server.kafka import KafkaDoor
from umlog.server.kafka.dispatch import APIS, api_table, dispatch

# kafka-python 3.0 calls a deprecated importlib API when its modules load (and
# pytest makes warnings errors): import what is used here once, quietly.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import kafka  # noqa: F401
    from kafka.record.memory_records import MemoryRecords

# --- frames, from the schemas ------------------------------------------------------------


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def frame(key: int, version: int, body: bytes, corr: int = 1) -> bytearray:
    return bytearray(struct.pack(">hhi", key, version, corr) + _str("legacy-test") + body)


def produce_v0_2(version: int, parts: dict, acks: int = 1) -> bytearray:
    """ProduceRequest v0-v2: acks, timeout_ms, [name, [index, records]]."""
    body = struct.pack(">hii", acks, 5000, len(parts))
    for topic, rows in parts.items():
        body += _str(topic) + struct.pack(">i", len(rows))
        for index, records in rows:
            body += struct.pack(">ii", index, len(records)) + records
    return frame(0, version, body)


def fetch_v0_3(version: int, parts: dict, max_bytes: int = 1 << 20) -> bytearray:
    """FetchRequest v0-v3: replica_id, max_wait_ms, min_bytes, [v3 max_bytes], [topic, [partition, offset, max]]."""
    body = struct.pack(">iii", -1, 0, 0)
    if version >= 3:
        body += struct.pack(">i", max_bytes)
    body += struct.pack(">i", len(parts))
    for topic, rows in parts.items():
        body += _str(topic) + struct.pack(">i", len(rows))
        for index, offset, pmax in rows:
            body += struct.pack(">iqi", index, offset, pmax)
    return frame(1, version, body)


def list_offsets_v0(parts: dict) -> bytearray:
    body = struct.pack(">ii", -1, len(parts))
    for topic, rows in parts.items():
        body += _str(topic) + struct.pack(">i", len(rows))
        for index, ts, n in rows:
            body += struct.pack(">iqi", index, ts, n)
    return frame(2, 0, body)


class Reader:
    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos = buf, 0

    def take(self, fmt: str):
        v = struct.unpack_from(">" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize(">" + fmt)
        return v if len(v) > 1 else v[0]

    def string(self) -> str:
        n = self.take("h")
        s = self.buf[self.pos:self.pos + n].decode()
        self.pos += n
        return s

    def blob(self) -> bytes:
        n = self.take("i")
        b = self.buf[self.pos:self.pos + max(n, 0)]
        self.pos += max(n, 0)
        return b

    def done(self) -> None:
        assert self.pos == len(self.buf), f"{len(self.buf) - self.pos} trailing bytes"


async def call(door, req: bytearray) -> Reader:
    pieces = await dispatch(None, req, door)
    data = b"".join(bytes(p) for p in pieces)
    (size, corr) = struct.unpack_from(">ii", data, 0)
    assert size == len(data) - 4 and corr == 1
    return Reader(data[8:])


def produce_answer(r: Reader, version: int) -> dict:
    out = {}
    for _ in range(r.take("i")):
        name = r.string()
        for _ in range(r.take("i")):
            index, code, base = r.take("ihq")
            append_time = r.take("q") if version >= 2 else None
            out[(name, index)] = (code, base, append_time)
    if version >= 1:
        assert r.take("i") == 0  # throttle_time_ms
    r.done()
    return out


def fetch_answer(r: Reader, version: int) -> dict:
    if version >= 1:
        assert r.take("i") == 0
    out = {}
    for _ in range(r.take("i")):
        name = r.string()
        for _ in range(r.take("i")):
            index, code, hw = r.take("ihq")
            out[(name, index)] = (code, hw, r.blob())
    r.done()
    return out


def messages(buf: bytes) -> list:
    """(offset, timestamp, key, value) with kafka-python's reader (partial trailing message skipped)."""
    mr = MemoryRecords(buf)
    out = []
    while mr.has_next():
        batch = mr.next_batch()
        if batch is None:
            break
        out += [(m.offset, m.timestamp, m.key, m.value) for m in batch]
    return out


def message(magic: int, key, value, timestamp: int = -1, attributes: int = 0, offset: int = 0) -> bytes:
    body = struct.pack(">bb", magic, attributes) + (struct.pack(">q", timestamp) if magic else b"")
    for b in (key, value):
        body += struct.pack(">i", -1) if b is None else struct.pack(">i", len(b)) + b
    body = struct.pack(">I", zlib.crc32(body)) + body
    return struct.pack(">qi", offset, len(body)) + body


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def broker(tmp_path):
    b = umlog.open(str(tmp_path / "data"))
    yield b
    b.close()


@pytest.fixture
def door(broker):
    return KafkaDoor(broker, advertise_host="127.0.0.1", advertise_port=9092)


# --- versions ----------------------------------------------------------------------------------


def test_old_versions_are_served_and_advertised():
    assert APIS[0].versions == APIS[0].advertised == (0, 11)
    assert APIS[1].versions == APIS[1].advertised == (0, 12)
    assert APIS[2].versions == APIS[2].advertised == (0, 6)


def test_the_readme_api_table_is_the_one_the_code_makes():
    readme = os.path.join(os.path.dirname(__file__), "..", "..", "..", "README.md")
    if not os.path.exists(readme):  # an installed package without the source tree
        pytest.skip("no README.md beside the tests")
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    block = text.split("<!-- kafka-apis:begin -->\n", 1)[1].split("\n<!-- kafka-apis:end -->", 1)[0]
    assert block == api_table(), "regenerate the README's API table from dispatch.api_table()"


# --- Produce v0-2 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 1, 2])
@pytest.mark.parametrize("compressed", [False, True])
async def test_produce_old_message_sets_are_stored_as_v2(broker, door, version, compressed):
    magic = 1 if version == 2 else 0
    broker.create_topic("p", partitions=1)
    msgs = [message(magic, b"k%d" % i if i % 2 else None, b"v%d" % i, 1000 + i, offset=i) for i in range(5)]
    data = b"".join(msgs)
    if compressed:
        data = message(magic, None, gzip.compress(data), 1004, attributes=1, offset=4)
    ans = produce_answer(await call(door, produce_v0_2(version, {"p": [(0, data)]})), version)
    assert ans[("p", 0)][:2] == (ErrorCode.none.value, 0)
    got = list(broker.topic("p").partition(0).read(offset=0))
    assert [(r.offset, r.key, r.value) for r in got] == [(i, b"k%d" % i if i % 2 else None, b"v%d" % i)
                                                         for i in range(5)]
    assert [r.timestamp for r in got] == [1000 + i if magic else -1 for i in range(5)]
    again = produce_answer(await call(door, produce_v0_2(version, {"p": [(0, data)]})), version)
    assert again[("p", 0)][:2] == (ErrorCode.none.value, 5)  # offsets assigned as usual


async def test_a_bad_crc_refuses_that_partition_only(broker, door):
    broker.create_topic("c", partitions=2)
    good = message(1, None, b"good", 5)
    bad = bytearray(message(1, None, b"bad!", 5))
    bad[-1] ^= 0x20
    ans = produce_answer(await call(door, produce_v0_2(2, {"c": [(0, bytes(bad)), (1, good)]})), 2)
    assert ans[("c", 0)][0] == ErrorCode.corrupt_message.value
    assert ans[("c", 1)][:2] == (ErrorCode.none.value, 0)
    assert broker.topic("c").partition(0).end_offset == 0
    assert [r.value for r in broker.topic("c").partition(1).read(offset=0)] == [b"good"]


async def test_produce_v0_acks_0_answers_nothing(broker, door):
    broker.create_topic("a0", partitions=1)
    assert await dispatch(None, produce_v0_2(0, {"a0": [(0, message(0, None, b"x"))]}, acks=0), door) is None
    assert broker.topic("a0").partition(0).end_offset == 1


# --- Fetch v0-3 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 1, 2, 3])
async def test_fetch_answers_the_message_format_of_its_version(broker, door, version):
    t = broker.create_topic("f", partitions=1)
    t.append_many([b"a", b"b", b"c"], partition=0, keys=[b"1", None, b"3"], timestamps=[10, 11, 12],
                  headers=[[("h", b"dropped")]] * 3)
    t.partition(0).flush()
    ans = fetch_answer(await call(door, fetch_v0_3(version, {"f": [(0, 1, 1 << 20)]})), version)
    code, hw, records = ans[("f", 0)]
    assert (code, hw) == (ErrorCode.none.value, 3)
    assert records[16] == (1 if version >= 2 else 0)  # the magic byte of the first message
    ts = (lambda n: n) if version >= 2 else (lambda n: None)
    assert messages(records) == [(1, ts(11), None, b"b"), (2, ts(12), b"3", b"c")]  # from the fetch offset


async def test_fetch_limits_count_converted_bytes_in_whole_messages(broker, door):
    t = broker.create_topic("lim", partitions=2)
    for p in (0, 1):
        t.append_many([b"x" * 20] * 10, partition=p, timestamps=[1] * 10)
        t.partition(p).flush()
    one = len(message(1, None, b"x" * 20))
    # partition_max_bytes: three and a half messages give three whole ones
    ans = fetch_answer(await call(door, fetch_v0_3(2, {"lim": [(0, 0, 3 * one + one // 2)]})), 2)
    assert [m[0] for m in messages(ans[("lim", 0)][2])] == [0, 1, 2]
    assert len(ans[("lim", 0)][2]) == 3 * one
    # v3 max_bytes: the first partition gets its first message even if larger, the next none
    ans = fetch_answer(await call(door, fetch_v0_3(3, {"lim": [(0, 0, 1 << 20), (1, 0, 1 << 20)]}, max_bytes=10)),
                       3)
    assert [m[0] for m in messages(ans[("lim", 0)][2])] == [0]
    assert ans[("lim", 1)][2] == b""
    ans = fetch_answer(await call(door, fetch_v0_3(3, {"lim": [(0, 0, 1 << 20), (1, 0, 1 << 20)]},
                                                   max_bytes=12 * one)), 3)
    assert len(messages(ans[("lim", 0)][2])) == 10 and len(messages(ans[("lim", 1)][2])) == 2


async def test_fetch_errors_keep_the_old_layout(broker, door):
    ans = fetch_answer(await call(door, fetch_v0_3(0, {"nope": [(0, 0, 100)]})), 0)
    assert ans[("nope", 0)] == (ErrorCode.unknown_topic_or_partition.value, -1, b"")


# --- ListOffsets v0 ------------------------------------------------------------------------------------


def offsets_answer(r: Reader) -> dict:
    out = {}
    for _ in range(r.take("i")):
        name = r.string()
        for _ in range(r.take("i")):
            index, code = r.take("ih")
            out[(name, index)] = (code, [r.take("q") for _ in range(r.take("i"))])
    r.done()
    return out


async def test_list_offsets_v0_is_kafkas_offsets_before(broker, door):
    t = broker.create_topic("lo", partitions=1)
    p = t.partition(0)
    for _ in range(3):
        t.append_many([b"x"] * 4, partition=0)
        p.flush()
        p.roll()
    t.append_many([b"y"], partition=0)
    p.flush()
    q = {"lo": [(0, -1, 1)], "nope": [(0, -1, 1)]}
    ans = offsets_answer(await call(door, list_offsets_v0(q)))
    assert ans[("lo", 0)] == (0, [13])  # Burrow's question: the end offset
    assert ans[("nope", 0)][0] == ErrorCode.unknown_topic_or_partition.value
    ans = offsets_answer(await call(door, list_offsets_v0({"lo": [(0, -1, 10)]})))
    assert ans[("lo", 0)] == (0, [13, 12, 8, 4, 0])  # the end, then each segment's base, newest first
    ans = offsets_answer(await call(door, list_offsets_v0({"lo": [(0, -2, 10)]})))
    assert ans[("lo", 0)] == (0, [0])
    ans = offsets_answer(await call(door, list_offsets_v0({"lo": [(0, 2**62, 2)]})))
    assert ans[("lo", 0)] == (0, [13, 12])  # every segment was written before that time
    ans = offsets_answer(await call(door, list_offsets_v0({"lo": [(0, 0, 2)]})))
    assert ans[("lo", 0)] == (0, [])  # none before the epoch

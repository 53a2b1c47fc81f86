"""KafkaProtocol + handlers with a fake transport (no sockets) over a real engine in tmp_path."""

from __future__ import annotations

import asyncio
import struct

import pytest
from helpers import scaled, wait_until_async
from kio.schema.errors import ErrorCode

import umlog
from umlog._native.core import encode_batch
from umlog.server.kafka import KafkaDoor, KafkaProtocol
from umlog.server.kafka.dispatch import APIS

from .kafka_frames import ms, read_response, request_class, request_frame


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.paused = False
        self.pauses = 0
        self.aborted = False
        self.closed = False

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 5555)}.get(name, default)

    def writelines(self, pieces):
        for p in pieces:
            self.written += p

    def write(self, data):
        self.written += data

    def pause_reading(self):
        self.paused = True
        self.pauses += 1

    def resume_reading(self):
        self.paused = False

    def abort(self):
        self.aborted = True

    def close(self):
        self.closed = True

    def frames(self) -> list[bytes]:
        out, pos = [], 0
        while pos + 4 <= len(self.written):
            (n,) = struct.unpack_from(">i", self.written, pos)
            out.append(bytes(self.written[pos + 4:pos + 4 + n]))
            pos += 4 + n
        return out


@pytest.fixture
def broker(tmp_path):
    b = umlog.open(str(tmp_path / "data"))
    yield b
    b.close()


@pytest.fixture
def door(broker):
    return KafkaDoor(broker, advertise_host="127.0.0.1", advertise_port=9092)


def connect(door) -> tuple[KafkaProtocol, FakeTransport]:
    proto = KafkaProtocol(door)
    tr = FakeTransport()
    proto.connection_made(tr)
    return proto, tr


async def settle(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def api_versions_request(version: int):
    cls = request_class(18, version)
    kw = {}
    if version >= 3:
        kw = {"client_software_name": "t", "client_software_version": "1"}
    return cls(**kw)


async def test_api_versions_every_version_in_order_fed_byte_by_byte(door):
    proto, tr = connect(door)
    data = b"".join(request_frame(api_versions_request(v), correlation_id=100 + v) for v in range(5))
    for i in range(len(data)):
        proto.data_received(data[i:i + 1])
    await settle()
    frames = tr.frames()
    assert len(frames) == 5
    for v, frame in enumerate(frames):
        corr, resp = read_response(frame, 18, v)
        assert corr == 100 + v
        assert resp.error_code == ErrorCode.none
        got = {k.api_key: (k.min_version, k.max_version) for k in resp.api_keys}
        assert got == {a.key: a.advertised for a in APIS.values()}
    assert got[0][0] == 0 and got[1][0] == 0 and got[10][0] == 0  # see produce/fetch/find_coordinator
    proto.connection_lost(None)


async def test_api_versions_unknown_version_gets_v0_body_with_our_ranges(door):
    proto, tr = connect(door)
    frame = bytearray(request_frame(api_versions_request(3)))
    frame[6:8] = struct.pack(">h", 99)  # api_version
    proto.data_received(bytes(frame))
    await settle()
    (resp,) = tr.frames()
    corr, body = resp[:4], resp[4:]
    assert corr == bytes(frame[8:12])  # the request's correlation id
    code, n = struct.unpack_from(">hi", body, 0)
    assert code == ErrorCode.unsupported_version.value
    keys = {struct.unpack_from(">hhh", body, 6 + 6 * i)[0] for i in range(n)}
    assert keys == set(APIS)
    assert not tr.aborted


async def test_unsupported_version_with_schema_answers_unsupported_version(door):
    proto, tr = connect(door)
    cls = request_class(3, 13)  # Metadata v13: kio knows it, we do not answer it
    proto.data_received(request_frame(cls(topics=None, allow_auto_topic_creation=False,
                                          include_topic_authorized_operations=False), 7))
    await settle()
    corr, resp = read_response(tr.frames()[0], 3, 13)
    assert corr == 7 and resp.error_code == ErrorCode.unsupported_version


@pytest.mark.parametrize("frame", [
    struct.pack(">i", 2**31 - 1) + b"xx",  # absurd length
    struct.pack(">i", -5),  # negative length
    struct.pack(">i", 3) + b"abc",  # shorter than any header
    struct.pack(">ihhi", 8, 999, 0, 1),  # unknown API key
    struct.pack(">ihhi", 8, 0, 2, 1),  # Produce v2 cut off before its client_id
    struct.pack(">ihhih", 10, 3, 12, 1, 50),  # truncated header (client_id says 50 bytes)
])
async def test_bad_frames_close_only_that_connection(door, frame):
    bad, bad_tr = connect(door)
    good, good_tr = connect(door)
    bad.data_received(frame)
    await settle()
    assert bad_tr.aborted
    good.data_received(request_frame(api_versions_request(3)))
    await settle()
    assert not good_tr.aborted and len(good_tr.frames()) == 1


async def test_garbage_metadata_body_closes_connection(door):
    proto, tr = connect(door)
    cls = request_class(3, 12)
    frame = request_frame(cls(topics=None, allow_auto_topic_creation=False, include_topic_authorized_operations=False))
    proto.data_received(frame[:4 + 18] + b"\x05\xff")  # wrong size prefix handled below
    await settle()
    hdr = frame[4:4 + 18]
    body = b"\x05" + b"\xff" * 3  # a 4-topic array with nothing in it
    proto2, tr2 = connect(door)
    proto2.data_received(struct.pack(">i", len(hdr) + len(body)) + hdr + body)
    await settle()
    assert tr2.aborted


async def test_reading_pauses_when_too_much_is_queued(door):
    door.max_queued_bytes = 4096
    proto, tr = connect(door)
    frame = request_frame(api_versions_request(3))
    count = door.max_queued_bytes // (len(frame) - 4) + 10
    proto.data_received(frame * count)  # no await: the task has not run yet
    assert tr.paused
    await settle(count * 3)
    assert not tr.paused
    assert len(tr.frames()) == count


def produce_request(topic, partition, batch, acks=1, version=9):
    cls = request_class(0, version)
    import sys

    m = sys.modules[cls.__module__]
    return cls(transactional_id=None, acks=acks, timeout=ms(1000), topic_data=(
        m.TopicProduceData(name=topic, partition_data=(m.PartitionProduceData(index=partition, records=batch),)),))


def fetch_request(topic, partition, offset, max_wait_ms=0, min_bytes=1, version=12, max_bytes=1 << 20):
    cls = request_class(1, version)
    import sys

    m = sys.modules[cls.__module__]
    return cls(max_wait=ms(max_wait_ms), min_bytes=min_bytes, max_bytes=max_bytes, isolation_level=0,
               session_id=0, session_epoch=-1, topics=(m.FetchTopic(topic=topic, partitions=(
                   m.FetchPartition(partition=partition, fetch_offset=offset, partition_max_bytes=max_bytes),)),),
               forgotten_topics_data=(), rack_id="")


async def call(door, body, corr=1):
    proto, tr = connect(door)
    proto.data_received(request_frame(body, corr))
    await wait_until_async(tr.frames, 10, "the response")
    proto.connection_lost(None)
    return read_response(tr.frames()[0], type(body).__api_key__, type(body).__version__)[1]


async def test_produce_then_fetch_returns_stored_bytes(door, broker):
    broker.create_topic("t")
    batch = encode_batch([b"a", b"b", b"c"])
    resp = await call(door, produce_request("t", 0, batch))
    p = resp.responses[0].partition_responses[0]
    assert (p.error_code, p.base_offset) == (ErrorCode.none, 0)
    resp = await call(door, produce_request("t", 0, encode_batch([b"d"])))
    assert resp.responses[0].partition_responses[0].base_offset == 3
    # from the middle of the first batch: the whole batch comes back
    f = await call(door, fetch_request("t", 0, 1))
    part = f.responses[0].partitions[0]
    assert part.error_code == ErrorCode.none and part.high_watermark == 4
    assert part.records[:8] == struct.pack(">q", 0) and part.records[12:len(batch)] == batch[12:]
    # max_bytes smaller than the first batch: still one whole batch
    f = await call(door, fetch_request("t", 0, 0, max_bytes=10))
    assert len(f.responses[0].partitions[0].records) == len(batch)
    # at the end: empty; beyond: OFFSET_OUT_OF_RANGE; unknown: UNKNOWN_TOPIC_OR_PARTITION
    f = await call(door, fetch_request("t", 0, 4))
    assert f.responses[0].partitions[0].records == b""
    f = await call(door, fetch_request("t", 0, 5))
    assert f.responses[0].partitions[0].error_code == ErrorCode.offset_out_of_range
    f = await call(door, fetch_request("nope", 0, 0))
    assert f.responses[0].partitions[0].error_code == ErrorCode.unknown_topic_or_partition


async def test_corrupt_batch_is_refused_and_not_stored(door, broker):
    broker.create_topic("t")
    batch = bytearray(encode_batch([b"hello"]))
    batch[-1] ^= 0xFF  # breaks the CRC
    resp = await call(door, produce_request("t", 0, bytes(batch)))
    assert resp.responses[0].partition_responses[0].error_code == ErrorCode.corrupt_message
    assert broker.topic("t").partition(0).end_offset == 0


async def test_long_poll_is_woken_by_produce(door, broker):
    broker.create_topic("t")
    fetcher, ftr = connect(door)
    fetcher.data_received(request_frame(fetch_request("t", 0, 0, max_wait_ms=10_000), 5))
    await asyncio.sleep(0.05)
    assert ftr.frames() == []
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await call(door, produce_request("t", 0, encode_batch([b"x"])))
    await wait_until_async(ftr.frames, 10, "the long poll's answer")
    assert loop.time() - t0 < scaled(1.0)  # woken by the append, not at max_wait (10 s)
    _, resp = read_response(ftr.frames()[0], 1, 12)
    assert resp.responses[0].partitions[0].records
    fetcher.connection_lost(None)
    assert not door.waiters


async def test_long_poll_times_out_and_connection_loss_cleans_waiters(door, broker):
    broker.create_topic("t")
    proto, tr = connect(door)
    proto.data_received(request_frame(fetch_request("t", 0, 0, max_wait_ms=50)))
    await wait_until_async(tr.frames, 10, "the answer at max_wait")
    assert not door.waiters
    proto2, tr2 = connect(door)
    proto2.data_received(request_frame(fetch_request("t", 0, 0, max_wait_ms=10_000)))
    await wait_until_async(lambda: door.waiters, 10, "the fetch to wait")
    proto2.connection_lost(None)
    await settle()
    assert not door.waiters


async def test_acks_0_gets_no_response(door, broker):
    broker.create_topic("t")
    proto, tr = connect(door)
    proto.data_received(request_frame(produce_request("t", 0, encode_batch([b"x"]), acks=0)))
    proto.data_received(request_frame(api_versions_request(3), 2))
    await settle()
    (only,) = tr.frames()
    assert struct.unpack_from(">i", only)[0] == 2
    assert broker.topic("t").partition(0).end_offset == 1


async def test_idempotent_duplicates_and_gaps(door, broker):
    broker.create_topic("t")
    init = request_class(22, 4)(transactional_id=None, transaction_timeout=ms(60000), producer_id=-1,
                                producer_epoch=-1)
    r = await call(door, init)
    pid, epoch = r.producer_id, r.producer_epoch
    assert r.error_code == ErrorCode.none and pid >= 0

    def b(seq, n=2):
        return encode_batch([b"v"] * n, producer_id=pid, producer_epoch=epoch, base_sequence=seq)

    first = await call(door, produce_request("t", 0, b(0)))
    assert first.responses[0].partition_responses[0].base_offset == 0
    again = await call(door, produce_request("t", 0, b(0)))  # a retry of the same batch
    p = again.responses[0].partition_responses[0]
    assert (p.error_code, p.base_offset) == (ErrorCode.none, 0)
    assert broker.topic("t").partition(0).end_offset == 2  # stored once
    gap = await call(door, produce_request("t", 0, b(5)))
    assert gap.responses[0].partition_responses[0].error_code == ErrorCode.out_of_order_sequence_number
    nxt = await call(door, produce_request("t", 0, b(2)))
    assert nxt.responses[0].partition_responses[0].base_offset == 2
    old = encode_batch([b"v"], producer_id=pid, producer_epoch=epoch - 1 if epoch else -2, base_sequence=4)
    if epoch:
        stale = await call(door, produce_request("t", 0, old))
        assert stale.responses[0].partition_responses[0].error_code == ErrorCode.invalid_producer_epoch
    assert broker.topic("t").partition(0).end_offset == 4


async def test_metadata_auto_creates_and_lists(door, broker):
    cls = request_class(3, 12)
    m = __import__("sys").modules[cls.__module__]
    resp = await call(door, cls(topics=(m.MetadataRequestTopic(topic_id=None, name="auto"),),
                                allow_auto_topic_creation=True, include_topic_authorized_operations=False))
    (t,) = resp.topics
    assert t.error_code == ErrorCode.none and len(t.partitions) == 1
    assert resp.brokers[0].port == 9092 and resp.cluster_id == broker.cluster_id
    resp = await call(door, cls(topics=(m.MetadataRequestTopic(topic_id=None, name="nope"),),
                                allow_auto_topic_creation=False, include_topic_authorized_operations=False))
    assert resp.topics[0].error_code == ErrorCode.unknown_topic_or_partition
    resp = await call(door, cls(topics=(m.MetadataRequestTopic(topic_id=None, name="bad name!"),),
                                allow_auto_topic_creation=True, include_topic_authorized_operations=False))
    assert resp.topics[0].error_code == ErrorCode.invalid_topic_exception
    door.auto_create = False
    resp = await call(door, cls(topics=(m.MetadataRequestTopic(topic_id=None, name="other"),),
                                allow_auto_topic_creation=True, include_topic_authorized_operations=False))
    assert resp.topics[0].error_code == ErrorCode.unknown_topic_or_partition
    assert broker.topics() == ["auto"]


async def test_list_offsets(door, broker):
    broker.create_topic("t")
    await call(door, produce_request("t", 0, encode_batch([b"a", b"b"], timestamps=[1000, 2000])))
    await call(door, produce_request("t", 0, encode_batch([b"c"], timestamps=[3000])))
    cls = request_class(2, 6)
    m = __import__("sys").modules[cls.__module__]

    async def lo(ts):
        r = await call(door, cls(replica_id=-1, isolation_level=0, topics=(m.ListOffsetsTopic(
            name="t", partitions=(m.ListOffsetsPartition(partition_index=0, timestamp=ts),)),)))
        p = r.topics[0].partitions[0]
        return p.error_code, p.offset, p.timestamp

    assert await lo(-2) == (ErrorCode.none, 0, -1)
    assert await lo(-1) == (ErrorCode.none, 3, -1)
    assert await lo(1500) == (ErrorCode.none, 1, 2000)
    assert await lo(2500) == (ErrorCode.none, 2, 3000)
    assert await lo(9999) == (ErrorCode.none, -1, -1)


async def test_fsync_always_acks_after_an_fdatasync_that_started_after_the_append(tmp_path, monkeypatch):
    # The spy sees every fdatasync of a segment and the partition's end offset
    # when it started: the ack must come after one that started with the
    # produced record already appended (the engine's group commit, run by the
    # hub off the loop).
    from umlog.log import segment as segment_mod

    started = []
    real = segment_mod.LogSegment.sync

    def spy(seg):
        started.append(b.topic("t").partition(0).end_offset)
        return real(seg)

    monkeypatch.setattr(segment_mod.LogSegment, "sync", spy)
    b = umlog.open(str(tmp_path / "d"), fsync="always")
    try:
        door = KafkaDoor(b)
        b.create_topic("t")
        for n in (1, 2, 3):
            r = await call(door, produce_request("t", 0, encode_batch([b"x"]), acks=-1))
            assert r.responses[0].partition_responses[0].error_code == ErrorCode.none
            assert started and started[-1] >= n
            assert b.topic("t").partition(0).flushed_offset >= n
    finally:
        b.close()


async def test_idempotent_state_is_rebuilt_from_the_log_after_a_restart(door, broker):
    # A producer's batch was written just before a crash and its ack was lost:
    # after the restart (a fresh door over the recovered log) the producer's
    # retry must be acknowledged with the original offsets, not stored twice.
    broker.create_topic("t")
    init = request_class(22, 4)(transactional_id=None, transaction_timeout=ms(60000), producer_id=-1,
                                producer_epoch=-1)
    r = await call(door, init)
    pid, epoch = r.producer_id, r.producer_epoch

    def b(seq, n=3):
        return encode_batch([b"v%d" % seq] * n, producer_id=pid, producer_epoch=epoch, base_sequence=seq)

    for seq in (0, 3, 6):
        await call(door, produce_request("t", 0, b(seq)))
    broker.topic("t").append_many([b"other"] * 2, partition=0)  # another writer's records in between
    restarted = KafkaDoor(broker, advertise_host="127.0.0.1", advertise_port=9092)
    retry = await call(restarted, produce_request("t", 0, b(6)))
    p = retry.responses[0].partition_responses[0]
    assert (p.error_code, p.base_offset) == (ErrorCode.none, 6)
    assert broker.topic("t").partition(0).end_offset == 11  # nothing stored twice
    gap = await call(restarted, produce_request("t", 0, b(12)))
    assert gap.responses[0].partition_responses[0].error_code == ErrorCode.out_of_order_sequence_number
    nxt = await call(restarted, produce_request("t", 0, b(9)))
    assert nxt.responses[0].partition_responses[0].base_offset == 11
    # a producer id nobody has seen starts fresh at any sequence
    stranger = encode_batch([b"s"], producer_id=pid + 1000, producer_epoch=0, base_sequence=42)
    ok = await call(restarted, produce_request("t", 0, stranger))
    assert ok.responses[0].partition_responses[0].error_code == ErrorCode.none


async def test_a_retry_of_a_batch_from_before_a_roll_and_a_crash_gets_its_original_offsets(tmp_path):
    # The producer's batches straddle a segment roll, the server dies without a
    # clean stop, and the producer retries a batch whose answer it lost: the
    # partition's producer state (snapshot at the roll + replay) finds it.
    from log.test_recovery import crash

    path = str(tmp_path / "data")
    b = umlog.open(path)
    b.create_topic("t", config={"segment.bytes": 2000})
    door = KafkaDoor(b)
    r = await call(door, request_class(22, 4)(transactional_id=None, transaction_timeout=ms(60000),
                                                producer_id=-1, producer_epoch=-1))
    pid, epoch = r.producer_id, r.producer_epoch

    def batch(seq):
        return encode_batch([b"v%d" % seq * 40] * 3, producer_id=pid, producer_epoch=epoch, base_sequence=seq)

    for seq in range(0, 45, 3):
        await call(door, produce_request("t", 0, batch(seq)))
    assert len(b.topic("t").partition(0).segments) >= 3
    b.flush()
    crash(b)
    b = umlog.open(path)
    try:
        door = KafkaDoor(b)
        retry = await call(door, produce_request("t", 0, batch(39)))
        p = retry.responses[0].partition_responses[0]
        assert (p.error_code, p.base_offset) == (ErrorCode.none, 39)
        assert b.topic("t").partition(0).end_offset == 45  # stored once
        nxt = await call(door, produce_request("t", 0, batch(45)))
        assert nxt.responses[0].partition_responses[0].base_offset == 45
        gap = await call(door, produce_request("t", 0, batch(51)))
        assert gap.responses[0].partition_responses[0].error_code == ErrorCode.out_of_order_sequence_number
    finally:
        b.close()


async def test_metadata_for_all_topics_lists_internal_ones_marked(door, broker):
    broker.create_topic("user")
    broker.group("g").commit("user", 0, 0)  # creates __consumer_offsets
    resp = await call(door, request_class(3, 12)(topics=None, allow_auto_topic_creation=False,
                                                 include_topic_authorized_operations=False))
    assert {t.name: t.is_internal for t in resp.topics} == {"user": False, "__consumer_offsets": True}

"""End to end: a real ``umlog serve`` subprocess and real Kafka clients over loopback.

Needs kcat (Debian package ``kcat``); the kcat tests are skipped without it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import socket
import struct
import subprocess
import time

import pytest
from helpers import scaled

from umlog._native.core import encode_batch

from .kafka_frames import Conn, ms, request_class, request_frame
from .serve_process import ServeProcess

pytestmark = pytest.mark.clients

KCAT = shutil.which("kcat") or shutil.which("kafkacat")
needs_kcat = pytest.mark.usefixtures("kcat_bin")  # skips on a laptop without kcat, fails in CI


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ServeProcess(str(tmp_path_factory.mktemp("serve") / "data"), "--default-partitions", "1")
    yield s
    rc = s.stop()
    assert rc == 0, s.stderr_text()
    assert os.path.exists(os.path.join(s.data_dir, ".clean"))
    assert "Traceback" not in s.stderr_text(), s.stderr_text()


def kcat(server, *args, input: bytes | None = None, timeout: float = 30) -> bytes:
    r = subprocess.run([KCAT, "-b", server.bootstrap, *args], input=input, capture_output=True, timeout=timeout)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout


# --- kcat ------------------------------------------------------------------------------


@needs_kcat
@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_kcat_every_codec_with_keys_and_headers(server, codec, tmp_path):
    topic = f"kcat-{codec}"
    lines = [f"k{i % 5}:value {i} " + "x" * (i % 50) for i in range(300)]
    kcat(server, "-P", "-t", topic, "-z", codec, "-K", ":", "-H", "h1=one", "-H", "h2=two",
         input="\n".join(lines).encode() + b"\n")
    out = kcat(server, "-C", "-t", topic, "-o", "beginning", "-e", "-f", "%k|%s|%h\n")
    got = out.decode().splitlines()
    assert got == [f"{ln.split(':', 1)[0]}|{ln.split(':', 1)[1]}|h1=one,h2=two" for ln in lines]
    # The stored batches keep the producer's codec (librdkafka sends a batch
    # uncompressed when compressing would not make it smaller, so look at all).
    seg = os.path.join(server.data_dir, f"{topic}-0", "0" * 20 + ".log")
    with open(seg, "rb") as f:
        data = f.read()
    codecs, pos = set(), 0
    while pos + 61 <= len(data):
        codecs.add(struct.unpack_from(">h", data, pos + 21)[0] & 7)
        pos += 12 + struct.unpack_from(">i", data, pos + 8)[0]
    assert ["none", "gzip", "snappy", "lz4", "zstd"].index(codec) in codecs


def _stored_codecs(data_dir: str, topic: str) -> list[int]:
    from umlog._native.core import scan_batches

    seg = os.path.join(data_dir, f"{topic}-0", "0" * 20 + ".log")
    with open(seg, "rb") as f:
        data = f.read()
    res = scan_batches(data, 0, len(data), -1, True)
    assert res.error is None
    return [struct.unpack_from(">h", data, int(p) + 21)[0] & 7 for p in res.positions]


@needs_kcat
@pytest.mark.parametrize("stored", ["lz4", "uncompressed", "zstd"])
def test_topic_compression_type_recompresses_what_kcat_sends(server, stored):
    # compression.type names a codec: every batch is stored in it, whatever the
    # producer used (as Kafka recompresses), and reads give the same records.
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"recompress-{stored}"
    admin = AdminClient({"bootstrap.servers": server.bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1, config={"compression.type": stored})])[topic].result(30)
    lines = [f"k{i % 7}:value {i} " + "y" * (i % 40) for i in range(400)]
    for codec in ("none", "snappy", "gzip"):
        kcat(server, "-P", "-t", topic, "-z", codec, "-K", ":", input="\n".join(lines).encode() + b"\n")
    out = kcat(server, "-C", "-t", topic, "-o", "beginning", "-e", "-f", "%k:%s\n").decode().splitlines()
    assert out == lines * 3
    want = {"lz4": 3, "uncompressed": 0, "zstd": 4}[stored]
    assert set(_stored_codecs(server.data_dir, topic)) == {want}


@needs_kcat
def test_kcat_metadata_list(server):
    kcat(server, "-P", "-t", "kcat-meta", input=b"x\n")
    out = kcat(server, "-L").decode()
    assert f"broker 0 at {server.bootstrap}" in out
    assert 'topic "kcat-meta" with 1 partitions' in out
    assert "partition 0, leader 0, replicas: 0, isrs: 0" in out


# --- confluent-kafka ------------------------------------------------------------------------


def test_confluent_admin_and_idempotent_producer_and_assign_consumer(server):
    ck = pytest.importorskip("confluent_kafka")
    from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic

    admin = AdminClient({"bootstrap.servers": server.bootstrap})
    for f in admin.create_topics([NewTopic("ck", num_partitions=2, replication_factor=1,
                                           config={"retention.ms": "3600000"})]).values():
        assert f.result() is None
    with pytest.raises(ck.KafkaException):
        admin.create_topics([NewTopic("ck", num_partitions=1, replication_factor=1)])["ck"].result()
    with pytest.raises(ck.KafkaException):
        admin.create_topics([NewTopic("ck-rf3", num_partitions=1, replication_factor=3)])["ck-rf3"].result()
    for f in admin.create_partitions([NewPartitions("ck", 3)]).values():
        assert f.result() is None
    md = admin.list_topics(timeout=10)
    assert len(md.topics["ck"].partitions) == 3
    cfg = admin.describe_configs([ConfigResource("topic", "ck")])
    (res,) = cfg.values()
    entries = res.result()
    assert entries["retention.ms"].value == "3600000"
    assert entries["segment.bytes"].is_default

    p = ck.Producer({"bootstrap.servers": server.bootstrap, "enable.idempotence": True, "acks": "all",
                     "linger.ms": 5})
    errors = []
    for i in range(3000):
        p.produce("ck", key=b"k%d" % (i % 11), value=b"v%d" % i, partition=i % 3, timestamp=1_000_000 + i,
                  on_delivery=lambda err, msg: err and errors.append(err))
    assert p.flush(scaled(30)) == 0 and not errors

    tps = [ck.TopicPartition("ck", i, 0) for i in range(3)]
    c = ck.Consumer({"bootstrap.servers": server.bootstrap, "group.id": "unused", "enable.auto.commit": False})
    c.assign(tps)
    seen = {}
    deadline = time.monotonic() + scaled(30)
    while len(seen) < 3000 and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is None or m.error():
            continue
        seen[m.value()] = (m.partition(), m.offset())
    assert len(seen) == 3000
    assert seen[b"v4"] == (1, 1)
    # offsets_for_times: partition 1 holds i = 1, 4, 7, ...; first i >= 1500 there is 1501
    (r,) = c.offsets_for_times([ck.TopicPartition("ck", 1, 1_001_500)], timeout=10)
    assert r.offset == 500
    assert c.get_watermark_offsets(ck.TopicPartition("ck", 0), timeout=10) == (0, 1000)
    c.close()

    for f in admin.delete_topics(["ck"]).values():
        assert f.result() is None
    assert "ck" not in admin.list_topics(timeout=10).topics


# --- kafka-python and aiokafka -------------------------------------------------------------------


def test_kafka_python_default_idempotent_producer_and_consumer(server):
    kafka = pytest.importorskip("kafka")
    p = kafka.KafkaProducer(bootstrap_servers=server.bootstrap, acks="all")
    futs = [p.send("kp", key=b"k", value=b"v%d" % i, headers=[("h", b"x")]) for i in range(500)]
    p.flush(scaled(20))
    assert [f.get(scaled(10)).offset for f in futs] == list(range(500))
    p.close()
    # Until all 500 came; the idle timeout only ends a failure (3 s of nothing is
    # not the end on a busy machine).
    c = kafka.KafkaConsumer(bootstrap_servers=server.bootstrap, consumer_timeout_ms=int(scaled(30) * 1000),
                            enable_auto_commit=False, group_id=None)
    c.assign([kafka.TopicPartition("kp", 0)])
    c.seek_to_beginning()
    msgs = []
    for m in c:
        msgs.append(m)
        if len(msgs) == 500:
            break
    c.close()
    assert [m.value for m in msgs] == [b"v%d" % i for i in range(500)]
    assert msgs[0].headers == [("h", b"x")]


def test_aiokafka_produce_and_consume(server):
    aiokafka = pytest.importorskip("aiokafka")

    async def main():
        p = aiokafka.AIOKafkaProducer(bootstrap_servers=server.bootstrap, compression_type="gzip")
        await p.start()
        try:
            for i in range(300):
                await p.send("ak", b"a%d" % i, key=b"k")
            await p.flush()
        finally:
            await p.stop()
        c = aiokafka.AIOKafkaConsumer(bootstrap_servers=server.bootstrap, enable_auto_commit=False,
                                      group_id=None, auto_offset_reset="earliest")
        await c.start()
        try:
            c.assign([aiokafka.TopicPartition("ak", 0)])
            await c.seek_to_beginning()
            got = []
            deadline = time.monotonic() + scaled(20)
            while len(got) < 300 and time.monotonic() < deadline:
                for msgs in (await c.getmany(timeout_ms=500)).values():
                    got.extend(m.value for m in msgs)
        finally:
            await c.stop()
        return got

    assert asyncio.run(main()) == [b"a%d" % i for i in range(300)]


# --- long poll latency -------------------------------------------------------------------------------


def test_waiting_consumer_gets_a_record_within_milliseconds(server):
    """A Fetch waiting with max_wait 10 s is answered by the append, not the timeout."""
    conn = Conn(server.port)
    try:
        cls = request_class(3, 12)
        m = __import__("sys").modules[cls.__module__]
        conn.call(cls(topics=(m.MetadataRequestTopic(topic_id=None, name="lp"),),
                      allow_auto_topic_creation=True, include_topic_authorized_operations=False))
        fcls = request_class(1, 12)
        fm = __import__("sys").modules[fcls.__module__]
        fetch = fcls(max_wait=ms(10_000), min_bytes=1, max_bytes=1 << 20, isolation_level=0, session_id=0,
                     session_epoch=-1, topics=(fm.FetchTopic(topic="lp", partitions=(fm.FetchPartition(
                         partition=0, fetch_offset=0, partition_max_bytes=1 << 20),)),),
                     forgotten_topics_data=(), rack_id="")
        lat = []
        for i in range(5):
            fetch = dataclasses.replace(fetch, topics=(fm.FetchTopic(topic="lp", partitions=(fm.FetchPartition(
                partition=0, fetch_offset=i, partition_max_bytes=1 << 20),)),))
            conn.send(request_frame(fetch, 10 + i))
            time.sleep(0.2)  # the fetch is parked by now
            prod = Conn(server.port)
            pcls = request_class(0, 9)
            pm = __import__("sys").modules[pcls.__module__]
            t0 = time.monotonic()
            prod.call(pcls(transactional_id=None, acks=1, timeout=ms(1000), topic_data=(pm.TopicProduceData(
                name="lp", partition_data=(pm.PartitionProduceData(index=0, records=encode_batch([b"x"])),)),)))
            frame = conn.recv_frame()
            lat.append(time.monotonic() - t0)
            prod.close()
            assert struct.unpack_from(">i", frame)[0] == 10 + i
        # The median: one round trip descheduled on a busy machine is not the rule.
        assert sorted(lat)[len(lat) // 2] < scaled(0.1), lat  # far under max_wait (10 s)
    finally:
        conn.close()


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [
    b"\x00\x00\x00\x08" + b"\xde\xad\xbe\xef" * 2,  # unknown api key
    struct.pack(">i", 2**31 - 1) + b"x" * 100,  # absurd length
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # not Kafka at all
    struct.pack(">ihhi", 100, 0, 9, 1) + b"\x00",  # truncated request (length says more)
])
def test_bad_input_closes_that_client_and_server_keeps_serving(server, payload):
    bad = Conn(server.port, timeout=5)
    good = Conn(server.port)
    try:
        bad.send(payload)
        if payload.startswith(struct.pack(">ihhi", 100, 0, 9, 1)):
            bad.sock.shutdown(socket.SHUT_WR)  # a truncated frame: the peer gives up
        assert bad.closed_by_peer()
        resp = good.call(request_class(18, 3)(client_software_name="t", client_software_version="1"))
        assert resp.error_code == 0
    finally:
        bad.close()
        good.close()
    assert server.alive()


def test_refused_batch_stores_nothing(server):
    conn = Conn(server.port)
    try:
        cls = request_class(0, 9)
        m = __import__("sys").modules[cls.__module__]
        conn.call(request_class(3, 12)(topics=(request_class(3, 12, "MetadataRequestTopic")(
            topic_id=None, name="refused"),), allow_auto_topic_creation=True,
            include_topic_authorized_operations=False))
        good = encode_batch([b"ok"])
        bad = bytearray(encode_batch([b"evil"] * 3))
        bad[70] ^= 1
        r = conn.call(cls(transactional_id=None, acks=1, timeout=ms(1000), topic_data=(m.TopicProduceData(
            name="refused", partition_data=(m.PartitionProduceData(index=0, records=good + bytes(bad)),)),)))
        assert r.responses[0].partition_responses[0].error_code == 2  # CORRUPT_MESSAGE
        lo = request_class(2, 6)
        lm = __import__("sys").modules[lo.__module__]
        r = conn.call(lo(replica_id=-1, isolation_level=0, topics=(lm.ListOffsetsTopic(
            name="refused", partitions=(lm.ListOffsetsPartition(partition_index=0, timestamp=-1),)),)))
        assert r.topics[0].partitions[0].offset == 0
    finally:
        conn.close()


# --- durability ------------------------------------------------------------------------------------


def test_fsync_always_acks_after_group_commit_and_restart_keeps_data(tmp_path):
    ck = pytest.importorskip("confluent_kafka")
    # Imported here: ``confluent_kafka.admin`` is an attribute of the package only
    # once some code imported it, which depends on the order tests run in.
    from confluent_kafka.admin import AdminClient, NewTopic

    data = str(tmp_path / "data")
    s = ServeProcess(data, "--fsync", "always", "--no-auto-create")
    try:
        admin = AdminClient({"bootstrap.servers": s.bootstrap})
        admin.create_topics([NewTopic("dur", num_partitions=1, replication_factor=1)])["dur"].result()
        p = ck.Producer({"bootstrap.servers": s.bootstrap, "acks": "all", "linger.ms": 1})
        for i in range(2000):
            p.produce("dur", b"r%d" % i)
        assert p.flush(30) == 0
        md = admin.list_topics("nope", timeout=10)  # --no-auto-create
        assert md.topics["nope"].error is not None
    finally:
        assert s.stop() == 0, s.stderr_text()
    s = ServeProcess(data)
    try:
        c = ck.Consumer({"bootstrap.servers": s.bootstrap, "group.id": "unused"})
        assert c.get_watermark_offsets(ck.TopicPartition("dur", 0), timeout=10) == (0, 2000)
        c.close()
    finally:
        assert s.stop() == 0

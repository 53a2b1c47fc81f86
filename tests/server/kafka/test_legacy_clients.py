"""Old clients against a real ``umlog serve``: kafka-python with ``api_version=(0, 10)``
(Produce v2 / Fetch v2: magic 1) and ``(0, 9)`` (Produce v1 / Fetch v1: magic 0,
ListOffsets v0), producing and consuming, with the data also read by a modern
client (confluent-kafka, RecordBatch v2) and the other way round. kafka-python
has gzip here, and snappy through cramjam (``native/codec_shims.py``); its old
message format reader has no lz4 without the lz4 and xxhash packages, which
the test extras do not have (the native tests cover lz4 both ways)."""

from __future__ import annotations

import uuid
import warnings

import pytest
from helpers import scaled

from .serve_process import ServeProcess

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

confluent_kafka = pytest.importorskip("confluent_kafka")

OLD = [(0, 10), (0, 9)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ServeProcess(str(tmp_path_factory.mktemp("legacy") / "data"))
    yield s
    s.stop()


def topic_name() -> str:
    return f"legacy-{uuid.uuid4().hex[:10]}"


def old_produce(bootstrap: str, api_version, topic: str, n: int, compression=None) -> None:
    p = KafkaProducer(bootstrap_servers=bootstrap, api_version=api_version, compression_type=compression,
                      linger_ms=5, request_timeout_ms=int(scaled(30) * 1000))
    futures = [p.send(topic, key=None if i % 3 == 0 else b"k%d" % i, value=b"v%d" % i, partition=0)
               for i in range(n)]
    p.flush(scaled(30))
    assert [f.get(scaled(30)).offset for f in futures] == list(range(n))
    p.close()


def old_consume(bootstrap: str, api_version, topic: str, n: int) -> list:
    c = KafkaConsumer(bootstrap_servers=bootstrap, api_version=api_version, enable_auto_commit=False,
                      auto_offset_reset="earliest", consumer_timeout_ms=int(scaled(30) * 1000))
    c.assign([TopicPartition(topic, 0)])
    got = []
    for m in c:  # ends by count; the timeout only bounds a failure
        got.append(m)
        if len(got) == n:
            break
    c.close()
    return got


def modern_consume(bootstrap: str, topic: str, n: int) -> list:
    c = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": f"g-{topic}",
                                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    c.assign([confluent_kafka.TopicPartition(topic, 0, 0)])
    got = []
    import time

    deadline = time.monotonic() + scaled(30)
    while len(got) < n and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is not None and m.error() is None:
            got.append(m)
    c.close()
    return got


@pytest.mark.parametrize("api_version", OLD)
@pytest.mark.parametrize("compression", [None, "gzip"])
def test_old_producer_read_by_old_and_modern_consumers(server, api_version, compression):
    topic = topic_name()
    old_produce(server.bootstrap, api_version, topic, 25, compression)
    want = [(None if i % 3 == 0 else b"k%d" % i, b"v%d" % i) for i in range(25)]
    for reader in OLD:
        got = old_consume(server.bootstrap, reader, topic, 25)
        assert [(m.offset, m.key, m.value) for m in got] == [(i, k, v) for i, (k, v) in enumerate(want)]
    modern = modern_consume(server.bootstrap, topic, 25)
    assert [(m.offset(), m.key(), m.value()) for m in modern] == [(i, k, v) for i, (k, v) in enumerate(want)]
    if api_version == (0, 10):  # magic 1 carries the producer's timestamps
        assert all(m.timestamp()[1] > 0 for m in modern)
    else:  # magic 0 has none: stored as -1, as Kafka does
        assert all(m.timestamp()[1] == -1 or m.timestamp()[0] == 0 for m in modern)


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "zstd"])  # zstd: sent uncompressed to old clients
def test_modern_producer_read_by_old_consumers(server, codec):
    from native.codec_shims import kafka_codecs

    topic = topic_name()
    p = confluent_kafka.Producer({"bootstrap.servers": server.bootstrap, "compression.type": codec,
                                  "linger.ms": 5})
    for i in range(30):
        p.produce(topic, value=b"m%d" % i, key=b"k%d" % (i % 4), partition=0, timestamp=1_700_000_000_000 + i,
                  headers=[("dropped", b"for old clients")])
    assert p.flush(scaled(30)) == 0
    for api_version in OLD:
        with kafka_codecs():
            got = old_consume(server.bootstrap, api_version, topic, 30)
        assert [(m.offset, m.key, m.value) for m in got] == [(i, b"k%d" % (i % 4), b"m%d" % i) for i in range(30)]
        if api_version == (0, 10):
            assert [m.timestamp for m in got] == [1_700_000_000_000 + i for i in range(30)]
            assert all(not m.headers for m in got)


def test_old_consumer_group_commits_are_seen_by_a_modern_client(server):
    topic = topic_name()
    old_produce(server.bootstrap, (0, 10), topic, 10)
    group = f"old-{topic}"
    c = KafkaConsumer(bootstrap_servers=server.bootstrap, api_version=(0, 10), group_id=group,
                      enable_auto_commit=False)
    from kafka.structs import OffsetAndMetadata

    c.commit({TopicPartition(topic, 0): OffsetAndMetadata(7, "", -1)})
    c.close()
    m = confluent_kafka.Consumer({"bootstrap.servers": server.bootstrap, "group.id": group})
    (tp,) = m.committed([confluent_kafka.TopicPartition(topic, 0)], timeout=scaled(30))
    m.close()
    assert tp.offset == 7

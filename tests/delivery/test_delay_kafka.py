"""Delayed delivery through the Kafka door: confluent-kafka produces a record with
``umlog-delay-ms`` in a batch with plain ones; a consumer gets the plain ones at
once, stepping over the gap, and the delayed one only once it is due."""

from __future__ import annotations

import time

import pytest
from helpers import scaled
from server.kafka.serve_process import ServeProcess

import umlog

ck = pytest.importorskip("confluent_kafka")

DELAY_MS = 1500


@pytest.fixture
def server(tmp_path):
    data = str(tmp_path / "data")
    with umlog.open(data) as b:
        b.create_topic("d", partitions=1)
    s = ServeProcess(data)
    yield s
    s.stop()


def test_a_delayed_record_is_consumed_only_once_due(server):
    p = ck.Producer({"bootstrap.servers": server.bootstrap, "enable.idempotence": True, "acks": "all",
                     "linger.ms": 50, "compression.type": "lz4"})
    t0 = time.time()
    p.produce("d", b"plain-1", partition=0)
    p.produce("d", b"late", key=b"k", partition=0, headers=[("umlog-delay-ms", b"%d" % DELAY_MS), ("x", b"1")])
    p.produce("d", b"plain-2", partition=0)
    assert p.flush(scaled(30)) == 0
    c = ck.Consumer({"bootstrap.servers": server.bootstrap, "group.id": "g", "enable.auto.commit": False,
                     "auto.offset.reset": "earliest"})
    c.assign([ck.TopicPartition("d", 0, 0)])
    got = []
    deadline = time.monotonic() + scaled(30)
    try:
        while len(got) < 3 and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            assert m.error() is None, m.error()
            got.append((m.offset(), m.value(), m.key(), m.headers(), time.time()))
    finally:
        c.close()
    assert [(o, v) for o, v, *_ in got] == [(0, b"plain-1"), (2, b"plain-2"), (3, b"late")]
    _, _, key, headers, seen = got[2]
    assert key == b"k" and headers == [("x", b"1")]
    assert seen >= t0 + DELAY_MS / 1000


def test_a_malformed_delay_is_invalid_record(server):
    p = ck.Producer({"bootstrap.servers": server.bootstrap, "acks": "all", "retries": 0})
    errors = []
    p.produce("d", b"bad", partition=0, headers=[("umlog-delay-ms", b"soon")],
              on_delivery=lambda err, msg: errors.append(err))
    assert p.flush(scaled(30)) == 0
    assert errors and errors[0] is not None and errors[0].code() == ck.KafkaError.INVALID_RECORD

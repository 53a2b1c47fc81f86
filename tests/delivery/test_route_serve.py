"""Routing rules in a real ``umlog serve --config``: a Kafka producer writes the
source, a Kafka consumer reads the targets; SIGKILL of the server while records
flow, then a restart: every match is on its target once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from helpers import scaled, subprocess_env, wait_until
from server.kafka.serve_process import ServeProcess

import umlog

pytestmark = pytest.mark.clients

CONFIG = """
[[route]]
name = "eu-orders"
from = "orders"
to = "orders-eu"
when = "value.region == 'eu'"
start = "earliest"

[[route]]
from = "orders"
to = "refunds"
when = "headers.type == 'refund' && value.n > `0`"
start = "earliest"
checkpoint_records = 1000000
checkpoint_ms = 600000
"""


def record(i: int) -> tuple[bytes, bytes, list]:
    value = json.dumps({"n": i, "region": ("eu", "us", "apac")[i % 3]}).encode()
    return b"c%d" % (i % 17), value, [("type", b"refund" if i % 5 == 0 else b"order")]


def matches(value: bytes, headers) -> dict[str, bool]:
    v = json.loads(value)
    h = dict(headers or ())
    return {"orders-eu": v["region"] == "eu", "refunds": h.get("type") == b"refund" and v["n"] > 0}


def produce(bootstrap: str, start: int, stop: threading.Event, produced: list, limit: int) -> None:
    import confluent_kafka as ck

    p = ck.Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                     "linger.ms": 2, "message.timeout.ms": int(scaled(30) * 1000)})
    i = start
    while not stop.is_set() and i < start + limit:
        key, value, headers = record(i)
        try:
            p.produce("orders", value=value, key=key, headers=headers, partition=i % 3, timestamp=1_000_000 + i)
        except BufferError:
            p.poll(0.01)
            continue
        i += 1
        if i % 20 == 0:
            p.poll(0)
            time.sleep(0.002)  # pacing: records keep flowing while the server is killed
    if stop.is_set():
        p.purge()
        p.flush(0)
    else:
        assert p.flush(scaled(30)) == 0
    produced.append(i)


def kafka_read(bootstrap: str, topic: str, want: int) -> list:
    import confluent_kafka as ck

    c = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": "reader", "enable.auto.commit": False,
                     "auto.offset.reset": "earliest"})
    md = c.list_topics(topic, timeout=scaled(10))
    c.assign([ck.TopicPartition(topic, i, 0) for i in md.topics[topic].partitions])
    out = []
    deadline = time.monotonic() + scaled(30)
    while len(out) < want and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is None or m.error():
            continue
        out.append((m.partition(), m.key(), m.value(), tuple(m.headers() or ()), m.timestamp()[1]))
    c.close()
    return out


def source_records(data: str) -> list:
    b = umlog.open(data, readonly=True)
    try:
        return [r for p in b.topic("orders").partitions for r in p.read(0)]
    finally:
        b.close()


def target_size(data: str, topic: str) -> int:
    b = umlog.open(data, readonly=True)
    try:
        return sum(p.end_offset for p in b.topic(topic).partitions)
    except KeyError:
        return 0
    finally:
        b.close()


def test_routes_survive_sigkill_of_the_server(tmp_path):
    pytest.importorskip("confluent_kafka")
    data = str(tmp_path / "data")
    with umlog.open(data) as b:
        b.create_topic("orders", partitions=3)
        b.create_topic("orders-eu", partitions=3)
    cfg = tmp_path / "umlog.toml"
    cfg.write_text(CONFIG)

    s = ServeProcess(data, "--config", str(cfg))
    stop, produced = threading.Event(), []
    t = threading.Thread(target=produce, args=(s.bootstrap, 0, stop, produced, 1_000_000), daemon=True)
    t.start()
    try:
        # Kill while records flow and routes are mid-way (refunds has no checkpoint past its first).
        wait_until(lambda: target_size(data, "refunds") >= 200 and target_size(data, "orders-eu") >= 500, 30,
                   "routing under way")
        s.proc.kill()
        s.proc.wait()
    finally:
        stop.set()
        t.join(scaled(30))
        s.stop()
    assert not t.is_alive()

    s = ServeProcess(data, "--config", str(cfg))
    try:
        produce(s.bootstrap, produced[0] + 1_000, threading.Event(), [], 3_000)
        src = source_records(data)
        want = {"orders-eu": [], "refunds": []}
        for r in src:
            for topic, ok in matches(r.value, r.headers).items():
                if ok:
                    want[topic].append((r.key, r.value, tuple(r.headers), r.timestamp))
        assert len(want["refunds"]) > 200
        for topic, expected in want.items():
            wait_until(lambda topic=topic, expected=expected: target_size(data, topic) >= len(expected), 30,
                       f"{topic} caught up")
            got = kafka_read(s.bootstrap, topic, len(expected))
            assert sorted((k, v, h, ts) for _, k, v, h, ts in got) == sorted(expected), topic
            assert target_size(data, topic) == len(expected), f"{topic} holds a record twice"
        # Same partition count: the source's partition number is kept.
        for p, _, v, _, _ in kafka_read(s.bootstrap, "orders-eu", len(want["orders-eu"])):
            assert json.loads(v)["n"] % 3 == p
    finally:
        assert s.stop() == 0, s.stderr_text()
    assert "Traceback" not in s.stderr_text(), s.stderr_text()


@pytest.mark.parametrize("body, message", [
    ('[[route]]\nfrom = "a"\nto = "b"\nwhen = "value.region =="\n', "bad condition"),
    ('[[route]]\nfrom = "a"\nto = "a"\n', "to itself"),
    ('[[route]]\nfrom = "a"\nto = "b"\n[[route]]\nfrom = "b"\nto = "a"\n', "cycle"),
    ('[[route]]\nfrom = "a"\nto = "b"\ncolour = "red"\n', "unknown key route.colour"),
    ('[[route]]\nfrom = "a"\n', "route.to is required"),
    ('[[route]]\nfrom = "a"\nto = "b"\n[[route]]\nfrom = "a"\nto = "b"\n', "given twice"),
    ('[[route]]\nfrom = "a"\nto = "b"\nwhen = "nope(key)"\n', "unknown function"),
])
def test_a_bad_route_stops_serve_with_one_line(tmp_path, body, message):
    cfg = tmp_path / "umlog.toml"
    cfg.write_text(body)
    data = str(tmp_path / "data")
    res = subprocess.run([sys.executable, "-m", "umlog", "serve", "--data-dir", data, "--kafka", "127.0.0.1:0",
                          "--config", str(cfg)], capture_output=True, text=True, env=subprocess_env(),
                         cwd=str(tmp_path), timeout=scaled(60))
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert not os.path.exists(data)  # nothing opened

"""Delayed delivery through every door of ``umlog serve``: a record published
with ``umlog-delay-ms`` through the HTTP API, MQTT 5 (a user property) or AMQP
(an entry of the headers table) is stored for later, like one produced through
the Kafka door (``test_delay_kafka.py``): no consumer sees it before it is
due, then it appears once, without the delay header."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid

import pytest
from helpers import scaled, stop_paho, wait_until
from server.kafka.serve_process import ServeProcess

confluent_kafka = pytest.importorskip("confluent_kafka")
mqtt = pytest.importorskip("paho.mqtt.client")
pika = pytest.importorskip("pika")

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

DELAY_MS = int(scaled(2) * 1000)


@pytest.fixture
def server(tmp_path):
    s = ServeProcess(str(tmp_path / "data"), "--mqtt", "127.0.0.1:0", "--amqp", "127.0.0.1:0")
    yield s
    s.stop()


def via_http(server, tag: str) -> tuple[str, bytes]:
    topic = f"http-{tag}"
    admin = AdminClient({"bootstrap.servers": server.bootstrap})
    for f in admin.create_topics([NewTopic(topic, 1)]).values():
        f.result(scaled(30))
    host, port = server.addresses["http"]
    body = json.dumps({"value": "by http", "headers": {"umlog-delay-ms": str(DELAY_MS)}}).encode()
    req = urllib.request.Request(f"http://{host}:{port}/api/topics/{topic}/messages", body,
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=scaled(30)) as r:
        assert r.status == 200
    return topic, b"by http"


def via_mqtt(server, tag: str) -> tuple[str, bytes]:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"d-{tag}", protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", server.addresses["mqtt"][1], clean_start=True)
    c.loop_start()
    try:
        wait_until(c.is_connected, scaled(10), "paho connected")
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("umlog-delay-ms", str(DELAY_MS))]
        c.publish(f"delay/{tag}", b"by mqtt", 1, properties=props).wait_for_publish(scaled(10))
    finally:
        c.disconnect()
        stop_paho(c)
    return "mqtt-messages", b"by mqtt"


def via_amqp(server, tag: str) -> tuple[str, bytes]:
    host, port = server.addresses["amqp"]
    with pika.BlockingConnection(pika.ConnectionParameters(host, port)) as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.exchange_declare(f"amqp-{tag}", "fanout")
        ch.basic_publish(f"amqp-{tag}", "k", b"by amqp",
                         pika.BasicProperties(headers={"umlog-delay-ms": DELAY_MS, "keep": "me"}))
    return f"amqp-{tag}", b"by amqp"


@pytest.mark.parametrize("door", [via_http, via_mqtt, via_amqp], ids=["http", "mqtt", "amqp"])
def test_a_delayed_record_appears_once_due_through_every_door(server, door):
    tag = uuid.uuid4().hex[:8]
    t0 = time.monotonic()
    topic, value = door(server, tag)
    c = Consumer({"bootstrap.servers": server.bootstrap, "group.id": tag, "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])  # no group join: reading starts at once
        got: list = []

        def poll():
            m = c.poll(0.2)
            if m is not None and m.error() is None and m.value() == value:
                got.append((time.monotonic() - t0, m))
            return got

        wait_until(poll, scaled(30), "the delayed record")
        end = time.monotonic() + 0.5
        while time.monotonic() < end:  # and only once
            poll()
    finally:
        c.close()
    [(after, m)] = got
    assert after >= DELAY_MS / 1000, f"seen {after:.2f} s after the publish, the delay is {DELAY_MS} ms"
    names = [k for k, _ in m.headers() or []]
    assert "umlog-delay-ms" not in names, names


def test_amqp_delay_entries_leave_the_headers_table_and_the_rest_stays_byte_for_byte():
    from pamqp import encode

    from umlog.server.amqp.codec import lift_delay

    def entry(name: str, value) -> bytes:
        return encode.field_table({name: value})[4:]

    before, after = entry("a", 7) + entry("t", {"k": [1, "x"]}), entry("z", "zz")
    table = before + entry("umlog-delay-ms", 1500) + after
    headers = [("content-type", b"text/plain"), ("amqp-headers", table)]
    assert lift_delay(headers, table) == [("content-type", b"text/plain"), ("amqp-headers", before + after),
                                          ("umlog-delay-ms", b"1500")]
    only = entry("umlog-deliver-at", "1700000000000")
    assert lift_delay([("amqp-headers", only)], only) == [("umlog-deliver-at", b"1700000000000")]
    plain = entry("a", 1)
    assert lift_delay([("amqp-headers", plain)], plain) == [("amqp-headers", plain)]

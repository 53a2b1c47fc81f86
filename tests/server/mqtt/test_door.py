"""The MQTT door against real clients (paho-mqtt 3.1.1 and 5, mosquitto_pub and
mosquitto_sub, kcat and confluent-kafka on the Kafka door) and a real
``umlog serve``: one log under both doors."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import uuid

import paho.mqtt.client as mqtt
import pytest
from confluent_kafka import Consumer, Producer
from helpers import require_tool, scaled, stop_paho, wait_until
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from server.kafka.serve_process import ServeProcess
from umlog.server.mqtt.codec import (
    Connack,
    Connect,
    PacketReader,
    Publish,
    Suback,
    Subscribe,
    Subscription,
    Will,
    encode,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ServeProcess(str(tmp_path_factory.mktemp("mqtt") / "data"), "--mqtt", "127.0.0.1:0")
    yield s
    s.stop()


def port(server) -> int:
    return server.addresses["mqtt"][1]


class Client:
    """A paho client that records what it gets, connected and looping."""

    def __init__(self, server, protocol=mqtt.MQTTv311, client_id=None, clean=True, will=None, keepalive=30,
                 props=None):
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or uuid.uuid4().hex[:12],
                             protocol=protocol, clean_session=clean if protocol != mqtt.MQTTv5 else None)
        self.messages: list = []
        self.lock = threading.Lock()
        self.subscribed: list = []
        self.disconnects: list = []
        self.c.on_message = lambda c, u, m: self.messages.append(m)
        self.c.on_subscribe = lambda c, u, mid, reasons, props: self.subscribed.append(reasons)
        self.c.on_disconnect = lambda c, u, flags, reason, props: self.disconnects.append(reason)
        if will:
            self.c.will_set(*will)
        kw = {"clean_start": True, "properties": props} if protocol == mqtt.MQTTv5 else {}
        self.c.connect("127.0.0.1", port(server), keepalive=keepalive, **kw)
        self.c.loop_start()
        wait_until(self.c.is_connected, scaled(10), "paho connected")

    def subscribe(self, *subs):
        n = len(self.subscribed)
        self.c.subscribe(list(subs))
        wait_until(lambda: len(self.subscribed) > n, scaled(10), "SUBACK")
        return self.subscribed[-1]

    def wait(self, n, what="messages"):
        wait_until(lambda: len(self.messages) >= n, scaled(10), what)
        return self.messages

    def close(self):
        self.c.disconnect()
        stop_paho(self.c)


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5])
def test_publish_and_subscribe_with_wildcards_at_every_qos(server, protocol):
    tag = uuid.uuid4().hex[:6]
    sub = Client(server, protocol)
    pub = Client(server, protocol)
    try:
        sub.subscribe((f"{tag}/+/temp", 2), (f"{tag}/#", 0))
        for qos in (0, 1, 2):
            pub.c.publish(f"{tag}/hall/temp", b"t%d" % qos, qos).wait_for_publish(scaled(10))
        pub.c.publish(f"{tag}/hall/humidity", b"h", 1).wait_for_publish(scaled(10))
        got = sub.wait(4)
        # One delivery per message however many filters match, at the best QoS of those filters
        # (sorted: paho reports a QoS 2 message at PUBREL, after later ones).
        assert sorted((m.topic, m.payload, m.qos) for m in got) == [
            (f"{tag}/hall/humidity", b"h", 0), (f"{tag}/hall/temp", b"t0", 0), (f"{tag}/hall/temp", b"t1", 1),
            (f"{tag}/hall/temp", b"t2", 2)]
    finally:
        sub.close()
        pub.close()


def test_mqtt5_properties_reach_the_log_and_come_back(server):
    tag = uuid.uuid4().hex[:6]
    sub = Client(server, mqtt.MQTTv5)
    pub = Client(server, mqtt.MQTTv5)
    try:
        sub.subscribe((f"{tag}/req", 1))
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("trace", "abc")]
        props.ContentType = "application/json"
        props.ResponseTopic = f"{tag}/reply"
        props.CorrelationData = b"\x00\x01"
        props.MessageExpiryInterval = 3600
        pub.c.publish(f"{tag}/req", b'{"n": 1}', 1, properties=props).wait_for_publish(scaled(10))
        (m,) = sub.wait(1)
        p = m.properties
        assert (p.UserProperty, p.ContentType, p.ResponseTopic, p.CorrelationData) == (
            [("trace", "abc")], "application/json", f"{tag}/reply", b"\x00\x01")
        assert 3500 < p.MessageExpiryInterval <= 3600
    finally:
        sub.close()
        pub.close()
    # The record in the log: key = topic name, headers = properties.
    c = Consumer({"bootstrap.servers": server.bootstrap, "group.id": tag, "auto.offset.reset": "earliest"})
    try:
        c.subscribe(["mqtt-messages"])
        found = []

        def poll():
            m = c.poll(0.2)
            if m is not None and m.error() is None and m.key() == f"{tag}/req".encode():
                found.append(m)
            return found

        wait_until(poll, scaled(30), "the record through the Kafka door")
        h = dict(found[0].headers())
        assert found[0].value() == b'{"n": 1}'
        assert (h["trace"], h["content-type"], h["mqtt-qos"], h["umlog-ttl-ms"]) == (
            b"abc", b"application/json", b"1", b"3600000")
    finally:
        c.close()


def test_a_kafka_produce_reaches_an_mqtt_subscriber(server, kcat_bin):
    tag = uuid.uuid4().hex[:6]
    sub = Client(server)
    try:
        sub.subscribe((f"{tag}/+/temp", 1))
        subprocess.run([kcat_bin, "-b", server.bootstrap, "-P", "-t", "mqtt-messages", "-K", "|"],
                       input=f"{tag}/hall/temp|21.5\n{tag}/hall/door|open\n".encode(), check=True, timeout=scaled(30))
        p = Producer({"bootstrap.servers": server.bootstrap})
        p.produce("mqtt-messages", b"22.0", key=f"{tag}/attic/temp".encode())
        p.flush(scaled(10))
        got = sub.wait(2)
        assert sorted((m.topic, m.payload, m.qos) for m in got) == [
            (f"{tag}/attic/temp", b"22.0", 1), (f"{tag}/hall/temp", b"21.5", 1)]
    finally:
        sub.close()


def test_mosquitto_clients(server):
    pub_bin = require_tool(shutil.which("mosquitto_pub"), "mosquitto_pub", "apt-get install mosquitto-clients")
    sub_bin = require_tool(shutil.which("mosquitto_sub"), "mosquitto_sub", "apt-get install mosquitto-clients")
    tag = uuid.uuid4().hex[:6]
    for version in ("mqttv311", "mqttv5"):
        ready = f"{tag}/{version}/ready"
        # A retained message first: mosquitto_sub's first line says it is subscribed.
        subprocess.run([pub_bin, "-h", "127.0.0.1", "-p", str(port(server)), "-V", version, "-t", ready, "-m", "r",
                        "-r", "-q", "1"], check=True, timeout=scaled(20))
        sub = subprocess.Popen([sub_bin, "-h", "127.0.0.1", "-p", str(port(server)), "-V", version, "-t",
                                f"{tag}/{version}/#", "-C", "4", "-v", "-q", "2", "-W", str(int(scaled(20)))],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert sub.stdout.readline().strip() == f"{ready} r"
            for i in range(3):
                subprocess.run([pub_bin, "-h", "127.0.0.1", "-p", str(port(server)), "-V", version, "-t",
                                f"{tag}/{version}/{i}", "-m", f"m{i}", "-q", str(i)], check=True,
                               timeout=scaled(20))
            out, err = sub.communicate(timeout=scaled(30))
        finally:
            sub.kill()
            sub.wait()
        assert sub.returncode == 0, err
        assert out.splitlines() == [f"{tag}/{version}/{i} m{i}" for i in range(3)]


def test_retained_messages_survive_a_restart(tmp_path):
    s = ServeProcess(str(tmp_path / "data"), "--mqtt", "127.0.0.1:0")
    try:
        pub = Client(s)
        pub.c.publish("home/hall/temp", b"21", 1, retain=True).wait_for_publish(scaled(10))
        pub.c.publish("home/attic/temp", b"18", 1, retain=True).wait_for_publish(scaled(10))
        pub.c.publish("home/attic/temp", b"", 1, retain=True).wait_for_publish(scaled(10))  # deletes
        pub.close()
    finally:
        assert s.stop() == 0
    s = ServeProcess(str(tmp_path / "data"), "--mqtt", "127.0.0.1:0")
    try:
        sub = Client(s)
        sub.subscribe(("home/+/temp", 1))
        (m,) = sub.wait(1, "the retained message")
        assert (m.topic, m.payload, m.retain) == ("home/hall/temp", b"21", True)
        sub.close()
    finally:
        s.stop()


def test_a_will_is_published_when_a_client_vanishes_not_on_disconnect(server):
    tag = uuid.uuid4().hex[:6]
    watcher = Client(server)
    try:
        watcher.subscribe((f"{tag}/will/#", 1))
        polite = Client(server, will=(f"{tag}/will/polite", b"gone", 1))
        polite.close()
        rude = socket.create_connection(("127.0.0.1", port(server)))
        rude.sendall(encode(Connect("rude-" + tag, will=Will(f"{tag}/will/rude", b"vanished", 1))))
        rude.settimeout(scaled(10))
        r = PacketReader()
        r.feed(rude.recv(4))
        assert isinstance(next(r.packets()), Connack)
        rude.close()  # no DISCONNECT
        (m,) = watcher.wait(1, "the will")
        assert (m.topic, m.payload) == (f"{tag}/will/rude", b"vanished")
    finally:
        watcher.close()


def closed_by_server(s: socket.socket) -> bytes:
    """Read until the server closes; what it said before closing."""
    s.settimeout(scaled(10))
    said = b""
    while chunk := s.recv(4096):
        said += chunk
    s.close()
    return said


def test_garbage_closes_that_connection_only(server):
    tag = uuid.uuid4().hex[:6]
    sub = Client(server, mqtt.MQTTv5)
    try:
        sub.subscribe((f"{tag}/x", 0))
        for junk in (b"\xff\xff\xff\xff\xff", b"\x10\x02\x00\x00", encode(Publish("a", b"x"))):
            s = socket.create_connection(("127.0.0.1", port(server)))
            s.sendall(junk)
            closed_by_server(s)
        pub = Client(server, mqtt.MQTTv5)
        pub.c.publish(f"{tag}/x", b"still here", 0)
        (m,) = sub.wait(1)
        assert m.payload == b"still here"
        pub.close()
    finally:
        sub.close()


def test_bad_filters_fail_in_suback_and_the_others_are_granted(server):
    # paho refuses a bad filter itself: this one is sent with the codec.
    for version, expected in ((5, [0x8F, 1, 1]), (4, [0x80, 1, 1])):
        s = socket.create_connection(("127.0.0.1", port(server)))
        s.settimeout(scaled(10))
        r = PacketReader(version=version)
        s.sendall(encode(Connect("", version=version), version)
                  + encode(Subscribe(7, [Subscription("a/#/b"), Subscription("$share/g/a", 1),
                                         Subscription("ok/+", 1)]), version))
        got = []
        while len(got) < 2:
            r.feed(s.recv(4096))
            got += list(r.packets())
        s.close()
        assert isinstance(got[0], Connack) and got[0].reason == 0
        if version == 5:
            assert got[0].properties["shared_subscription_available"] == 1
        assert got[1] == Suback(7, expected)


def test_the_same_client_id_takes_the_session_over(server):
    cid = "twin-" + uuid.uuid4().hex[:6]
    a = Client(server, mqtt.MQTTv5, client_id=cid)
    b = Client(server, mqtt.MQTTv5, client_id=cid)
    try:
        wait_until(lambda: a.disconnects, scaled(10), "the first connection closed")
        assert a.disconnects[0].value == 0x8E  # session taken over
        assert b.c.is_connected()
    finally:
        stop_paho(a.c)
        b.close()


def test_keep_alive_closes_a_silent_client(server):
    s = socket.create_connection(("127.0.0.1", port(server)))
    s.sendall(encode(Connect("silent-" + uuid.uuid4().hex[:6], keep_alive=1)))
    # CONNACK, then 1.5 x 1 s of silence, then closed.
    assert closed_by_server(s) == encode(Connack())

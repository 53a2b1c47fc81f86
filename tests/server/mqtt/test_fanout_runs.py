"""The fan-out hands the records of one read on one topic out as one run per
subscriber (``MqttConnection.send_run``): each message of a run must still get
what it would get alone — no-local, the client's Receive Maximum and Maximum
Packet Size, the order of the log. And each message reaches exactly the
subscribers whose filters match it, found by name for exact filters."""

from __future__ import annotations

import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from server.kafka.serve_process import ServeProcess
from server.mqtt.mqtt_clients import Raw
from server.mqtt.test_door import Client
from umlog.server.mqtt.codec import Publish, Suback, Subscribe, Subscription, Unsuback, Unsubscribe


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ServeProcess(str(tmp_path_factory.mktemp("mqtt") / "data"), "--mqtt", "127.0.0.1:0")
    yield s
    s.stop()


def test_a_burst_on_one_topic_keeps_no_local_the_window_and_the_packet_limit(server):
    topic = f"{uuid.uuid4().hex[:6]}/burst"
    props = Properties(PacketTypes.CONNECT)
    props.ReceiveMaximum = 3
    props.MaximumPacketSize = 300
    sub = Client(server, mqtt.MQTTv5, props=props)
    pub = Client(server, mqtt.MQTTv5)
    try:
        sub.subscribe((topic, SubscribeOptions(qos=1, noLocal=True)))
        expected = []
        sent = []
        for i in range(300):
            big = i % 10 == 0  # over the subscriber's Maximum Packet Size: never sent to it
            payload = b"P%03d" % i + b"x" * 400 if big else b"p%03d" % i
            sent.append(pub.c.publish(topic, payload, 1))
            if not big:
                expected.append(payload)
            if i % 3 == 0:  # its own messages, in the same reads: no-local drops them
                sent.append(sub.c.publish(topic, b"own%03d" % i, 1))
        for m in sent:
            m.wait_for_publish(10)
        got = sub.wait(len(expected))
        assert [m.payload for m in got] == expected
        assert {m.qos for m in got} == {1}
    finally:
        sub.close()
        pub.close()


def test_exact_filters_are_looked_up_by_name_and_wildcards_matched(server):
    """The fan-out finds a topic name's subscribers among the filters without
    wildcards by name and matches only the wildcard ones: each exact subscriber
    gets its own topic's message only (two subscribers of one name both get
    it), the wildcard ones get every match, and an unsubscribe or a new
    subscription takes effect for the next message."""
    tag = uuid.uuid4().hex[:6]
    address = server.addresses["mqtt"]
    n = 40

    def raw(name, *filters):
        c = Raw(address, f"{tag}-{name}")
        c.send(Subscribe(1, [Subscription(f) for f in filters]))
        assert isinstance(c.next(), Suback)
        return c

    exact = [raw(f"e{i}", f"{tag}/t{i}") for i in range(n)]
    twin = raw("twin", f"{tag}/t1")
    plus = raw("plus", f"{tag}/+")
    hash_ = raw("hash", f"{tag}/#")
    pub = Raw(address, f"{tag}-pub")
    clients = [*exact, twin, plus, hash_, pub]
    try:
        for i in range(n):
            pub.send(Publish(f"{tag}/t{i}", b"m%d" % i))
        pub.send(Publish(f"{tag}/t0/deeper", b"deep"))

        def take(c, count):
            return [(p.topic, p.payload) for p in (c.next() for _ in range(count))]

        for i, c in enumerate(exact):
            assert take(c, 1) == [(f"{tag}/t{i}", b"m%d" % i)]
        assert take(twin, 1) == [(f"{tag}/t1", b"m1")]
        assert take(plus, n) == [(f"{tag}/t{i}", b"m%d" % i) for i in range(n)]
        assert take(hash_, n + 1)[-1] == (f"{tag}/t0/deeper", b"deep")

        exact[2].send(Unsubscribe(2, [f"{tag}/t2"]))
        assert isinstance(exact[2].next(), Unsuback)
        exact[3].send(Subscribe(3, [Subscription(f"{tag}/t2")]))
        assert isinstance(exact[3].next(), Suback)
        pub.send(Publish(f"{tag}/t2", b"again"))
        pub.send(Publish(f"{tag}/t3", b"three"))
        assert take(exact[3], 2) == [(f"{tag}/t2", b"again"), (f"{tag}/t3", b"three")]
        assert take(plus, 2) == [(f"{tag}/t2", b"again"), (f"{tag}/t3", b"three")]
        exact[2].s.settimeout(0.5)  # nothing more comes to the one that left
        with pytest.raises(TimeoutError):
            exact[2].next()
        for c in (*exact[:2], *exact[4:], twin):
            assert not c.got
    finally:
        for c in clients:
            c.close()

"""MQTT 5 subscription identifiers with paho against a real ``umlog serve``: the
identifier given at SUBSCRIBE comes back on every message delivered for that
subscription (live, retained, shared, and after a restart of the server), one
copy per message carrying all the identifiers it matched."""

from __future__ import annotations

import uuid

import paho.mqtt.client as mqtt
import pytest
from helpers import scaled, stop_paho, wait_until
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from server.kafka.serve_process import ServeProcess
from server.mqtt.mqtt_clients import Paho, Raw
from umlog.server.mqtt.codec import Suback, Subscribe, Subscription


def serve(data_dir) -> ServeProcess:
    return ServeProcess(str(data_dir), "--mqtt", "127.0.0.1:0")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = serve(tmp_path_factory.mktemp("mqtt-sub-ids") / "data")
    yield s
    s.stop()


def subscribe(client: Paho, topic: str, sub_id: int | None, qos: int = 1) -> None:
    props = Properties(PacketTypes.SUBSCRIBE)
    if sub_id is not None:
        props.SubscriptionIdentifier = sub_id
    n = len(client.subscribed)
    client.c.subscribe([(topic, SubscribeOptions(qos=qos))], properties=props)
    wait_until(lambda: len(client.subscribed) > n, scaled(10), "SUBACK")
    assert not client.subscribed[-1][0].is_failure, client.subscribed[-1]


def ids(m) -> list[int]:
    return sorted(getattr(m.properties, "SubscriptionIdentifier", []))


def test_connack_does_not_say_they_are_unavailable(server):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    got = []
    c.on_connect = lambda c, u, flags, reason, props: got.append(props)
    c.connect(*server.addresses["mqtt"])
    c.loop_start()
    wait_until(lambda: got, scaled(10), "CONNACK")
    assert getattr(got[0], "SubscriptionIdentifierAvailable", 1) == 1
    c.disconnect()
    stop_paho(c)


def test_each_message_carries_the_identifiers_of_the_subscriptions_it_matched(server):
    tag = uuid.uuid4().hex[:6]
    sub = Paho(server.addresses["mqtt"], mqtt.MQTTv5)
    subscribe(sub, f"{tag}/a/#", 7)
    subscribe(sub, f"{tag}/+/x", 9)
    subscribe(sub, f"{tag}/plain", None)
    pub = Paho(server.addresses["mqtt"], mqtt.MQTTv5)
    pub.publish(f"{tag}/a/x", b"both")
    pub.publish(f"{tag}/a/y", b"seven")
    pub.publish(f"{tag}/b/x", b"nine")
    pub.publish(f"{tag}/plain", b"none")
    got = sub.wait(4)
    assert [(m.payload, ids(m)) for m in got] == [(b"both", [7, 9]), (b"seven", [7]), (b"nine", [9]),
                                                  (b"none", [])]
    # SUBSCRIBE again without an identifier: the subscription has none any more.
    subscribe(sub, f"{tag}/+/x", None)
    pub.publish(f"{tag}/b/x", b"no longer")
    got = sub.wait(5)
    assert (got[4].payload, ids(got[4])) == (b"no longer", [])
    sub.close()
    pub.close()


def test_retained_and_shared_messages_carry_their_identifier(server):
    tag = uuid.uuid4().hex[:6]
    pub = Paho(server.addresses["mqtt"], mqtt.MQTTv5)
    pub.publish(f"{tag}/r", b"retained", retain=True)
    sub = Paho(server.addresses["mqtt"], mqtt.MQTTv5)
    subscribe(sub, f"{tag}/r", 11)
    (m,) = sub.wait(1, "the retained message")
    assert (m.payload, m.retain, ids(m)) == (b"retained", True, [11])
    subscribe(sub, f"$share/g/{tag}/s", 12)
    pub.publish(f"{tag}/s", b"shared")
    got = sub.wait(2, "the shared message")
    assert (got[1].payload, ids(got[1])) == (b"shared", [12])
    sub.close()
    pub.close()


def test_identifiers_outlive_a_restart_in_the_session(tmp_path):
    s = serve(tmp_path / "data")
    tag = uuid.uuid4().hex[:6]
    cid = "ids-" + tag
    try:
        sub = Paho(s.addresses["mqtt"], mqtt.MQTTv5, cid, session=600)
        subscribe(sub, f"{tag}/#", 5)
        sub.close()
        assert s.stop() == 0
        s = serve(tmp_path / "data")
        back = Paho(s.addresses["mqtt"], mqtt.MQTTv5, cid, session=600)
        assert back.session_present
        pub = Paho(s.addresses["mqtt"], mqtt.MQTTv5)
        pub.publish(f"{tag}/x", b"after the restart")
        (m,) = back.wait(1)
        assert (m.payload, ids(m)) == (b"after the restart", [5])
        back.close()
        pub.close()
    finally:
        s.stop()


def test_a_message_resent_after_a_restart_carries_its_identifier(tmp_path):
    """Sent, not acknowledged, the server restarted: the resend (DUP), read
    again from the log, carries the identifier too."""
    s = serve(tmp_path / "data")
    tag = uuid.uuid4().hex[:6]
    cid = "ids-resend-" + tag
    props = {"session_expiry_interval": 600}
    try:
        c = Raw(s.addresses["mqtt"], cid, version=5, clean_start=False, properties=props)
        c.send(Subscribe(1, [Subscription(f"{tag}/#", 1)], {"subscription_identifier": [3]}))
        assert c.next() == Suback(1, [1])
        pub = Paho(s.addresses["mqtt"], mqtt.MQTTv5)
        pub.publish(f"{tag}/x", b"unacknowledged")
        pub.close()
        first = c.next()
        assert (first.payload, first.properties.get("subscription_identifier")) == (b"unacknowledged", [3])
        c.close()
        assert s.stop() == 0
        s = serve(tmp_path / "data")
        c = Raw(s.addresses["mqtt"], cid, version=5, clean_start=False, properties=props)
        again = c.next()
        assert (again.payload, again.dup, again.properties.get("subscription_identifier")) == (
            b"unacknowledged", True, [3])
        c.close()
    finally:
        s.stop()

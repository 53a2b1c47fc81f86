"""Shared subscriptions (``$share/GROUP/FILTER``) against a real ``umlog serve``:
each message to exactly one member; a member that goes away with messages
unacknowledged has them given to another."""

from __future__ import annotations

import uuid
from collections import Counter

import paho.mqtt.client as mqtt
import pytest
from helpers import scaled, wait_until

from server.kafka.serve_process import ServeProcess
from server.mqtt.mqtt_clients import Paho, Raw
from umlog.server.mqtt.codec import Suback, Subscribe, Subscription


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ServeProcess(str(tmp_path_factory.mktemp("mqtt-shared") / "data"), "--mqtt", "127.0.0.1:0")
    yield s
    s.stop()


def address(s):
    return s.addresses["mqtt"]


@pytest.mark.parametrize("protocol,qos", [(mqtt.MQTTv5, 1), (mqtt.MQTTv311, 2)])
def test_each_message_goes_to_exactly_one_member(server, protocol, qos):
    tag = uuid.uuid4().hex[:6]
    members = [Paho(address(server), protocol) for _ in range(3)]
    other = Paho(address(server), protocol)  # a plain subscriber gets every one as well
    pub = Paho(address(server), protocol)
    try:
        for m in members:
            m.subscribe((f"$share/g{tag}/{tag}/+/temp", qos))
        other.subscribe((f"{tag}/+/temp", qos))
        n = 60
        for i in range(n):
            pub.publish(f"{tag}/r{i % 4}/temp", b"%d" % i, qos)
        pub.publish(f"{tag}/r1/humidity", b"not matching", qos)
        other.wait(n)
        wait_until(lambda: sum(len(m.messages) for m in members) >= n, scaled(20), "every message to a member")
        got = Counter(msg.payload for m in members for msg in m.messages)
        assert got == Counter(b"%d" % i for i in range(n))  # each once, none missing
        assert all(msg.qos == qos for m in members for msg in m.messages)
    finally:
        for c in (*members, other, pub):
            c.close()


def test_a_member_that_leaves_gives_its_unacknowledged_messages_to_another(server):
    tag = uuid.uuid4().hex[:6]
    group = f"$share/g{tag}/{tag}/#"
    # A member that never acknowledges: what it got stays in flight until it goes.
    silent = Raw(address(server), "silent-" + tag, version=5, properties={"receive_maximum": 5})
    silent.send(Subscribe(1, [Subscription(group, 1)]))
    assert silent.next() == Suback(1, [1])
    pub = Paho(address(server))
    for i in range(8):
        pub.publish(f"{tag}/x", b"%d" % i)
    held = [silent.next() for _ in range(5)]  # its receive maximum
    assert sorted(p.payload for p in held) == sorted(b"%d" % i for i in range(5))
    other = Paho(address(server), mqtt.MQTTv5)
    other.subscribe((group, 1))
    other.wait(3, "the messages the silent member had no room for")
    silent.close()  # gone, 5 messages unacknowledged
    got = other.wait(8, "the silent member's messages, redelivered")
    assert sorted(m.payload for m in got) == sorted(b"%d" % i for i in range(8))
    pub.close()
    other.close()


def test_shared_subscription_members_in_persistent_sessions(tmp_path):
    """A persistent member's shared subscription comes back with its session
    after a restart, and gets what was published while it was away."""
    s = ServeProcess(str(tmp_path / "data"), "--mqtt", "127.0.0.1:0")
    try:
        tag = uuid.uuid4().hex[:6]
        m = Paho(address(s), mqtt.MQTTv311, "member-" + tag, session=600)
        m.subscribe((f"$share/g/{tag}/#", 1))
        m.close()
        pub = Paho(address(s))
        for i in range(5):
            pub.publish(f"{tag}/x", b"%d" % i)
        pub.close()
        assert s.stop() == 0
        s = ServeProcess(str(tmp_path / "data"), "--mqtt", "127.0.0.1:0")
        m = Paho(address(s), mqtt.MQTTv311, "member-" + tag, session=600)
        assert m.session_present
        got = m.wait(5)
        assert sorted(x.payload for x in got) == [b"%d" % i for i in range(5)]
        m.close()
    finally:
        s.stop()

"""A subscriber slower than its publisher, against a real ``umlog serve``: what
its receive maximum holds back waits in order, and once more than a thousand
messages wait (clean session or kept one alike) the connection drops them and
reads them from the log instead (memory stays bounded), then goes live
again: every QoS 1 message arrives once, in order, with never more in flight
than the client's receive maximum."""

from __future__ import annotations

import uuid

import pytest

from server.kafka.serve_process import ServeProcess
from server.mqtt.mqtt_clients import Raw
from umlog.server.mqtt.codec import PubAck, Publish, Suback, Subscribe, Subscription, encode

N = 3000  # three times what may wait in memory
RECEIVE_MAXIMUM = 20


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ServeProcess(str(tmp_path_factory.mktemp("mqtt-slow") / "data"), "--mqtt", "127.0.0.1:0", verbose=1)
    yield s
    s.stop()


def burst(server, topic: str, n: int, qos: int = 1) -> None:
    """``n`` PUBLISHes in writes of 500, every PUBACK awaited (they are stored)."""
    pub = Raw(server.addresses["mqtt"], "slow-pub-" + uuid.uuid4().hex[:6], version=4)
    for first in range(0, n, 500):
        msgs = [Publish(topic, b"%d" % i, qos=qos, packet_id=i % 65535 + 1 if qos else None)
                for i in range(first, min(n, first + 500))]
        pub.s.sendall(b"".join(encode(p, 4) for p in msgs))
        if qos:
            assert [pub.next() for _ in msgs] == [PubAck(p.packet_id) for p in msgs]
    pub.disconnect()


@pytest.mark.parametrize("expiry", [0, 300], ids=["clean", "kept"])
def test_a_subscriber_far_behind_gets_every_message_once_in_order(server, expiry):
    fell_behind = server.stderr_text().count("reading them from the log")
    props = {"receive_maximum": RECEIVE_MAXIMUM, "session_expiry_interval": expiry}
    sub = Raw(server.addresses["mqtt"], "slow-" + uuid.uuid4().hex[:6], version=5, properties=props)
    topic = "slow/" + uuid.uuid4().hex[:6]
    sub.send(Subscribe(1, [Subscription(topic, 1)]))
    assert type(sub.next()) is Suback
    burst(server, topic, N)  # all stored before the subscriber reads a thing
    got, unacked = [], []
    while len(got) < N:
        p = sub.next()
        assert type(p) is Publish and p.qos == 1, p
        got.append(int(p.payload))
        unacked.append(p.packet_id)
        assert len(unacked) <= RECEIVE_MAXIMUM
        if len(unacked) == RECEIVE_MAXIMUM or len(got) == N:  # acknowledge in bursts, as a slow client would
            for pid in unacked:
                sub.send(PubAck(pid))
            unacked.clear()
    assert got == list(range(N))
    sub.disconnect()
    assert server.stderr_text().count("reading them from the log") > fell_behind  # it did fall behind


@pytest.mark.parametrize("expiry", [0, 300], ids=["clean", "kept"])
def test_retained_messages_waiting_when_it_falls_behind_are_kept(server, expiry):
    """More retained messages than may wait (1,200) for a subscriber with a
    receive maximum of 20: it falls behind at once, and every retained one
    still arrives (they cannot be read again from the tailed topics), then
    what is published after."""
    prefix = "slowret/" + uuid.uuid4().hex[:6]
    pub = Raw(server.addresses["mqtt"], "slow-rpub-" + uuid.uuid4().hex[:6], version=4)
    n = 1200
    msgs = [Publish(f"{prefix}/{i}", b"%d" % i, qos=1, packet_id=i + 1, retain=True) for i in range(n)]
    pub.s.sendall(b"".join(encode(p, 4) for p in msgs))
    assert [pub.next() for _ in msgs] == [PubAck(p.packet_id) for p in msgs]
    pub.disconnect()
    fell_behind = server.stderr_text().count("reading them from the log")
    props = {"receive_maximum": RECEIVE_MAXIMUM, "session_expiry_interval": expiry}
    sub = Raw(server.addresses["mqtt"], "slow-r-" + uuid.uuid4().hex[:6], version=5, properties=props)
    sub.send(Subscribe(1, [Subscription(prefix + "/#", 1)]))
    assert type(sub.next()) is Suback
    burst(server, f"{prefix}/live", 50)
    retained, live = set(), []
    while len(retained) + len(live) < n + 50:
        p = sub.next()
        assert type(p) is Publish and p.qos == 1, p
        (retained.add(int(p.payload)) if p.retain else live.append(int(p.payload)))
        sub.send(PubAck(p.packet_id))
    assert retained == set(range(n))
    assert live == list(range(50))
    sub.disconnect()
    assert server.stderr_text().count("reading them from the log") > fell_behind  # it did fall behind

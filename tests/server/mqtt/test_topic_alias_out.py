"""Topic aliases from the server to an MQTT 5 client (3.3.2.3.4), against a real
``umlog serve``: a client announcing a Topic Alias Maximum gets, per topic
name, one PUBLISH carrying the name and a new alias, then the alias alone;
never more aliases than it takes (further names go in full); none for a
client that announced none or speaks 3.1.1. The runs the fan-out encodes
natively and the messages held back by the receive maximum (sent later, in
runs too) follow the same rule, as do the per-message ones (retained)."""

from __future__ import annotations

import uuid

import pytest

from server.kafka.serve_process import ServeProcess
from server.mqtt.mqtt_clients import Raw
from umlog.server.mqtt.codec import PubAck, Publish, Suback, Subscribe, Subscription, encode


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ServeProcess(str(tmp_path_factory.mktemp("mqtt-alias-out") / "data"), "--mqtt", "127.0.0.1:0")
    yield s
    s.stop()


def subscriber(server, version=5, alias_max=None, receive_maximum=None, qos=1) -> tuple[Raw, str]:
    """A raw client subscribed to ``<prefix>/#``; (client, prefix)."""
    props = {}
    if alias_max is not None:
        props["topic_alias_maximum"] = alias_max
    if receive_maximum is not None:
        props["receive_maximum"] = receive_maximum
    raw = Raw(server.addresses["mqtt"], "al-" + uuid.uuid4().hex[:8], version=version, properties=props or None)
    prefix = "al/" + uuid.uuid4().hex[:6]
    raw.send(Subscribe(1, [Subscription(prefix + "/#", qos)]))
    assert type(raw.next()) is Suback
    return raw, prefix


def publish_all(server, msgs: list[tuple[str, bytes]], retain=False) -> None:
    """QoS 1 PUBLISHes in one write, every PUBACK awaited."""
    pub = Raw(server.addresses["mqtt"], "al-pub-" + uuid.uuid4().hex[:8], version=4)
    frames = [Publish(t, v, qos=1, packet_id=i + 1, retain=retain) for i, (t, v) in enumerate(msgs)]
    pub.s.sendall(b"".join(encode(p, 4) for p in frames))
    assert [pub.next() for _ in frames] == [PubAck(i + 1) for i in range(len(frames))]
    pub.disconnect()


def receive(raw: Raw, n: int, ack=True) -> list[Publish]:
    got = []
    for _ in range(n):
        p = raw.next()
        assert type(p) is Publish, p
        got.append(p)
        if ack and p.qos:
            raw.send(PubAck(p.packet_id))
    return got


def resolve(got: list[Publish], alias_max: int) -> list[str]:
    """The topic names the client reads, checking the alias rules as it goes."""
    known: dict[int, str] = {}
    names = []
    for p in got:
        alias = p.properties.get("topic_alias")
        if alias is None:
            assert p.topic
            names.append(p.topic)
            continue
        assert 1 <= alias <= alias_max
        if p.topic:
            assert alias not in known or known[alias] == p.topic  # never reassigned here
            known[alias] = p.topic
        else:
            assert alias in known, f"alias {alias} used before it was given"
        names.append(known[alias])
    return names


def test_each_name_is_given_an_alias_once_then_sent_by_it(server):
    raw, prefix = subscriber(server, alias_max=10)
    topics = [f"{prefix}/a", f"{prefix}/b"]
    msgs = [(topics[i % 2], b"m%d" % i) for i in range(40)]
    publish_all(server, msgs)
    got = receive(raw, len(msgs))
    assert resolve(got, 10) == [t for t, _ in msgs]
    assert [p.payload for p in got] == [v for _, v in msgs]
    with_name = [p for p in got if p.topic]
    assert [p.topic for p in with_name] == topics  # the name once per topic, then the alias alone
    assert all("topic_alias" in p.properties for p in got)
    raw.disconnect()


def test_no_more_aliases_than_the_client_takes(server):
    raw, prefix = subscriber(server, alias_max=2)
    topics = [f"{prefix}/{c}" for c in "abcd"]
    msgs = [(topics[i % 4], b"m%d" % i) for i in range(20)]
    publish_all(server, msgs)
    got = receive(raw, len(msgs))
    assert resolve(got, 2) == [t for t, _ in msgs]
    aliased = {p.topic for p in got if p.topic and "topic_alias" in p.properties}
    assert len(aliased) == 2
    # the other two names always go in full, without an alias
    assert all(p.topic and "topic_alias" not in p.properties for p in got if p.topic not in aliased and p.topic)
    raw.disconnect()


@pytest.mark.parametrize("version, alias_max", [(5, None), (5, 0), (4, None)])
def test_none_for_a_client_that_takes_none(server, version, alias_max):
    raw, prefix = subscriber(server, version=version, alias_max=alias_max)
    msgs = [(f"{prefix}/x", b"m%d" % i) for i in range(5)]
    publish_all(server, msgs)
    got = receive(raw, len(msgs))
    assert [p.topic for p in got] == [t for t, _ in msgs]
    assert not any("topic_alias" in p.properties for p in got)
    raw.disconnect()


def test_messages_held_by_the_receive_maximum_keep_the_rule(server):
    """A receive maximum of 3: most messages wait and go out as PUBACKs come."""
    raw, prefix = subscriber(server, alias_max=1, receive_maximum=3)
    topics = [f"{prefix}/a", f"{prefix}/b"]
    msgs = [(topics[(i // 3) % 2], b"m%d" % i) for i in range(30)]
    publish_all(server, msgs)
    got = receive(raw, len(msgs))
    assert resolve(got, 1) == [t for t, _ in msgs]
    assert [p.payload for p in got] == [v for _, v in msgs]
    raw.disconnect()


def test_retained_messages_at_subscribe_use_aliases_too(server):
    prefix = "al/" + uuid.uuid4().hex[:6]
    publish_all(server, [(f"{prefix}/r1", b"one"), (f"{prefix}/r2", b"two")], retain=True)
    raw = Raw(server.addresses["mqtt"], "al-" + uuid.uuid4().hex[:8], version=5,
              properties={"topic_alias_maximum": 5})
    raw.send(Subscribe(1, [Subscription(prefix + "/#", 1)]))
    assert type(raw.next()) is Suback
    retained = receive(raw, 2)
    publish_all(server, [(f"{prefix}/r1", b"live")])
    got = retained + receive(raw, 1)
    assert sorted(resolve(got, 5)[:2]) == [f"{prefix}/r1", f"{prefix}/r2"]
    assert resolve(got, 5)[2] == f"{prefix}/r1"
    assert got[2].topic == ""  # known from the retained one
    raw.disconnect()

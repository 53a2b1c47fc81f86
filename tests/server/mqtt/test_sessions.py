"""MQTT sessions that outlive their connection, against a real ``umlog serve``:
paho 3.1.1 and 5 and mosquitto_sub coming back after a disconnect, a SIGTERM
restart and a SIGKILL restart; the QoS 2 handshake cut and resumed with raw
packets; session expiry, clean start and takeover."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import paho.mqtt.client as mqtt
import pytest
from helpers import require_tool, scaled, stop_paho, wait_until

from server.kafka.serve_process import ServeProcess
from server.mqtt.mqtt_clients import Paho, Raw
from umlog.server.mqtt.codec import (
    Connack,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Suback,
    Subscribe,
    Subscription,
)


def serve(data_dir, *args, verbose=0) -> ServeProcess:
    return ServeProcess(str(data_dir), "--mqtt", "127.0.0.1:0", *args, verbose=verbose)


def mqtt_address(s):
    return s.addresses["mqtt"]


def kill(s: ServeProcess) -> None:
    s.proc.kill()
    s.proc.wait()
    s.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = serve(tmp_path_factory.mktemp("mqtt-sessions") / "data", verbose=1)
    yield s
    s.stop()


@pytest.mark.parametrize("protocol,qos,how", [
    (mqtt.MQTTv311, 1, "disconnect"), (mqtt.MQTTv5, 2, "disconnect"),
    (mqtt.MQTTv311, 2, "sigterm"), (mqtt.MQTTv5, 1, "sigterm"),
    (mqtt.MQTTv311, 1, "sigkill"), (mqtt.MQTTv5, 2, "sigkill"),
], ids=lambda v: {mqtt.MQTTv311: "3.1.1", mqtt.MQTTv5: "5"}.get(v, str(v)))
def test_a_persistent_session_gets_what_was_published_while_away(tmp_path, protocol, qos, how):
    s = serve(tmp_path / "data")
    cid = "persist-" + uuid.uuid4().hex[:8]
    try:
        sub = Paho(mqtt_address(s), protocol, cid, session=3600)
        assert not sub.session_present
        sub.subscribe(("home/+/temp", qos))
        pub = Paho(mqtt_address(s), protocol)
        pub.publish("home/hall/temp", b"before", qos)
        sub.wait(1)
        sub.close()
        for i in range(20):  # while it is away
            pub.publish(f"home/r{i % 3}/temp", b"m%d" % i, qos)
        pub.publish("home/hall/humidity", b"not for it", qos)
        pub.close()
        if how == "sigterm":
            assert s.stop() == 0
            s = serve(tmp_path / "data")
        elif how == "sigkill":
            kill(s)
            s = serve(tmp_path / "data")
        back = Paho(mqtt_address(s), protocol, cid, session=3600)
        assert back.session_present
        got = back.wait(20, "the messages published while it was away")
        assert [m.payload for m in got] == [b"m%d" % i for i in range(20)]
        assert all(m.qos == qos for m in got)
        # And it is live again: a message published now comes next.
        pub = Paho(mqtt_address(s), protocol)
        pub.publish("home/attic/temp", b"now", qos)
        assert back.wait(21)[20].payload == b"now"
        pub.close()
        back.close()
    finally:
        s.stop()


def test_a_session_is_not_sent_what_it_acknowledged_before(server):
    """Messages acknowledged before a disconnect do not come again; only the rest."""
    tag = uuid.uuid4().hex[:6]
    cid = "acked-" + tag
    sub = Paho(mqtt_address(server), mqtt.MQTTv5, cid, session=600)
    sub.subscribe((f"{tag}/#", 1))
    pub = Paho(mqtt_address(server))
    for i in range(5):
        pub.publish(f"{tag}/a", b"%d" % i)
    sub.wait(5)
    # A later message on a filter of its own tells that the acknowledgements were read.
    pub.publish(f"{tag}/b", b"marker")
    sub.wait(6)
    sub.close()
    pub.publish(f"{tag}/a", b"away")
    back = Paho(mqtt_address(server), mqtt.MQTTv5, cid, session=600)
    pub.publish(f"{tag}/a", b"last")
    got = back.wait(2)
    assert [m.payload for m in got] == [b"away", b"last"]
    back.close()
    pub.close()


@pytest.mark.parametrize("how", ["disconnect", "sigkill"])
def test_qos2_inbound_handshake_resumes_after_a_reconnect(tmp_path, how):
    """PUBLISH QoS 2, PUBREC, then the connection (or the server) dies before
    PUBREL: the resent PUBLISH (DUP) is not stored twice, PUBREL completes it."""
    s = serve(tmp_path / "data")
    try:
        tag = uuid.uuid4().hex[:6]
        watcher = Paho(mqtt_address(s), mqtt.MQTTv311, "watch-" + tag, session=1)
        watcher.subscribe((f"{tag}/#", 2))
        c = Raw(mqtt_address(s), "in2-" + tag, clean_start=False)
        c.send(Publish(f"{tag}/x", b"once", 2, packet_id=7))
        assert c.next() == PubRec(7)
        c.close()
        watcher.wait(1)
        watcher.close()
        if how == "sigkill":
            kill(s)
            s = serve(tmp_path / "data")
        c = Raw(mqtt_address(s), "in2-" + tag, clean_start=False)
        assert c.connack == Connack(True, 0)
        c.send(Publish(f"{tag}/x", b"once", 2, dup=True, packet_id=7))
        assert c.next() == PubRec(7)
        c.send(PubRel(7))
        assert c.next() == PubComp(7)
        c.send(Publish(f"{tag}/y", b"after", 1, packet_id=8))
        c.next()  # PUBACK
        c.close()
        watcher = Paho(mqtt_address(s), mqtt.MQTTv311, "watch-" + tag, session=1)
        # "once" was stored once: the watcher got it before, and now only what came after.
        got = watcher.wait(1)
        assert [m.payload for m in got] == [b"after"]
        watcher.close()
    finally:
        s.stop()


@pytest.mark.parametrize("how", ["disconnect", "sigkill", "sigterm"])
def test_qos2_outbound_handshake_resumes_after_a_reconnect(tmp_path, how):
    """The server sends a QoS 2 message: unanswered it comes again with DUP and
    the same packet id; PUBREC'd, the PUBREL comes again (not the message)."""
    s = serve(tmp_path / "data")
    try:
        tag = uuid.uuid4().hex[:6]
        cid = "out2-" + tag
        c = Raw(mqtt_address(s), cid, version=5, clean_start=True, properties={"session_expiry_interval": 600})
        c.send(Subscribe(1, [Subscription(f"{tag}/#", 2)]))
        assert c.next() == Suback(1, [2])
        pub = Paho(mqtt_address(s))
        pub.publish(f"{tag}/a", b"first", 2)
        pub.publish(f"{tag}/b", b"second", 2)
        p1, p2 = c.next(), c.next()
        assert (p1.payload, p1.dup, p2.payload) == (b"first", False, b"second")
        c.send(PubRec(p1.packet_id))
        assert c.next() == PubRel(p1.packet_id)
        # p2 unanswered; p1 released but not completed. Then a message while away.
        c.disconnect()
        pub.publish(f"{tag}/c", b"third", 2)
        pub.close()
        if how == "sigkill":
            kill(s)
            s = serve(tmp_path / "data")
        elif how == "sigterm":
            assert s.stop() == 0
            s = serve(tmp_path / "data")
        c = Raw(mqtt_address(s), cid, version=5, clean_start=False, properties={"session_expiry_interval": 600})
        assert (c.connack.session_present, c.connack.reason) == (True, 0)
        again = c.next()
        assert again == PubRel(p1.packet_id)
        again = c.next()
        assert (again.payload, again.dup, again.packet_id, again.qos) == (b"second", True, p2.packet_id, 2)
        third = c.next()
        assert (third.payload, third.dup, third.qos) == (b"third", False, 2)
        c.send(PubComp(p1.packet_id))
        for p in (again, third):
            c.send(PubRec(p.packet_id))
            assert c.next() == PubRel(p.packet_id)
            c.send(PubComp(p.packet_id))
        c.disconnect()
        # Everything settled: coming back again brings nothing old. A new message proves it.
        c = Raw(mqtt_address(s), cid, version=5, clean_start=False, properties={"session_expiry_interval": 600})
        assert c.connack.session_present
        pub = Paho(mqtt_address(s))
        pub.publish(f"{tag}/d", b"fourth", 1)
        pub.close()
        p = c.next()
        assert (p.payload, p.dup) == (b"fourth", False)
        c.close()
    finally:
        s.stop()


def test_a_session_expires_after_its_interval(server):
    tag = uuid.uuid4().hex[:6]
    cid = "expiring-" + tag
    sub = Paho(mqtt_address(server), mqtt.MQTTv5, cid, session=1)
    sub.subscribe((f"{tag}/#", 1))
    sub.close()
    pub = Paho(mqtt_address(server))
    pub.publish(f"{tag}/x", b"while away")
    # Expiry is the scenario: the server says when it removed the session.
    wait_until(lambda: f"the session of {cid!r} expired" in server.stderr_text(), scaled(15), "the expiry")
    back = Paho(mqtt_address(server), mqtt.MQTTv5, cid, session=60)
    assert not back.session_present
    back.subscribe((f"{tag}/marker", 1))
    pub.publish(f"{tag}/x", b"not subscribed any more")
    pub.publish(f"{tag}/marker", b"marker")
    got = back.wait(1)
    assert [m.payload for m in got] == [b"marker"]
    back.close()
    pub.close()


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5])
def test_a_clean_start_discards_the_old_session(server, protocol):
    tag = uuid.uuid4().hex[:6]
    cid = "clean-" + tag
    sub = Paho(mqtt_address(server), protocol, cid, session=600)
    sub.subscribe((f"{tag}/old", 1))
    sub.close()
    pub = Paho(mqtt_address(server))
    pub.publish(f"{tag}/old", b"while away")
    fresh = Paho(mqtt_address(server), protocol, cid, session=None)
    assert not fresh.session_present
    fresh.subscribe((f"{tag}/marker", 1))
    pub.publish(f"{tag}/old", b"after")
    pub.publish(f"{tag}/marker", b"marker")
    got = fresh.wait(1)
    assert [m.payload for m in got] == [b"marker"]
    fresh.close()
    pub.close()


def test_a_clean_start_with_an_expiry_is_a_session_a_kill_keeps(tmp_path):
    """MQTT 5 clean start 1 with a session expiry on a client id that has a
    session: the old one's tombstone and the new one's record are written in
    one batch, the tombstone first; killed right after the CONNACKs, the new
    sessions are there after the restart (several clients: a batch's order
    was once that of a set)."""
    s = serve(tmp_path / "data")
    tag = uuid.uuid4().hex[:6]
    cids = [f"restart-clean-{tag}-{i}" for i in range(6)]
    expiry = {"session_expiry_interval": 600}
    try:
        for cid in cids:
            Raw(mqtt_address(s), cid, version=5, clean_start=False, properties=expiry).disconnect()
        fresh = [Raw(mqtt_address(s), cid, version=5, clean_start=True, properties=expiry) for cid in cids]
        assert not any(c.connack.session_present for c in fresh)
        kill(s)
        for c in fresh:
            c.close()
        s = serve(tmp_path / "data")
        back = [Raw(mqtt_address(s), cid, version=5, clean_start=False, properties=expiry) for cid in cids]
        assert [c.connack.session_present for c in back] == [True] * len(cids)
        for c in back:
            c.close()
    finally:
        s.stop()


def test_a_takeover_keeps_the_session(server):
    tag = uuid.uuid4().hex[:6]
    cid = "takeover-" + tag
    a = Paho(mqtt_address(server), mqtt.MQTTv311, cid, session=600)
    a.subscribe((f"{tag}/#", 1))
    b = Paho(mqtt_address(server), mqtt.MQTTv311, cid, session=600)
    assert b.session_present
    wait_until(lambda: a.disconnects, scaled(10), "the first connection closed")
    stop_paho(a.c)
    pub = Paho(mqtt_address(server))
    pub.publish(f"{tag}/x", b"to the new connection")
    assert [m.payload for m in b.wait(1)] == [b"to the new connection"]
    b.close()
    pub.close()


def test_mosquitto_sub_persistent_session_across_a_restart(tmp_path):
    sub_bin = require_tool(shutil.which("mosquitto_sub"), "mosquitto_sub", "apt-get install mosquitto-clients")
    pub_bin = require_tool(shutil.which("mosquitto_pub"), "mosquitto_pub", "apt-get install mosquitto-clients")
    s = serve(tmp_path / "data")
    try:
        tag = uuid.uuid4().hex[:6]
        cid = "mosq-" + tag

        def pub(topic, msg, *extra):
            subprocess.run([pub_bin, "-h", "127.0.0.1", "-p", str(mqtt_address(s)[1]), "-t", topic, "-m", msg,
                            "-q", "1", *extra], check=True, timeout=scaled(20))

        def sub(count, *extra):
            return subprocess.Popen([sub_bin, "-h", "127.0.0.1", "-p", str(mqtt_address(s)[1]), "-c", "-i", cid,
                                     "-q", "1", "-t", f"{tag}/#", "-C", str(count), "-W", str(int(scaled(20))),
                                     *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        # A retained message: mosquitto_sub's first line says it is subscribed; it then leaves.
        pub(f"{tag}/ready", "r", "-r")
        first = sub(1)
        out, err = first.communicate(timeout=scaled(30))
        assert first.returncode == 0 and out.strip() == "r", err
        for i in range(5):
            pub(f"{tag}/m", f"m{i}")
        assert s.stop() == 0
        s = serve(tmp_path / "data")
        again = sub(5, "-R")  # -R: not the retained message its SUBSCRIBE brings again
        out, err = again.communicate(timeout=scaled(30))
        assert again.returncode == 0, err
        assert out.splitlines() == [f"m{i}" for i in range(5)]
    finally:
        s.stop()

"""The MQTT door's limits on a client, against a real ``umlog serve``: a Server
Keep Alive (``max_keep_alive``) told to MQTT 5 clients in CONNACK and held to,
3.1.1 clients asking for more refused; the Receive Maximum (``receive_maximum``)
announced in CONNACK, and a client with more QoS 2 PUBLISHes awaiting PUBREL
than it disconnected with 0x93."""

from __future__ import annotations

import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from helpers import scaled

from server.kafka.serve_process import ServeProcess
from server.mqtt.mqtt_clients import Paho, Raw
from umlog.server.mqtt.codec import Disconnect, PingReq, PingResp, PubAck, Publish, PubRec, encode

CAP = 1  # seconds: max_keep_alive of the server below
RECEIVE_MAXIMUM = 5


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Keep alive capped at CAP."""
    s = ServeProcess(str(tmp_path_factory.mktemp("mqtt-keep-alive") / "data"), "--mqtt", "127.0.0.1:0",
                     "--mqtt-max-keep-alive", str(CAP))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def rm_server(tmp_path_factory):
    """Receive maximum RECEIVE_MAXIMUM."""
    s = ServeProcess(str(tmp_path_factory.mktemp("mqtt-receive-maximum") / "data"), "--mqtt", "127.0.0.1:0",
                     "--mqtt-receive-maximum", str(RECEIVE_MAXIMUM))
    yield s
    s.stop()


def cid() -> str:
    return "lim-" + uuid.uuid4().hex[:8]


def seconds_to_close(raw: Raw) -> tuple[float, list]:
    """How long until the server closes the connection, and what it sent before."""
    start = time.monotonic()
    got = []
    try:
        while True:
            got.append(raw.next())
    except (ConnectionError, OSError):
        pass
    raw.close()
    return time.monotonic() - start, got


def test_a_v5_client_asking_for_none_is_told_the_cap(server):
    raw = Raw(server.addresses["mqtt"], cid(), version=5, keep_alive=0)
    assert raw.connack.reason == 0 and raw.connack.properties["server_keep_alive"] == CAP
    took, got = seconds_to_close(raw)
    assert 1.2 * CAP <= took < scaled(1.5 * CAP + 3) and got == [Disconnect(0x8D)]


def test_a_v5_client_asking_for_more_is_told_the_cap_and_held_to_it(server):
    raw = Raw(server.addresses["mqtt"], cid(), version=5, keep_alive=60)
    assert raw.connack.reason == 0
    assert raw.connack.properties["server_keep_alive"] == CAP
    # Pings keep it open past 1.5 x the cap ...
    for _ in range(7):
        time.sleep(0.25 * CAP)
        raw.send(PingReq())
        assert isinstance(raw.next(), PingResp)
    # ... and silence closes it 1.5 x the cap later, not the keep alive it asked for.
    took, got = seconds_to_close(raw)
    assert 1.2 * CAP <= took < scaled(1.5 * CAP + 3)
    assert got == [Disconnect(0x8D)]  # keep alive timeout


def test_a_v5_client_within_the_cap_keeps_its_own_keep_alive(server):
    raw = Raw(server.addresses["mqtt"], cid(), version=5, keep_alive=CAP)
    assert raw.connack.reason == 0
    assert "server_keep_alive" not in raw.connack.properties
    raw.close()


def test_a_3_1_1_client_asking_for_more_is_refused(server):
    for asked in (60, 0):
        raw = Raw(server.addresses["mqtt"], cid(), version=4, keep_alive=asked)
        assert raw.connack.reason == 0x02  # identifier rejected: 3.1.1 cannot be told another keep alive
        _, got = seconds_to_close(raw)
        assert got == []
    within = Raw(server.addresses["mqtt"], cid(), version=4, keep_alive=CAP)
    assert within.connack.reason == 0
    took, got = seconds_to_close(within)
    assert 1.2 * CAP <= took < scaled(1.5 * CAP + 3) and got == []


def test_paho_v5_takes_the_server_keep_alive(server):
    c = Paho(server.addresses["mqtt"], mqtt.MQTTv5)  # asks for 30 s
    try:
        assert c.c._keepalive == CAP  # paho uses the CONNACK's Server Keep Alive (MQTT 5 3.2.2.3.14)
    finally:
        c.close()


def test_the_receive_maximum_is_announced_and_held_to(rm_server):
    raw = Raw(rm_server.addresses["mqtt"], cid(), version=5)
    assert raw.connack.properties["receive_maximum"] == RECEIVE_MAXIMUM
    topic = "lim/" + uuid.uuid4().hex[:6]
    # As many QoS 2 PUBLISHes as the receive maximum, never released: each is PUBREC'd.
    for pid in range(1, RECEIVE_MAXIMUM + 1):
        raw.send(Publish(topic, b"m%d" % pid, qos=2, packet_id=pid))
    assert [raw.next() for _ in range(RECEIVE_MAXIMUM)] == [PubRec(pid) for pid in range(1, RECEIVE_MAXIMUM + 1)]
    # A resend of one of them is no new one: answered again.
    raw.send(Publish(topic, b"m1", qos=2, packet_id=1, dup=True))
    assert raw.next() == PubRec(1)
    # One more is over it: DISCONNECT 0x93 (Receive Maximum exceeded).
    raw.send(Publish(topic, b"over", qos=2, packet_id=RECEIVE_MAXIMUM + 1))
    _, got = seconds_to_close(raw)
    assert [type(p) for p in got] == [Disconnect] and got[0].reason == 0x93


def test_excess_within_one_read_is_found_too(rm_server):
    """PUBLISHes read together (stored as one run) count one by one: the ones
    within the receive maximum are stored and PUBREC'd, then 0x93."""
    raw = Raw(rm_server.addresses["mqtt"], cid(), version=5)
    topic = "lim/" + uuid.uuid4().hex[:6]
    n = RECEIVE_MAXIMUM + 2
    raw.s.sendall(b"".join(encode(Publish(topic, b"m%d" % pid, qos=2, packet_id=pid), 5) for pid in range(1, n + 1)))
    _, got = seconds_to_close(raw)
    assert got[:RECEIVE_MAXIMUM] == [PubRec(pid) for pid in range(1, RECEIVE_MAXIMUM + 1)]
    assert [type(p) for p in got[RECEIVE_MAXIMUM:]] == [Disconnect] and got[-1].reason == 0x93


def test_qos_1_is_not_counted(rm_server):
    """QoS 1 is acknowledged as soon as it is stored: a client sending more than
    the receive maximum of them back to back gets every PUBACK."""
    raw = Raw(rm_server.addresses["mqtt"], cid(), version=5)
    n = 4 * RECEIVE_MAXIMUM
    raw.s.sendall(b"".join(encode(Publish("lim/q1", b"x", qos=1, packet_id=pid), 5) for pid in range(1, n + 1)))
    assert [raw.next() for _ in range(n)] == [PubAck(pid) for pid in range(1, n + 1)]
    raw.close()


def test_a_client_still_sending_reads_the_disconnect(rm_server):
    """The server closes after its DISCONNECT 0x93 while the client is still
    sending (a PUBREL for each PUBREC, as the Paho suite's client does): the
    client reads the DISCONNECT, not a connection reset (the server half-closes
    and drops what still comes before it closes)."""
    from umlog.server.mqtt.codec import PubRel

    for _ in range(5):
        raw = Raw(rm_server.addresses["mqtt"], cid(), version=5)
        topic = "lim/" + uuid.uuid4().hex[:6]
        raw.s.sendall(b"".join(encode(Publish(topic, b"m", qos=2, packet_id=pid), 5)
                               for pid in range(1, RECEIVE_MAXIMUM + 2)))
        got = []
        while True:
            p = raw.next()  # a ConnectionResetError here is the failure
            got.append(p)
            if type(p) is Disconnect:
                break
            raw.send(PubRel(p.packet_id))
            time.sleep(0.01)
        assert got[-1].reason == 0x93
        raw.close()

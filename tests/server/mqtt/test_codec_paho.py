"""The MQTT codec against a real client: paho-mqtt talks to a scripted peer on
loopback that reads with ``PacketReader`` and answers with ``encode``. What
paho sends must decode to what it was asked to send, and what we encode must be
what paho's callbacks report."""

from __future__ import annotations

import socket
import threading

import paho.mqtt.client as mqtt
import pytest
from helpers import scaled, stop_paho, wait_until
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from umlog.server.mqtt.codec import (
    Connack,
    Connect,
    Disconnect,
    PacketReader,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    encode,
)


class ScriptedPeer:
    """Accepts one connection; answers like a broker; records every packet read."""

    def __init__(self, to_client: list) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.got: list = []
        self.to_client = to_client  # packets sent after SUBACK
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.sock.accept()
            conn.settimeout(scaled(10))
            with conn:
                r = PacketReader()
                version = 4
                while True:
                    data = conn.recv(65536)
                    if not data:
                        return
                    r.feed(data)
                    for p in r.packets():
                        self.got.append(p)
                        out = []
                        if isinstance(p, Connect):
                            version = r.version = 5 if p.version == 5 else 4
                            out.append(Connack(False, 0, {"topic_alias_maximum": 5} if version == 5 else None))
                        elif isinstance(p, Subscribe):
                            out.append(Suback(p.packet_id, [s.qos for s in p.subscriptions]))
                            out += self.to_client
                        elif isinstance(p, Unsubscribe):
                            out.append(Unsuback(p.packet_id, [0] * len(p.filters) if version == 5 else None))
                        elif isinstance(p, Publish) and p.qos == 1:
                            out.append(PubAck(p.packet_id))
                        elif isinstance(p, Publish) and p.qos == 2:
                            out.append(PubRec(p.packet_id))
                        elif isinstance(p, PubRel):
                            out.append(PubComp(p.packet_id))
                        elif isinstance(p, PingReq):
                            out.append(PingResp())
                        elif isinstance(p, Disconnect):
                            return
                        for q in out:
                            conn.sendall(encode(q, version))
        except BaseException as e:  # shown by the test
            self.error = e
        finally:
            self.sock.close()


@pytest.mark.parametrize("protocol", ["MQTTv311", "MQTTv5"])
def test_paho_round_trip(protocol):
    v5 = protocol == "MQTTv5"
    version = 5 if v5 else 4
    down = Publish("down/x", b"hello", 1, packet_id=3,
                   properties={"content_type": "text/plain", "correlation_data": b"\x01\x02",
                               "user_property": [("a", "1"), ("a", "2")], "message_expiry_interval": 60,
                               "response_topic": "reply/here"} if v5 else None)
    peer = ScriptedPeer([down])
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-1",
                    protocol=getattr(mqtt, protocol))
    seen, acked = [], []
    c.on_message = lambda client, userdata, msg: seen.append(msg)
    c.on_publish = lambda client, userdata, mid, rc, props: acked.append(mid)
    c.username_pw_set("user", "pw")
    c.will_set("will/t", b"bye", qos=1, retain=True)
    c.connect("127.0.0.1", peer.port, keepalive=30)
    c.loop_start()
    try:
        wait_until(lambda: c.is_connected() or peer.error, scaled(10), "paho connected")
        c.subscribe([("down/#", 1), ("other/+", 2)])
        wait_until(lambda: seen or peer.error, scaled(10), "paho got the server's PUBLISH")
        props = None
        if v5:
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = [("k", "v")]
            props.ContentType = "application/json"
        infos = [c.publish("up/0", b"q0", 0, properties=props), c.publish("up/1", b"q1", 1),
                 c.publish("up/2", b"q2", 2, retain=True)]
        wait_until(lambda: len(acked) >= 3 or peer.error, scaled(10), "three publishes done")
        c.unsubscribe("other/+")
        wait_until(lambda: any(isinstance(p, Unsubscribe) for p in peer.got) or peer.error, scaled(10), "unsub")
        c.disconnect()
    finally:
        stop_paho(c)
    peer.thread.join(scaled(10))
    assert peer.error is None, repr(peer.error)
    connect = peer.got[0]
    assert isinstance(connect, Connect) and connect.version == version and connect.client_id == "paho-1"
    assert (connect.username, connect.password, connect.keep_alive) == ("user", b"pw", 30)
    assert (connect.will.topic, connect.will.payload, connect.will.qos, connect.will.retain) == ("will/t", b"bye", 1,
                                                                                                 True)
    (sub,) = [p for p in peer.got if isinstance(p, Subscribe)]
    assert [(s.filter, s.qos) for s in sub.subscriptions] == [("down/#", 1), ("other/+", 2)]
    pubs = [p for p in peer.got if isinstance(p, Publish)]
    assert [(p.topic, p.payload, p.qos) for p in pubs] == [("up/0", b"q0", 0), ("up/1", b"q1", 1),
                                                           ("up/2", b"q2", 2)]
    assert pubs[2].retain and not pubs[1].retain
    if v5:
        assert pubs[0].properties == {"user_property": [("k", "v")], "content_type": "application/json"}
    assert any(isinstance(p, PubRel) and p.packet_id == pubs[2].packet_id for p in peer.got)
    assert any(isinstance(p, PubAck) and p.packet_id == 3 for p in peer.got)  # paho acked our QoS 1
    assert isinstance(peer.got[-1], Disconnect)
    (m,) = seen
    assert (m.topic, m.payload, m.qos) == ("down/x", b"hello", 1)
    if v5:
        p = m.properties
        assert (p.ContentType, p.CorrelationData, p.ResponseTopic) == ("text/plain", b"\x01\x02", "reply/here")
        assert p.UserProperty == [("a", "1"), ("a", "2")] and p.MessageExpiryInterval == 60
    assert all(i.rc == 0 for i in infos)

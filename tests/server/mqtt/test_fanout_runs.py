"""The fan-out hands the records of one read on one topic out as one run per
subscriber (``MqttConnection.send_run``): each message of a run must still get
what it would get alone — no-local, the client's Receive Maximum and Maximum
Packet Size, the order of the log."""

from __future__ import annotations

import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from server.kafka.serve_process import ServeProcess
from server.mqtt.test_door import Client


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

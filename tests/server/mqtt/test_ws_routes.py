"""MQTT over WebSocket (paho ``transport="websockets"``) and ``[[mqtt.route]]``
(a Kafka consumer reading the routed topic) against a real ``umlog serve``."""

from __future__ import annotations

import uuid

import paho.mqtt.client as mqtt
import pytest
from confluent_kafka import Consumer, Producer
from helpers import scaled, wait_until

from server.kafka.serve_process import ServeProcess
from server.mqtt.mqtt_clients import Paho


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5])
def test_websocket_clients_share_the_log_with_tcp_ones(tmp_path, protocol):
    s = ServeProcess(str(tmp_path / "data"), "--mqtt", "127.0.0.1:0", "--mqtt-ws", "127.0.0.1:0")
    try:
        assert set(s.addresses) >= {"kafka", "mqtt", "mqtt-ws"}
        ws_sub = Paho(s.addresses["mqtt-ws"], protocol, transport="websockets")
        tcp_sub = Paho(s.addresses["mqtt"], protocol)
        ws_pub = Paho(s.addresses["mqtt-ws"], protocol, transport="websockets", ws_path="/any/path")
        ws_sub.subscribe(("ws/#", 2))
        tcp_sub.subscribe(("ws/#", 1))
        payload = bytes(range(256)) * 300  # several WebSocket frames' worth
        for qos in (0, 1, 2):
            ws_pub.publish(f"ws/q{qos}", payload + b"%d" % qos, qos)
        for c in (ws_sub, tcp_sub):
            got = c.wait(3)
            assert sorted((m.topic, m.payload[-1:], m.qos) for m in got) == [
                ("ws/q0", b"0", 0), ("ws/q1", b"1", 1), ("ws/q2", b"2", min(2, 1 if c is tcp_sub else 2))]
            assert all(m.payload[:-1] == payload for m in got)
        ws_sub.close()
        ws_pub.close()
        tcp_sub.close()
    finally:
        assert s.stop() == 0


def test_a_websocket_persistent_session_across_a_restart(tmp_path):
    s = ServeProcess(str(tmp_path / "data"), "--mqtt-ws", "127.0.0.1:0")
    try:
        assert "mqtt" not in s.addresses  # WebSocket only
        cid = "ws-" + uuid.uuid4().hex[:6]
        sub = Paho(s.addresses["mqtt-ws"], mqtt.MQTTv5, cid, session=600, transport="websockets")
        sub.subscribe(("away/#", 1))
        sub.close()
        pub = Paho(s.addresses["mqtt-ws"], mqtt.MQTTv5, transport="websockets")
        for i in range(3):
            pub.publish("away/x", b"%d" % i)
        pub.close()
        assert s.stop() == 0
        s = ServeProcess(str(tmp_path / "data"), "--mqtt-ws", "127.0.0.1:0")
        back = Paho(s.addresses["mqtt-ws"], mqtt.MQTTv5, cid, session=600, transport="websockets")
        assert back.session_present
        assert [m.payload for m in back.wait(3)] == [b"0", b"1", b"2"]
        back.close()
    finally:
        s.stop()


def test_routes_send_matching_publishes_to_their_topic(tmp_path):
    tag = uuid.uuid4().hex[:6]
    cfg = tmp_path / "umlog.toml"
    cfg.write_text(f'[[mqtt.route]]\nfilter = "sensors/#"\ntopic = "sensors-{tag}"\n\n'
                   f'[[mqtt.route]]\nfilter = "+/alarm"\ntopic = "alarms-{tag}"\n')
    s = ServeProcess(str(tmp_path / "data"), "--config", str(cfg), "--mqtt", "127.0.0.1:0")
    try:
        sub = Paho(s.addresses["mqtt"])
        sub.subscribe(("#", 1))
        pub = Paho(s.addresses["mqtt"])
        pub.publish("sensors/hall/temp", b"21.5")
        pub.publish("sensors/alarm", b"first route wins")
        pub.publish("door/alarm", b"open")
        pub.publish("plain/topic", b"to mqtt-messages")
        # A Kafka producer writing into a routed topic reaches MQTT subscribers too.
        p = Producer({"bootstrap.servers": s.bootstrap})
        p.produce(f"sensors-{tag}", b"from kafka", key=b"sensors/attic/temp")
        p.flush(scaled(10))
        got = sub.wait(5)
        assert sorted((m.topic, m.payload) for m in got) == sorted([
            ("sensors/hall/temp", b"21.5"), ("sensors/alarm", b"first route wins"), ("door/alarm", b"open"),
            ("plain/topic", b"to mqtt-messages"), ("sensors/attic/temp", b"from kafka")])
        sub.close()
        pub.close()

        def read(topic, n):
            c = Consumer({"bootstrap.servers": s.bootstrap, "group.id": f"{topic}-reader",
                          "auto.offset.reset": "earliest"})
            c.subscribe([topic])
            out = []

            def poll():
                m = c.poll(0.2)
                if m is not None and m.error() is None:
                    out.append((m.key(), m.value()))
                return len(out) >= n
            try:
                wait_until(poll, scaled(30), f"{n} records of {topic}")
            finally:
                c.close()
            return out

        assert read(f"sensors-{tag}", 3) == [(b"sensors/hall/temp", b"21.5"), (b"sensors/alarm", b"first route wins"),
                                            (b"sensors/attic/temp", b"from kafka")]
        assert read(f"alarms-{tag}", 1) == [(b"door/alarm", b"open")]
        assert read("mqtt-messages", 1) == [(b"plain/topic", b"to mqtt-messages")]
    finally:
        s.stop()


def test_a_bad_route_stops_the_server_with_one_line(tmp_path):
    import subprocess
    import sys

    from helpers import subprocess_env

    cfg = tmp_path / "umlog.toml"
    cfg.write_text('[[mqtt.route]]\nfilter = "a/#/b"\ntopic = "t"\n')
    r = subprocess.run([sys.executable, "-m", "umlog", "serve", "--config", str(cfg), "--data-dir",
                        str(tmp_path / "d"), "--mqtt", "127.0.0.1:0"], capture_output=True, text=True,
                       env=subprocess_env(), cwd=str(tmp_path), timeout=scaled(30))
    assert r.returncode == 2
    assert "[[mqtt.route]] #1" in r.stderr and "a/#/b" in r.stderr

"""MQTT 5 will delay against a real ``umlog serve``: a client vanishes and its
will comes after the will delay interval, or when its session ends if that is
sooner, and not at all if the client comes back to the session in time."""

from __future__ import annotations

import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from helpers import scaled, wait_until

from server.kafka.serve_process import ServeProcess
from server.mqtt.mqtt_clients import Paho, Raw
from umlog.server.mqtt.codec import Will


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ServeProcess(str(tmp_path_factory.mktemp("mqtt-will-delay") / "data"), "--mqtt", "127.0.0.1:0")
    yield s
    s.stop()


def vanishing(server, cid, topic, delay, expiry, clean_start=True) -> Raw:
    """An MQTT 5 client with a will delayed by ``delay`` s and a session expiry of ``expiry`` s."""
    will = Will(topic, b"gone " + cid.encode(), 1, properties={"will_delay_interval": delay})
    return Raw(server.addresses["mqtt"], cid, version=5, clean_start=clean_start,
               properties={"session_expiry_interval": expiry}, will=will)


def watch(server, topic) -> Paho:
    w = Paho(server.addresses["mqtt"], mqtt.MQTTv5)
    w.subscribe((topic, 1))
    return w


def seconds_to_will(watcher, since: float) -> float:
    (m,) = watcher.wait(1, "the will")
    return time.monotonic() - since


def test_the_will_waits_for_its_delay(server):
    tag = uuid.uuid4().hex[:6]
    watcher = watch(server, f"{tag}/will")
    c = vanishing(server, "wd-" + tag, f"{tag}/will", delay=1, expiry=60)
    gone = time.monotonic()
    c.close()
    time.sleep(0.6)
    assert watcher.messages == []  # not at once
    assert seconds_to_will(watcher, gone) >= 0.9
    watcher.close()


def test_a_session_ending_first_publishes_the_will_then(server):
    tag = uuid.uuid4().hex[:6]
    watcher = watch(server, f"{tag}/will")
    c = vanishing(server, "we-" + tag, f"{tag}/will", delay=600, expiry=1)
    gone = time.monotonic()
    c.close()
    assert 0.9 <= seconds_to_will(watcher, gone) < scaled(10)
    watcher.close()


def test_no_session_beyond_the_connection_publishes_the_will_at_once(server):
    tag = uuid.uuid4().hex[:6]
    watcher = watch(server, f"{tag}/will")
    c = vanishing(server, "w0-" + tag, f"{tag}/will", delay=600, expiry=0)
    c.close()
    watcher.wait(1, "the will")
    watcher.close()


def test_coming_back_in_time_cancels_the_will(server):
    tag = uuid.uuid4().hex[:6]
    cid = "wc-" + tag
    watcher = watch(server, f"{tag}/#")
    vanishing(server, cid, f"{tag}/will", delay=1, expiry=60).close()
    time.sleep(0.3)
    back = Raw(server.addresses["mqtt"], cid, version=5, clean_start=False,
               properties={"session_expiry_interval": 60})
    assert back.connack.session_present
    time.sleep(1.5)  # past the delay
    pub = Paho(server.addresses["mqtt"], mqtt.MQTTv5)
    pub.publish(f"{tag}/marker", b"marker")
    got = watcher.wait(1)
    assert [m.payload for m in got] == [b"marker"]
    back.close()  # its own will was not delayed again by this connection: it had none
    pub.close()
    watcher.close()


def test_a_clean_start_ends_the_session_and_publishes_the_will(server):
    tag = uuid.uuid4().hex[:6]
    cid = "wn-" + tag
    watcher = watch(server, f"{tag}/will")
    vanishing(server, cid, f"{tag}/will", delay=600, expiry=600).close()
    time.sleep(0.3)
    assert watcher.messages == []
    fresh = Raw(server.addresses["mqtt"], cid, version=5, clean_start=True)
    assert not fresh.connack.session_present
    watcher.wait(1, "the will of the session the clean start ended")
    fresh.close()
    watcher.close()


def test_a_takeover_resuming_the_session_publishes_no_will(server):
    tag = uuid.uuid4().hex[:6]
    cid = "wt-" + tag
    watcher = watch(server, f"{tag}/#")
    first = vanishing(server, cid, f"{tag}/will", delay=1, expiry=60)
    second = Raw(server.addresses["mqtt"], cid, version=5, clean_start=False,
                 properties={"session_expiry_interval": 60})
    assert second.connack.session_present
    wait_until(lambda: _closed(first), scaled(10), "the first connection closed")
    first.close()
    time.sleep(1.5)
    pub = Paho(server.addresses["mqtt"], mqtt.MQTTv5)
    pub.publish(f"{tag}/marker", b"marker")
    assert [m.payload for m in watcher.wait(1)] == [b"marker"]
    second.close()
    pub.close()
    watcher.close()


def _closed(raw: Raw) -> bool:
    """The server closed the connection (after its DISCONNECT 0x8E)."""
    try:
        while True:
            raw.next()
    except (ConnectionError, OSError):
        return True

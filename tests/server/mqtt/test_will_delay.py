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


# --- a pending will across a restart: it is in the session record --------------------------


def serve(data_dir) -> ServeProcess:
    return ServeProcess(str(data_dir), "--mqtt", "127.0.0.1:0")


def restart(s: ServeProcess, how: str) -> ServeProcess:
    if how == "sigkill":
        s.proc.kill()
        s.proc.wait()
    assert s.stop() == (-9 if how == "sigkill" else 0)
    return serve(s.data_dir)


def leave_with_will(raw: Raw) -> float:
    """DISCONNECT 0x04 (with will message), and wait for the server to close:
    it has ended the connection and written the session record with the will
    pending. Returns when it left (time.monotonic)."""
    from umlog.server.mqtt.codec import Disconnect

    raw.send(Disconnect(0x04))
    _closed(raw)
    raw.close()
    return time.monotonic()


def persistent_watcher(s: ServeProcess, cid: str, topic: str | None = None) -> Paho:
    """A watcher whose session outlives restarts: what is published while it is
    away (the server down included) reaches it when it comes back."""
    w = Paho(s.addresses["mqtt"], mqtt.MQTTv5, cid, session=3600)
    if topic is not None:
        w.subscribe((topic, 1))
    return w


def marker(s: ServeProcess, topic: str, payload: bytes) -> None:
    pub = Paho(s.addresses["mqtt"], mqtt.MQTTv5)
    pub.publish(topic, payload)
    pub.close()


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_a_pending_will_goes_once_after_a_restart(tmp_path, how):
    tag = uuid.uuid4().hex[:6]
    s = serve(tmp_path / "data")
    try:
        watcher = persistent_watcher(s, "ww-" + tag, f"{tag}/#")
        watcher.close()
        gone = leave_with_will(vanishing(s, "wr-" + tag, f"{tag}/will", delay=2, expiry=60))
        s = restart(s, how)
        watcher = persistent_watcher(s, "ww-" + tag)
        assert watcher.session_present
        (will,) = watcher.wait(1, "the will, after the restart")
        assert time.monotonic() - gone >= 1.9 and will.payload == b"gone wr-" + tag.encode()
        marker(s, f"{tag}/marker", b"marker")
        assert [m.payload for m in watcher.wait(2)] == [will.payload, b"marker"]
        watcher.close()
        s = restart(s, "sigterm")  # published: not again after another restart
        watcher = persistent_watcher(s, "ww-" + tag)
        marker(s, f"{tag}/marker", b"marker 2")
        assert [m.payload for m in watcher.wait(1)] == [b"marker 2"]
        watcher.close()
    finally:
        s.stop()


def test_a_will_due_while_the_server_was_down_goes_at_start(tmp_path):
    tag = uuid.uuid4().hex[:6]
    s = serve(tmp_path / "data")
    try:
        watcher = persistent_watcher(s, "ww-" + tag, f"{tag}/#")
        watcher.close()
        gone = leave_with_will(vanishing(s, "wd-" + tag, f"{tag}/will", delay=1, expiry=60))
        s.proc.kill()
        s.proc.wait()
        s.stop()
        time.sleep(max(0.0, gone + 1.2 - time.monotonic()))  # past its due time, the server down
        s = serve(s.data_dir)
        watcher = persistent_watcher(s, "ww-" + tag)
        marker(s, f"{tag}/marker", b"marker")
        assert [m.payload for m in watcher.wait(2)] == [b"gone wd-" + tag.encode(), b"marker"]
        watcher.close()
    finally:
        s.stop()


def test_a_session_resumed_after_a_restart_cancels_its_will_for_good(tmp_path):
    tag = uuid.uuid4().hex[:6]
    cid = "wk-" + tag
    s = serve(tmp_path / "data")
    try:
        watcher = persistent_watcher(s, "ww-" + tag, f"{tag}/#")
        watcher.close()
        gone = leave_with_will(vanishing(s, cid, f"{tag}/will", delay=3, expiry=60))
        s = restart(s, "sigkill")
        back = Raw(s.addresses["mqtt"], cid, version=5, clean_start=False, properties={"session_expiry_interval": 60})
        assert back.connack.session_present and time.monotonic() - gone < 3  # in time
        back.close()  # vanishes again, with no will this time (this connection has none)
        s = restart(s, "sigkill")  # the cancel is in the record: no will after this restart either
        time.sleep(max(0.0, gone + 3.2 - time.monotonic()))  # past the first will's due time
        watcher = persistent_watcher(s, "ww-" + tag)
        marker(s, f"{tag}/marker", b"marker")
        assert [m.payload for m in watcher.wait(1)] == [b"marker"]
        watcher.close()
    finally:
        s.stop()


def test_a_will_whose_publishing_a_kill_cut_short_goes_once(tmp_path):
    """A SIGKILL between the record noting a will on its way (``ends``) and
    that record without it: after the restart, a will found in the log from
    ``ends`` on is not sent again, one not found is sent. The two states are
    written as the door writes them (through the Kafka door), then the server
    is killed."""
    import base64
    import json

    from confluent_kafka import Producer

    tag = uuid.uuid4().hex[:6]
    s = serve(tmp_path / "data")
    try:
        watcher = persistent_watcher(s, "ww-" + tag, f"{tag}/#")
        watcher.close()
        due = time.time_ns() // 1_000_000
        p = Producer({"bootstrap.servers": s.bootstrap})
        offsets = []
        # cut short after the append: the will of "found" is in the log
        p.produce("mqtt-messages", b"gone found", key=f"{tag}/found".encode(), partition=0,
                  headers=[("mqtt-qos", b"1"), ("mqtt-will-id", f"{due}:found-{tag}".encode())],
                  on_delivery=lambda err, m: offsets.append(m.offset()))
        p.flush(scaled(10))
        for name, ends in (("found", offsets[0]), ("lost", offsets[0] + 1)):  # "lost": before its append
            will = {"topic": f"{tag}/{name}", "payload": base64.b64encode(b"gone " + name.encode()).decode(),
                    "qos": 1, "retain": 0, "props": {}, "due": due, "principal": None, "host": "*", "peer": "?",
                    "ends": [["mqtt-messages", 0, ends]]}
            record = {"v": 1, "proto": 5, "expiry": 60, "gone_at": due, "subs": [], "pos": [], "out": [], "in2": [],
                      "next_id": 0, "will": will}
            p.produce("mqtt-sessions", json.dumps(record).encode(), key=f"{name}-{tag}".encode())
        p.flush(scaled(10))
        del p  # not to retry its connection to the killed server
        s = restart(s, "sigkill")
        watcher = persistent_watcher(s, "ww-" + tag)
        marker(s, f"{tag}/marker", b"marker")
        assert [m.payload for m in watcher.wait(3)] == [b"gone found", b"gone lost", b"marker"]
        watcher.close()
    finally:
        s.stop()

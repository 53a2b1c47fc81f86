"""MQTT and HTTP with security on (the same users and ACLs as the Kafka door),
SIGHUP certificate reload, and ``umlog users`` / ``umlog acls`` on a data dir."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from helpers import scaled, stop_paho, wait_until

from .conftest import PASSWORDS, make_certs, umlog_cli


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _acl(secure, *args: str) -> None:
    r = umlog_cli("acls", "add", *args, "--data-dir", secure.data_dir)
    assert r.returncode == 0, r.stderr


class _Client:
    def __init__(self, address, v5: bool, user=None, password=None, tls_ca=None):
        self.v5 = v5
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=uuid.uuid4().hex[:12],
                             protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
        if user is not None:
            self.c.username_pw_set(user, password)
        if tls_ca is not None:
            self.c.tls_set(ca_certs=tls_ca)
        self.connacks, self.subacks, self.pubacks = [], [], []
        self.c.on_connect = lambda c, u, flags, reason, props: self.connacks.append(reason)
        self.c.on_subscribe = lambda c, u, mid, reasons, props: self.subacks.append(reasons)
        self.c.on_publish = lambda c, u, mid, reason, props: self.pubacks.append(reason)
        self.c.connect(address[0], address[1], keepalive=30)
        self.c.loop_start()
        wait_until(lambda: self.connacks, scaled(10), "CONNACK")

    def close(self):
        self.c.disconnect()
        stop_paho(self.c)


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5"])
def test_mqtt_bad_password_refused(secure, v5):
    c = _Client(secure.addresses["mqtt"], v5, "alice", "wrong")
    try:
        reason = c.connacks[0]  # paho reports 3.1.1's return code 4 as the MQTT 5 reason 0x86
        assert reason.is_failure and reason.value == 0x86
    finally:
        c.close()


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5"])
def test_mqtt_publish_and_subscribe_need_acls(secure, v5):
    c = _Client(secure.addresses["mqtt"], v5, "bob", PASSWORDS["bob"])
    try:
        assert not c.connacks[0].is_failure
        c.c.subscribe(f"bob/{uuid.uuid4().hex}", qos=1)
        wait_until(lambda: c.subacks, scaled(10), "SUBACK")
        assert c.subacks[0][0].value == (0x87 if v5 else 0x80)
        c.c.publish("bob/x", b"denied", qos=1)
        wait_until(lambda: c.pubacks, scaled(10), "PUBACK")
        if v5:
            assert c.pubacks[0].value == 0x87
    finally:
        c.close()


def test_mqtts_publish_allowed_then_read_back(secure):
    _acl(secure, "--allow", "User:alice", "--operation", "write", "--operation", "read", "--topic", "mqtt-messages")
    # a running server picks ACLs made on the data dir up within a second
    topic = f"alice/{uuid.uuid4().hex}"
    c = _Client(secure.addresses["mqtt-mqtts"], True, "alice", PASSWORDS["alice"], tls_ca=secure.certs["ca"])
    try:
        got = []
        c.c.on_message = lambda cl, u, m: got.append(m.payload)

        def subscribed():
            n = len(c.subacks)
            c.c.subscribe(topic, qos=1)
            wait_until(lambda: len(c.subacks) > n, scaled(10), "SUBACK")
            return c.subacks[-1][0].value == 1
        wait_until(subscribed, scaled(20), "SUBSCRIBE allowed after umlog acls add")
        c.c.publish(topic, b"hello", qos=1)
        wait_until(lambda: got, scaled(10), "the message back")
        assert got == [b"hello"]
    finally:
        c.close()


def _vanish_with_delayed_will(address, user: str, topic: str, delay: int) -> None:
    """An MQTT 5 user with a session and a will ``delay`` s late that closes its
    socket without DISCONNECT."""
    from umlog.server.mqtt.codec import Connect, PacketReader, Will, encode

    s = socket.create_connection(address)
    s.settimeout(scaled(10))
    s.sendall(encode(Connect(_name(user), version=5, clean_start=True, username=user,
                             password=PASSWORDS[user].encode(), properties={"session_expiry_interval": 60},
                             will=Will(topic, b"gone " + user.encode(), 1,
                                       properties={"will_delay_interval": delay})), 5))
    reader = PacketReader(version=5)
    packets = []
    while not packets:
        data = s.recv(65536)
        assert data, "closed before CONNACK"
        reader.feed(data)
        packets = list(reader.packets())
    assert packets[0].reason == 0
    s.close()


def test_mqtt_delayed_will_needs_write_when_it_goes(secure):
    """A delayed will is checked against its user's ACLs when it goes: the super
    user's goes, bob's (no WRITE) does not."""
    tag = uuid.uuid4().hex[:8]
    w = _Client(secure.addresses["mqtt"], True, "admin", PASSWORDS["admin"])
    try:
        got = []
        w.c.on_message = lambda cl, u, m: got.append(m.payload)
        w.c.subscribe(f"{tag}/#", qos=1)
        wait_until(lambda: w.subacks, scaled(10), "SUBACK")
        _vanish_with_delayed_will(secure.addresses["mqtt"], "bob", f"{tag}/bob", 1)
        _vanish_with_delayed_will(secure.addresses["mqtt"], "admin", f"{tag}/admin", 1)
        wait_until(lambda: got, scaled(10), "the super user's will")
        time.sleep(0.5)  # bob's was due as soon
        w.c.publish(f"{tag}/marker", b"marker", qos=1)
        wait_until(lambda: len(got) >= 2, scaled(10), "the marker")
        assert got == [b"gone admin", b"marker"]
    finally:
        w.close()


def _http(address, method, path, user=None, password=None, ca=None, body=None):
    if ca is not None:
        conn = http.client.HTTPSConnection(address[0], address[1], timeout=scaled(10),
                                           context=ssl.create_default_context(cafile=ca))
    else:
        conn = http.client.HTTPConnection(address[0], address[1], timeout=scaled(10))
    headers = {"Content-Type": "application/vnd.kafka.json.v2+json"}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, r.getheader("WWW-Authenticate"), json.loads(data) if data else None


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_http_401_403(secure, tls):
    address = secure.addresses["http-https" if tls else "http"]
    ca = secure.certs["ca"] if tls else None
    assert _http(address, "GET", "/healthz", ca=ca)[0] == 200
    status, challenge, body = _http(address, "GET", "/topics", ca=ca)
    assert status == 401 and challenge.startswith("Basic") and body["error_code"] == 401
    assert _http(address, "GET", "/topics", "alice", "wrong", ca=ca)[0] == 401
    topic = _name("h")
    status, _, body = _http(address, "POST", f"/topics/{topic}", "bob", PASSWORDS["bob"], ca=ca,
                            body={"records": [{"value": 1}]})
    assert status == 403 and "WRITE" in body["message"]
    status, _, names = _http(address, "GET", "/topics", "admin", PASSWORDS["admin"], ca=ca)
    assert status == 200 and isinstance(names, list)
    assert _http(address, "GET", "/metrics", "bob", PASSWORDS["bob"], ca=ca)[0] == 403


def test_sighup_reloads_certificates_and_keeps_connections(secure):
    address = secure.addresses["http-https"]
    ctx = ssl.create_default_context(cafile=secure.certs["ca"])
    kept = http.client.HTTPSConnection(address[0], address[1], timeout=scaled(10), context=ctx)
    kept.request("GET", "/healthz")
    assert kept.getresponse().read()

    def served_serial() -> int:
        with socket.create_connection(address, timeout=scaled(10)) as s:
            with ctx.wrap_socket(s, server_hostname="localhost") as t:
                der = t.getpeercert(binary_form=True)
        return int.from_bytes(der, "big") % 1_000_003  # a fingerprint of the certificate

    before = served_serial()
    renewed = make_certs(secure.cert_dir, serial=77, server_name="renewed")
    shutil.copy(renewed["cert"], secure.certs["cert"] + ".new")
    shutil.copy(renewed["key"], secure.certs["key"] + ".new")
    os.replace(secure.certs["key"] + ".new", secure.certs["key"])
    os.replace(secure.certs["cert"] + ".new", secure.certs["cert"])
    secure.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: served_serial() != before, scaled(20), "the new certificate served")
    kept.request("GET", "/healthz")  # the connection made before the reload still works
    assert json.loads(kept.getresponse().read()) == {"status": "ok"}
    kept.close()


def test_cli_users_and_acls_on_a_data_dir(tmp_path):
    data = str(tmp_path / "d")
    os.makedirs(os.path.join(data, "meta"))
    r = umlog_cli("users", "add", "dave", "--password-stdin", "--data-dir", data, input="s3cret\n")
    assert r.returncode == 0, r.stderr
    assert umlog_cli("users", "add", "dave", "--password-stdin", "--data-dir", data, input="x\n").returncode == 1
    listed = json.loads(umlog_cli("users", "list", "--json", "--data-dir", data).stdout)
    assert listed == [{"user": "dave", "mechanisms": {"SCRAM-SHA-256": 8192, "SCRAM-SHA-512": 8192}}]
    with open(os.path.join(data, "meta", "users.json")) as f:
        raw = f.read()
    assert "s3cret" not in raw and "stored_key" in raw
    assert umlog_cli("users", "passwd", "dave", "--password-stdin", "--data-dir", data, input="n3w\n").returncode == 0
    from umlog.server.security.users import UserStore

    store = UserStore(data)
    assert store.verify_plain("dave", "n3w") and not store.verify_plain("dave", "s3cret")
    r = umlog_cli("acls", "add", "--allow", "User:dave", "--operation", "read", "--topic", "logs-", "--prefixed",
                  "--data-dir", data)
    assert r.returncode == 0 and "PREFIXED" in r.stdout
    acls = json.loads(umlog_cli("acls", "list", "--json", "--data-dir", data).stdout)
    assert acls == [{"resource_type": "TOPIC", "name": "logs-", "pattern_type": "PREFIXED", "principal": "User:dave",
                     "host": "*", "operation": "READ", "permission": "ALLOW"}]
    from umlog.server.security.acls import AclStore, Authorizer

    az = Authorizer(AclStore(data))
    assert az.authorize("User:dave", "READ", "TOPIC", "logs-app") and az.authorize("User:dave", "DESCRIBE", "TOPIC",
                                                                                     "logs-app")
    assert not az.authorize("User:dave", "WRITE", "TOPIC", "logs-app")
    assert umlog_cli("acls", "remove", "--principal", "User:dave", "--data-dir", data).returncode == 0
    assert json.loads(umlog_cli("acls", "list", "--json", "--data-dir", data).stdout) == []
    assert umlog_cli("users", "remove", "dave", "--data-dir", data).returncode == 0
    assert json.loads(umlog_cli("users", "list", "--json", "--data-dir", data).stdout) == []

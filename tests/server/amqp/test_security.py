"""The AMQP door with ``[security]`` on: PLAIN logins checked against the data
dir's users, and every publish, declare and consume asked of the ACLs (the
same users and ACLs as every other door), with pika against a real server."""

from __future__ import annotations

import os

import pika
import pytest
from helpers import scaled, wait_until

from server.security.conftest import PASSWORDS, SecureServer
from umlog.server.security.acls import AclBinding, AclStore
from umlog.server.security.users import UserStore

QUEUE = "secured-orders"


@pytest.fixture(scope="module")
def secure_amqp(tmp_path_factory):
    """Users admin (super user), alice and bob; alice may publish through the
    default exchange and read the queue ``QUEUE``; bob has no ACL."""
    base = tmp_path_factory.mktemp("amqp-secure")
    data = str(base / "data")
    os.makedirs(os.path.join(data, "meta"))
    users = UserStore(data)  # the stores ``umlog users`` and ``umlog acls`` write
    for user, pw in PASSWORDS.items():
        users.set_password(user, pw, iterations=4096)
    AclStore(data).add([AclBinding("TOPIC", "amq.default", "LITERAL", "User:alice", "*", "WRITE", "ALLOW"),
                        AclBinding("GROUP", QUEUE, "LITERAL", "User:alice", "*", "READ", "ALLOW")])
    config = base / "umlog.toml"
    config.write_text(f"""
[server]
data_dir = "{data}"

[kafka]
listen = ["PLAINTEXT://127.0.0.1:0"]

[amqp]
listen = "127.0.0.1:0"

[http]
listen = ["http://127.0.0.1:0"]

[security]
super_users = ["User:admin"]
""")
    server = SecureServer(str(config), str(base))
    try:
        yield server
    finally:
        server.stop()


def _connect(server, user: str, password: str | None = None) -> pika.BlockingConnection:
    host, port = server.addresses["amqp"]
    creds = pika.PlainCredentials(user, PASSWORDS.get(user, "") if password is None else password)
    return pika.BlockingConnection(pika.ConnectionParameters(host, port, credentials=creds,
                                                             socket_timeout=scaled(10)))


def test_a_wrong_password_or_unknown_user_is_refused(secure_amqp):
    for user, password in (("alice", "wrong"), ("mallory", "x")):
        with pytest.raises(pika.exceptions.ProbableAuthenticationError) as e:
            _connect(secure_amqp, user, password)
        assert "403" in str(e.value) and "ACCESS_REFUSED" in str(e.value)


def test_acls_decide_who_publishes_and_who_consumes(secure_amqp):
    with _connect(secure_amqp, "admin") as c:
        c.channel().queue_declare(QUEUE, durable=True)
    with _connect(secure_amqp, "alice") as c:
        ch = c.channel()
        ch.confirm_delivery()
        ch.basic_publish("", QUEUE, b"from alice")
        assert wait_until(lambda: ch.basic_get(QUEUE, auto_ack=True)[2], 10, "alice's message") == b"from alice"
        ch.basic_publish("", QUEUE, b"for the consumer")
        for m, _, body in ch.consume(QUEUE, auto_ack=True, inactivity_timeout=scaled(10)):
            assert m is not None and body == b"for the consumer"
            break
        ch.cancel()
    with _connect(secure_amqp, "bob") as c:
        ch = c.channel()
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.basic_publish("", QUEUE, b"from bob")
        assert e.value.reply_code == 403 and "write access to topic 'amq.default'" in e.value.reply_text
        for refused in (lambda ch: ch.basic_consume(QUEUE, lambda *a: None),
                        lambda ch: ch.basic_get(QUEUE),
                        lambda ch: ch.queue_declare(QUEUE, durable=True),
                        lambda ch: ch.exchange_declare("bobs-exchange", "fanout")):
            ch = c.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
                refused(ch)
            assert e.value.reply_code == 403, e.value
        # the connection itself stays usable: only those channels were closed
        assert c.is_open
    with _connect(secure_amqp, "admin") as c:  # bob's publish never became a message
        ch = c.channel()
        assert ch.queue_declare(QUEUE, durable=True).method.message_count == 0

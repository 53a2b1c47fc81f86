"""Other AMQP clients and other doors on the same log: pika's select connection,
aio-pika, Debian's amqp-tools, and kcat through the Kafka door."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import aio_pika
import pika
import pytest
from helpers import require_tool, scaled, subprocess_env

from server.amqp.amqp_helpers import connect, name, params


@pytest.fixture(scope="module")
def amqp_tools():
    return require_tool(shutil.which("amqp-publish") and shutil.which("amqp-consume"), "amqp-tools",
                        "apt-get install amqp-tools")


def test_select_connection_publishes_with_confirms_and_consumes(server):
    q = name("select")
    got, confirms = [], []
    n = 100

    def on_open(conn):
        conn.channel(on_open_callback=on_channel)

    def on_channel(ch):
        ch.confirm_delivery(lambda frame: confirms.append(frame.method))
        ch.queue_declare(q, callback=lambda _: declared(ch))

    def declared(ch):
        for i in range(n):
            ch.basic_publish("", q, b"%d" % i)
        ch.basic_qos(prefetch_count=10, callback=lambda _: ch.basic_consume(q, on_message))

    def on_message(ch, method, props, body):
        got.append(body)
        ch.basic_ack(method.delivery_tag)
        if len(got) == n:
            ch.connection.close()

    conn = pika.SelectConnection(params(server), on_open_callback=on_open)
    conn.ioloop.call_later(scaled(30), conn.ioloop.stop)  # the bound of a failure
    conn.add_on_close_callback(lambda *a: conn.ioloop.stop())
    try:
        conn.ioloop.start()
    finally:
        conn.ioloop.close()  # its wake-up socket pair
    assert got == [b"%d" % i for i in range(n)]
    # confirms may come as "multiple": every sequence number is covered, all acks
    assert all(isinstance(m, pika.spec.Basic.Ack) for m in confirms)
    assert max(m.delivery_tag for m in confirms) == n


def test_aio_pika_round_trip(server):
    host, port = server.addresses["amqp"]

    async def run():
        conn = await aio_pika.connect_robust(f"amqp://guest:guest@{host}:{port}/", timeout=scaled(10))
        async with conn:
            ch = await conn.channel(publisher_confirms=True)
            ex = await ch.declare_exchange(name("aio"), aio_pika.ExchangeType.DIRECT, durable=True)
            q = await ch.declare_queue(name("aio-q"), durable=True)
            await q.bind(ex, "k")
            for i in range(20):
                await ex.publish(aio_pika.Message(b"%d" % i, headers={"f": 1.5, "i": i}, priority=3,
                                                  delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key="k")
            out = []
            async with q.iterator() as it:
                async for msg in it:
                    async with msg.process():
                        out.append((msg.body, msg.headers["f"], msg.headers["i"], msg.priority))
                    if len(out) == 20:
                        break
            return out

    out = asyncio.run(asyncio.wait_for(run(), scaled(60)))
    assert out == [(b"%d" % i, 1.5, i, 3) for i in range(20)]


def test_amqp_tools_publish_and_consume(server, amqp_tools):
    host, port = server.addresses["amqp"]
    q = name("tools")
    with connect(server) as c:
        c.channel().queue_declare(q)
    url = f"amqp://guest:guest@{host}:{port}"
    for i in range(3):
        subprocess.run(["amqp-publish", "--url", url, "-r", q, "-C", "text/plain", "-b", f"hello {i}"],
                       check=True, timeout=scaled(30), env=subprocess_env())
    out = subprocess.run(["amqp-consume", "--url", url, "-q", q, "-c", "3", "cat"], check=True,
                         capture_output=True, timeout=scaled(30), env=subprocess_env())
    assert out.stdout == b"hello 0hello 1hello 2"


def test_a_kafka_produce_reaches_a_bound_queue_and_a_publish_is_a_record(server, kcat_bin):
    ex, q = name("kx"), name("kq")
    with connect(server) as c:
        ch = c.channel()
        ch.exchange_declare(ex, "direct", durable=True)
        ch.queue_declare(q)
        ch.queue_bind(q, ex, "k1")
        subprocess.run([kcat_bin, "-b", server.bootstrap, "-P", "-t", ex, "-K", "|", "-H", "trace=abc"],
                       input=b"k1|from kafka\nk2|not routed\n", check=True, timeout=scaled(30))
        m, p, body = next(ch.consume(q, auto_ack=True, inactivity_timeout=scaled(10)))
        ch.cancel()
        assert body == b"from kafka" and m.exchange == ex and m.routing_key == "k1"
        assert p.headers == {"trace": "abc"}  # a Kafka header is a long string of the table
        ch.basic_publish(ex, "k9", b"from amqp", pika.BasicProperties(content_type="text/plain", message_id="m9"))
    out = subprocess.run([kcat_bin, "-b", server.bootstrap, "-C", "-t", ex, "-o", "2", "-c", "1", "-e",
                          "-f", "%k %s %h"], capture_output=True, check=True, timeout=scaled(30))
    text = out.stdout.decode()
    assert text.startswith("k9 from amqp ") and "content-type=text/plain" in text and "amqp-message-id=m9" in text

"""The AMQP door across restarts (SIGTERM and SIGKILL) and on bad input."""

from __future__ import annotations

import signal
import time

import pika
import pytest
from helpers import scaled
from pamqp import commands as cmd

from server.amqp.amqp_helpers import Raw, connect, drain, name
from server.kafka.serve_process import ServeProcess


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_durable_queues_and_persistent_messages_survive_a_restart(tmp_path, how):
    data = str(tmp_path / "data")
    s = ServeProcess(data, "--amqp", "127.0.0.1:0")
    try:
        with connect(s) as c:
            ch = c.channel()
            ch.confirm_delivery()
            ch.exchange_declare("orders", "topic", durable=True)
            ch.queue_declare("billing", durable=True, arguments={"x-queue-type": "quorum"})
            ch.queue_bind("billing", "orders", "eu.#")
            ch.queue_declare("scratch")  # not durable: gone after the restart
            for i in range(10):
                ch.basic_publish("orders", "eu.de" if i % 2 == 0 else "us.ny", b"%d" % i,
                                 pika.BasicProperties(delivery_mode=2, message_id=str(i)))
        consumer = connect(s)
        cch = consumer.channel()
        got = [cch.basic_get("billing") for _ in range(3)]
        assert [b for _, _, b in got] == [b"0", b"2", b"4"]
        cch.basic_ack(got[0][0].delivery_tag)  # "0" acked; "2" and "4" held unacked
        # the ack is written before a later method on the channel is answered
        cch.queue_declare("billing", passive=True)
        cch.queue_declare("lease", durable=True, arguments={"x-expires": 1500})  # unused from now on
        if how == "SIGKILL":
            s.proc.send_signal(signal.SIGKILL)
            s.proc.wait(scaled(10))
        s.stop()
        try:
            consumer.close()
        except Exception:
            pass
        s = ServeProcess(data, "--amqp", "127.0.0.1:0")
        with connect(s) as c:
            ch = c.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker):
                ch.queue_declare("scratch", passive=True)
            ch = c.channel()
            assert ch.queue_declare("billing", passive=True).method.message_count == 4
            got = drain(ch, "billing", 4)
            assert [(b, m.redelivered) for m, _, b in got] == [(b"2", True), (b"4", True), (b"6", False),
                                                                (b"8", False)]
            assert got[0][1].message_id == "2" and got[0][1].delivery_mode == 2
            for m, _, _ in got:
                ch.basic_ack(m.delivery_tag)
            ch.confirm_delivery()
            ch.basic_publish("orders", "eu.fr", b"after")  # the binding survived too
            assert ch.basic_get("billing", auto_ack=True)[2] == b"after"
            # an x-expires queue's lease starts again at the start: unused since, it is gone
            time.sleep(scaled(2.0))
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
                c.channel().queue_declare("lease", passive=True)
            assert e.value.reply_code == 404
    finally:
        s.stop()


def test_a_bad_protocol_header_gets_ours_and_a_close(server):
    r = Raw(server)
    try:
        r.send(b"AMQP\x01\x01\x00\x0a")
        assert r.read_raw(8) == b"AMQP\x00\x00\x09\x01"
        assert r.closed()
    finally:
        r.close()
    r = Raw(server)
    try:
        r.send(b"GET / HTTP/1.1\r\n\r\n")
        assert r.read_raw(8) == b"AMQP\x00\x00\x09\x01"
        assert r.closed()
    finally:
        r.close()


@pytest.mark.parametrize("bad,code", [
    (b"\x01\x00\x00\x00\x00\x00\x04\x00\x0a\x00\x0b\x00", 501),  # frame end is not 0xCE
    (b"\x07\x00\x00\x00\x00\x00\x00\xce", 501),  # unknown frame type
    (b"\x01\x00\x00\x00\x10\x00\x00" + b"\x00" * 16, 501),  # over frame_max (4096 negotiated)
    (b"\x01\x00\x05\x00\x00\x00\x04\x00\x3c\x00\x28\xce", 504),  # basic.publish on a channel never opened
    (b"\x02\x00\x00\x00\x00\x00\x0e" + b"\x00\x3c" + b"\x00" * 12 + b"\xce", 505),  # content header on channel 0
])
def test_garbage_frames_close_the_connection_with_the_right_code(server, bad, code):
    r = Raw(server)
    try:
        r.handshake(frame_max=4096)
        r.send(bad)
        f = r.frame()
        assert isinstance(f, cmd.Connection.Close), f
        assert f.reply_code == code, f.reply_text
        r.method(0, cmd.Connection.CloseOk())
        assert r.closed()
    finally:
        r.close()


def test_methods_out_of_order(server):
    r = Raw(server)
    try:
        r.send(b"AMQP\x00\x00\x09\x01")
        assert isinstance(r.frame(), cmd.Connection.Start)
        r.method(0, cmd.Connection.Open(virtual_host="/"))  # before start-ok: dropped at once
        assert r.closed()
    finally:
        r.close()
    r = Raw(server)
    try:
        r.handshake()
        r.method(1, cmd.Channel.Open())
        assert isinstance(r.frame(), cmd.Channel.OpenOk)
        r.method(1, cmd.Basic.Publish(exchange="", routing_key="x"))
        r.method(1, cmd.Queue.Declare(queue=name("q")))  # a method where a content header must come
        f = r.frame()
        assert isinstance(f, cmd.Connection.Close) and f.reply_code == 505
    finally:
        r.close()


def test_a_channel_error_leaves_other_channels_working(server):
    r = Raw(server)
    try:
        r.handshake()
        for n in (1, 2):
            r.method(n, cmd.Channel.Open())
            assert isinstance(r.frame(), cmd.Channel.OpenOk)
        r.method(1, cmd.Queue.Declare(queue=name("missing"), passive=True))
        f = r.frame()
        assert isinstance(f, cmd.Channel.Close) and f.reply_code == 404 and (f.class_id, f.method_id) == (50, 10)
        r.method(1, cmd.Queue.Declare(queue=name("ignored")))  # ignored until close-ok
        r.method(1, cmd.Channel.CloseOk())
        q = name("fine")
        r.method(2, cmd.Queue.Declare(queue=q))
        ok = r.frame()
        assert isinstance(ok, cmd.Queue.DeclareOk) and ok.queue == q
    finally:
        r.close()


def test_heartbeats_are_sent(server):
    r = Raw(server)
    try:
        r.send(b"AMQP\x00\x00\x09\x01")
        r.frame()
        r.method(0, cmd.Connection.StartOk(client_properties={}, mechanism="PLAIN", response="\0guest\0guest"))
        tune = r.frame()
        r.method(0, cmd.Connection.TuneOk(channel_max=tune.channel_max, frame_max=131072, heartbeat=1))
        r.method(0, cmd.Connection.Open(virtual_host="/"))
        assert isinstance(r.frame(), cmd.Connection.OpenOk)
        r.sock.settimeout(scaled(10))
        head = r.read_raw(8)
        assert head == b"\x08\x00\x00\x00\x00\x00\x00\xce"
    finally:
        r.close()


def test_unknown_credentials_are_accepted_without_security_and_vhosts_are_one(server):
    host, port = server.addresses["amqp"]
    with pika.BlockingConnection(pika.ConnectionParameters(host, port, credentials=pika.PlainCredentials("a", "b"))):
        pass
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as e:
        pika.BlockingConnection(pika.ConnectionParameters(host, port, virtual_host="other"))
    assert "(530)" in str(e.value)

"""The rest of the AMQP door's specification with real clients on the module's
server: capabilities and consumer cancel notification, exchange and queue
declare/delete options, maxlen dead letters, stream offsets, global prefetch,
bodies at frame_max boundaries and of 10 MB, the default exchange's topic."""

from __future__ import annotations

import datetime
import os
import struct
import subprocess
import time

import pika
import pytest
from helpers import scaled, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import commands as cmd

from server.amqp.amqp_helpers import Raw, connect, drain, name


def test_start_announces_plain_and_the_capabilities(server):
    r = Raw(server)
    try:
        r.send(b"AMQP\x00\x00\x09\x01")
        start = r.frame()
        assert isinstance(start, cmd.Connection.Start)
        assert "PLAIN" in start.mechanisms.split()
        caps = start.server_properties["capabilities"]
        for cap in ("publisher_confirms", "basic.nack", "consumer_cancel_notify"):
            assert caps[cap] is True, cap
    finally:
        r.close()


def test_deleting_a_consumed_queue_sends_basic_cancel(server):
    q = name("cancelled")
    cancelled = []
    with connect(server) as c:
        ch = c.channel()
        ch.queue_declare(q)
        ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
        tag = ch.basic_consume(q, lambda *a: None)
        with connect(server) as other:
            assert other.channel().queue_delete(q).method.message_count == 0
        wait_until(lambda: c.process_data_events(0.05) or cancelled, what="basic.cancel from the server")
        assert cancelled == [tag]
        assert ch.is_open  # a notification, not a channel error


def test_exchange_passive_auto_delete_and_if_unused(server):
    tag = name("xd")
    with connect(server) as c:
        ch = c.channel()
        ch.exchange_declare(f"{tag}.x", "direct")
        ch.exchange_declare(f"{tag}.x", "direct", passive=True)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.exchange_declare(f"{tag}.missing", "direct", passive=True)
        assert e.value.reply_code == 404
        ch = c.channel()
        q = ch.queue_declare(f"{tag}-q").method.queue
        ch.queue_bind(q, f"{tag}.x", "k")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.exchange_delete(f"{tag}.x", if_unused=True)
        assert e.value.reply_code == 406
        ch = c.channel()
        ch.queue_unbind(q, f"{tag}.x", "k")
        ch.exchange_delete(f"{tag}.x", if_unused=True)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.exchange_declare(f"{tag}.x", "direct", passive=True)
        assert e.value.reply_code == 404
        # auto-delete: gone when its last binding goes, not before
        ch = c.channel()
        ch.exchange_declare(f"{tag}.ad", "fanout", auto_delete=True)
        q2 = ch.queue_declare(f"{tag}-q2").method.queue
        ch.queue_bind(q, f"{tag}.ad")
        ch.queue_bind(q2, f"{tag}.ad")
        ch.queue_unbind(q, f"{tag}.ad")
        ch.exchange_declare(f"{tag}.ad", "fanout", passive=True)
        ch.queue_delete(q2)  # its binding goes with it
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.exchange_declare(f"{tag}.ad", "fanout", passive=True)
        assert e.value.reply_code == 404


def test_queue_delete_if_unused_if_empty_and_declare_ok_counts(server):
    q = name("qd")
    with connect(server) as c:
        ch = c.channel()
        ch.queue_declare(q)
        for i in range(3):
            ch.basic_publish("", q, b"%d" % i)
        ch.basic_consume(q, lambda *a: None)  # prefetch 0: takes the three, unacked
        other = c.channel()
        wait_until(lambda: other.queue_declare(q, passive=True).method.consumer_count == 1, what="one consumer")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            other.queue_delete(q, if_unused=True)
        assert e.value.reply_code == 406
        ch.close()  # the three come back
        ch = c.channel()
        ok = ch.queue_declare(q, passive=True).method
        assert (ok.message_count, ok.consumer_count) == (3, 0)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.queue_delete(q, if_empty=True)
        assert e.value.reply_code == 406
        ch = c.channel()
        assert ch.queue_delete(q, if_unused=True).method.message_count == 3
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.queue_declare(q, passive=True)
        assert e.value.reply_code == 404


def test_max_length_dead_letters_the_oldest_with_reason_maxlen(server):
    tag = name("mldl")
    with connect(server) as c:
        ch = c.channel()
        ch.exchange_declare(f"{tag}.dlx", "fanout")
        dlq = ch.queue_declare(f"{tag}-dlq").method.queue
        ch.queue_bind(dlq, f"{tag}.dlx")
        q = ch.queue_declare(f"{tag}-q", arguments={"x-max-length": 2,
                                                    "x-dead-letter-exchange": f"{tag}.dlx"}).method.queue
        before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        for i in range(5):
            ch.basic_publish("", q, b"%d" % i)
        assert ch.queue_declare(q, passive=True).method.message_count == 2
        assert [ch.basic_get(q, auto_ack=True)[2] for _ in range(2)] == [b"3", b"4"]
        dead = drain(ch, dlq, 3, auto_ack=True)
    assert [b for _, _, b in dead] == [b"0", b"1", b"2"]
    d = dead[0][1].headers["x-death"][0]
    assert (d["reason"], d["queue"], d["count"], d["exchange"], d["routing-keys"]) == ("maxlen", q, 1, "", [q])
    assert isinstance(d["time"], datetime.datetime)
    assert before - datetime.timedelta(seconds=1) <= d["time"].replace(tzinfo=datetime.UTC) \
        <= datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)


def _stream_bodies(c, ch, s, spec, n, publish_after=()) -> list[bytes]:
    """The first n bodies a consumer of stream s from x-stream-offset spec gets,
    publishing publish_after once it consumes."""
    out = []

    def on_message(ch_, m, p, b):
        out.append(b)
        ch.basic_ack(m.delivery_tag)

    tag = ch.basic_consume(s, on_message, arguments={"x-stream-offset": spec})
    for body in publish_after:
        ch.basic_publish("", s, body)
    wait_until(lambda: c.process_data_events(0.05) or len(out) >= n, what=f"{n} from {spec!r}")
    c.process_data_events(0.2)  # and no more
    ch.basic_cancel(tag)
    return out


def test_stream_offsets_last_next_and_timestamp(server):
    s = name("stream-at")
    with connect(server) as c:
        ch = c.channel()
        ch.confirm_delivery()
        ch.queue_declare(s, durable=True, arguments={"x-queue-type": "stream"})
        ch.basic_qos(prefetch_count=100)
        for i in range(3):
            ch.basic_publish("", s, b"old%d" % i)
        time.sleep(1.1)  # the scenario is time passing: a timestamp between the two batches (ms in the log)
        cut = datetime.datetime.now(datetime.UTC)
        time.sleep(0.01)
        for i in range(2):
            ch.basic_publish("", s, b"new%d" % i)
        assert _stream_bodies(c, ch, s, cut.replace(tzinfo=None), 2) == [b"new0", b"new1"]
        assert _stream_bodies(c, ch, s, "last", 1) == [b"new1"]
        assert _stream_bodies(c, ch, s, "next", 1, publish_after=[b"later"]) == [b"later"]
        assert _stream_bodies(c, ch, s, "first", 6) == [b"old0", b"old1", b"old2", b"new0", b"new1", b"later"]


def test_global_prefetch_bounds_all_consumers_of_a_channel(server):
    qs = [name("gq"), name("gq")]
    with connect(server) as c:
        ch = c.channel()
        for q in qs:
            ch.queue_declare(q)
            for i in range(5):
                ch.basic_publish("", q, b"%d" % i)
        ch.basic_qos(prefetch_count=3, global_qos=True)
        got = []
        for q in qs:
            ch.basic_consume(q, lambda ch_, m, p, b: got.append(m))
        wait_until(lambda: c.process_data_events(0.05) or len(got) >= 3, what="3 deliveries")
        c.process_data_events(0.3)
        assert len(got) == 3
        ch.basic_ack(0, multiple=True)
        wait_until(lambda: c.process_data_events(0.05) or len(got) >= 6, what="3 more")
        c.process_data_events(0.3)
        assert len(got) == 6


@pytest.mark.parametrize("frame_max", [4096, 131072])
def test_bodies_at_frame_max_boundaries_and_of_10_mb(server, frame_max):
    q = name("sizes")
    room = frame_max - 8  # a body frame's payload
    sizes = [0, 1, room - 1, room, room + 1, 2 * room, 2 * room + 1]
    if frame_max == 131072:
        sizes.append(10 * 1024 * 1024)
    bodies = [os.urandom(n) for n in sizes]
    with connect(server, frame_max=frame_max) as c:
        ch = c.channel()
        ch.confirm_delivery()
        ch.queue_declare(q)
        for b in bodies:
            ch.basic_publish("", q, b)
        got = drain(ch, q, len(bodies), auto_ack=True, timeout=30)
        assert [len(b) for _, _, b in got] == sizes
        assert [b for _, _, b in got] == bodies
        ch.queue_delete(q)


def test_the_default_exchange_is_the_topic_amq_default(server, kcat_bin):
    q = name("dflt")
    with connect(server) as c:
        ch = c.channel()
        ch.confirm_delivery()
        ch.queue_declare(q)
        ch.basic_publish("", q, b"to the default", pika.BasicProperties(headers={"h": "v"}))
        # a Kafka record in amq.default with the queue's name as key reaches the queue
        subprocess.run([kcat_bin, "-b", server.bootstrap, "-P", "-t", "amq.default", "-K", "|"],
                       input=f"{q}|from kafka\n".encode(), check=True, timeout=scaled(30))
        got = drain(ch, q, 2, auto_ack=True)
        assert [b for _, _, b in got] == [b"to the default", b"from kafka"]
        assert got[1][0].exchange == "" and got[1][0].routing_key == q
    out = subprocess.run([kcat_bin, "-b", server.bootstrap, "-C", "-t", "amq.default", "-o", "beginning", "-e",
                          "-f", "%k|%s\n"], capture_output=True, check=True, timeout=scaled(30))
    assert f"{q}|to the default".encode() in out.stdout.splitlines()


@pytest.mark.parametrize("send,code", [
    (lambda r: r.method(0, cmd.Queue.Declare(queue="x")), 504),  # a channel's method on channel 0
    (lambda r: r.method(1, cmd.Channel.Open()), 504),  # channel.open on an open channel
    (lambda r: r.send(b"\x08\x00\x01\x00\x00\x00\x00\xce"), 501),  # a heartbeat on channel 1
    (lambda r: r.send(b"\x01\x00\x01\x00\x00\x00\x05\x00\x32\x00\x0a\x00\xce"), 501),  # queue.declare cut short
    (lambda r: r.send(b"\x01\x00\x01\x00\x00\x00\x06\x00\x3c\x00\x50\x00\x00\xce"), 501),  # basic.ack cut short
    (lambda r: r.method(1, cmd.Exchange.Declare(exchange=name("x"), exchange_type="nope")), 503),
], ids=["method-on-channel-0", "channel-open-twice", "heartbeat-on-channel-1", "declare-cut-short", "ack-cut-short",
        "unknown-exchange-type"])
def test_more_connection_errors_and_their_codes(server, send, code):
    r = Raw(server)
    try:
        r.handshake(frame_max=4096)
        r.method(1, cmd.Channel.Open())
        assert isinstance(r.frame(), cmd.Channel.OpenOk)
        send(r)
        f = r.frame()
        assert isinstance(f, cmd.Connection.Close), f
        assert f.reply_code == code, f.reply_text
    finally:
        r.close()


_METHODS = [(c, m) for c, ms in {10: (10, 11, 20, 21, 30, 31, 40, 41, 50, 51, 60, 61, 70), 20: (10, 11, 20, 21, 40, 41),
                                 40: (10, 11, 20, 21, 30, 31, 40, 41), 50: (10, 11, 20, 21, 30, 31, 40, 41, 50, 51),
                                 60: (10, 11, 20, 21, 30, 31, 40, 50, 60, 70, 71, 72, 80, 90, 100, 110, 111, 120),
                                 85: (10, 11), 90: (10, 11)}.items() for m in ms]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(st.tuples(st.sampled_from([1, 1, 1, 2, 3, 8, 9]), st.sampled_from([0, 1, 2]),
                                 st.sampled_from(_METHODS), st.binary(max_size=12) | st.binary(max_size=60)),
                       min_size=1, max_size=4))
def test_garbage_after_the_handshake_never_gets_an_internal_error_nor_harms_the_server(server, frames):
    """Frames of every type with methods of every class and random arguments: the
    server answers, closes a channel or closes the connection with a protocol
    code, never 541, and serves the next connection."""
    r = Raw(server)
    try:
        r.handshake(frame_max=4096)
        r.method(1, cmd.Channel.Open())
        assert isinstance(r.frame(), cmd.Channel.OpenOk)
        try:
            for ftype, ch, (cls, meth), args in frames:
                payload = struct.pack(">HH", cls, meth) + args if ftype == 1 else args
                r.send(struct.pack(">BHI", ftype, ch, len(payload)) + payload + b"\xce")
            r.method(0, cmd.Connection.Close(reply_code=200, reply_text="done", class_id=0, method_id=0))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection already: what it said before is read below
        r.sock.settimeout(scaled(5))
        while True:
            try:
                f = r.frame()
            except Exception:  # the wait's end, or a frame pamqp cannot read: not ours to judge
                break
            if f is None or isinstance(f, cmd.Connection.CloseOk):
                break
            if isinstance(f, (cmd.Connection.Close, cmd.Channel.Close)):
                assert f.reply_code != 541, f.reply_text
                if isinstance(f, cmd.Connection.Close):
                    break
    finally:
        r.close()
    ok = Raw(server)
    try:
        ok.handshake()
    finally:
        ok.close()


def test_a_message_dead_lettered_twice_through_a_queue_counts_two(server):
    """Two queues dead-lettering into each other: the x-death entry of the queue
    it died in twice counts 2 (a long-long, as RabbitMQ sends it), the other's 1;
    the expiration it had is the entry's original-expiration."""
    a, b = name("cyc-a"), name("cyc-b")
    with connect(server) as c:
        ch = c.channel()
        ch.confirm_delivery()
        ch.queue_declare(a, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": b})
        ch.queue_declare(b, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": a})
        ch.basic_publish("", a, b"c", pika.BasicProperties(expiration="60000", headers={"n": 2**40}))
        for q in (a, b, a):
            m = wait_until(lambda q=q: ch.basic_get(q)[0], what=f"the message in {q}")
            ch.basic_reject(m.delivery_tag, requeue=False)
        m, p, body = wait_until(lambda: (r := ch.basic_get(b, auto_ack=True))[0] and r, what="the third dead letter")
    assert body == b"c" and p.expiration is None and p.headers["n"] == 2**40
    first, second = p.headers["x-death"]
    assert (first["queue"], first["count"], second["queue"], second["count"]) == (a, 2, b, 1)
    assert isinstance(first["count"], pika.compat.long)
    assert first["original-expiration"] == "60000" and first["routing-keys"] == [a]
    assert p.headers["x-first-death-queue"] == a and p.headers["x-first-death-reason"] == "rejected"


@pytest.mark.parametrize("props", [pika.BasicProperties(user_id="someone-else"), pika.BasicProperties(expiration="abc"),
                                   pika.BasicProperties(expiration="-1")], ids=["user_id", "expiration", "negative"])
@pytest.mark.parametrize("size", [10, 200_000], ids=["one-frame", "multi-frame"])
def test_a_publish_with_another_user_id_or_a_bad_expiration_closes_the_channel(server, props, size):
    """As RabbitMQ: 406, nothing stored, the connection and other channels go on."""
    q = name("checked")
    with connect(server) as c:
        ok = c.channel()
        ok.queue_declare(q)
        ch = c.channel()
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.basic_publish("", q, b"x" * size, props)
        assert e.value.reply_code == 406
        ok.basic_publish("", q, b"fine", pika.BasicProperties(user_id="guest", expiration="60000"))
        assert [b for _, _, b in drain(ok, q, 1, auto_ack=True)] == [b"fine"]
        ok.queue_delete(q)


def test_delivery_count_and_stream_offset_headers_are_long_longs_as_rabbitmq_sends_them(server):
    q, s = name("quorum"), name("stream-h")
    with connect(server) as c:
        ch = c.channel()
        ch.confirm_delivery()
        ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
        ch.queue_declare(s, durable=True, arguments={"x-queue-type": "stream"})
        ch.basic_publish("", q, b"q")
        ch.basic_publish("", s, b"s")
        counts = []
        for _ in range(2):
            m, p, _b = ch.basic_get(q)
            counts.append(p.headers["x-delivery-count"])
            ch.basic_nack(m.delivery_tag, requeue=True)
        assert counts == [0, 1] and all(isinstance(n, pika.compat.long) for n in counts)
        ch.basic_qos(prefetch_count=10)
        (m, p, _b), = _first_of_stream(ch, s)
        assert isinstance(p.headers["x-stream-offset"], pika.compat.long)


def _first_of_stream(ch, s) -> list:
    """The stream's first message, through basic.consume (a stream has no basic.get)."""
    for m, p, b in ch.consume(s, arguments={"x-stream-offset": "first"}, inactivity_timeout=scaled(10)):
        if m is not None:
            ch.basic_ack(m.delivery_tag)
        ch.cancel()
        return [] if m is None else [(m, p, b)]
    return []


@pytest.fixture(scope="module")
def exclusive_queue(server):
    """A queue exclusive to a connection held open for the module's tests."""
    c = connect(server)
    q = c.channel().queue_declare("", exclusive=True).method.queue
    yield q
    c.close()


@pytest.mark.parametrize("use", [
    lambda ch, q: ch.queue_declare(q),
    lambda ch, q: ch.queue_declare(q, passive=True),
    lambda ch, q: ch.basic_consume(q, lambda *a: None),
    lambda ch, q: ch.queue_delete(q),
    lambda ch, q: ch.queue_purge(q),
    lambda ch, q: ch.queue_bind(q, "amq.direct", "k"),
], ids=["declare", "passive", "consume", "delete", "purge", "bind"])
def test_another_connection_gets_405_for_an_exclusive_queue_whatever_it_does(server, exclusive_queue, use):
    with connect(server) as c:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            use(c.channel(), exclusive_queue)
        assert e.value.reply_code == 405
        assert c.channel().queue_declare("", exclusive=True).method.queue  # the connection goes on

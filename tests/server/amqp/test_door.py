"""The AMQP door against a real ``umlog serve`` with pika's blocking connection:
routing, properties kept exactly, confirms and returns, prefetch, nack and
requeue, dead letters with x-death, TTL, x-max-length, streams, channel errors."""

from __future__ import annotations

import datetime
import decimal
import json
import os
import time

import pika
import pytest
from helpers import scaled, wait_until

from server.amqp.amqp_helpers import connect, drain, name


def test_properties_and_headers_of_every_type_come_back_exactly(server):
    q = name("props")
    big = os.urandom(1_000_000)  # over frame_max: split into body frames both ways
    headers = {"str": "s", "int": 7, "neg": -2**40, "bool": True, "none": None,
               "bytes": b"\x00\xff", "list": [1, "a", [2]], "table": {"k": {"n": 1}},
               "dec": decimal.Decimal("3.14"),
               "ts": datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC)}
    props = pika.BasicProperties(content_type="application/json", content_encoding="gzip", headers=headers,
                                 delivery_mode=2, priority=5, correlation_id="c-1", reply_to="r", expiration="600000",
                                 message_id="m-1", timestamp=1_700_000_000, type="t", user_id="guest", app_id="a",
                                 cluster_id="cl")
    with connect(server) as c:
        ch = c.channel()
        ch.queue_declare(q)
        ch.basic_publish("", q, big, props)
        ch.basic_publish("", q, b"", pika.BasicProperties())
        (m1, p1, b1), (m2, p2, b2) = drain(ch, q, 2, auto_ack=True)
    assert b1 == big and m1.routing_key == q and m1.exchange == "" and not m1.redelivered
    for field in ("content_type", "content_encoding", "delivery_mode", "priority", "correlation_id", "reply_to",
                  "expiration", "message_id", "timestamp", "type", "user_id", "app_id", "cluster_id"):
        assert getattr(p1, field) == getattr(props, field), field
    got = dict(p1.headers)
    assert got.pop("ts").replace(tzinfo=datetime.UTC) == headers["ts"]
    want = dict(headers)
    del want["ts"]
    assert got == want
    assert b2 == b"" and p2.headers is None and p2.content_type is None


def test_exchange_types_route_like_rabbitmq(server):
    tag = name("x")
    with connect(server) as c:
        ch = c.channel()
        ch.confirm_delivery()  # routed before the basic.gets below, here and in RabbitMQ
        ch.exchange_declare(f"{tag}.topic", "topic")
        ch.exchange_declare(f"{tag}.fan", "fanout")
        ch.exchange_declare(f"{tag}.hdr", "headers")
        ch.exchange_declare(f"{tag}.dir", "direct", durable=True)
        queues = {k: ch.queue_declare(f"{tag}-{k}").method.queue for k in ("star", "hash", "fan", "all", "any", "dir")}
        ch.queue_bind(queues["star"], f"{tag}.topic", "a.*.c")
        ch.queue_bind(queues["hash"], f"{tag}.topic", "#.c")
        ch.queue_bind(queues["fan"], f"{tag}.fan", "ignored")
        ch.queue_bind(queues["all"], f"{tag}.hdr", "", {"x-match": "all", "k": "v", "n": 1})
        ch.queue_bind(queues["any"], f"{tag}.hdr", "", {"x-match": "any", "k": "v", "n": 1})
        ch.queue_bind(queues["dir"], f"{tag}.dir", "k1")
        for key in ("a.b.c", "a.b.b.c", "c", "a.b"):
            ch.basic_publish(f"{tag}.topic", key, key.encode())
        ch.basic_publish(f"{tag}.fan", "whatever", b"f")
        ch.basic_publish(f"{tag}.hdr", "", b"both", pika.BasicProperties(headers={"k": "v", "n": 1}))
        ch.basic_publish(f"{tag}.hdr", "", b"one", pika.BasicProperties(headers={"k": "v"}))
        ch.basic_publish(f"{tag}.dir", "k1", b"d1")
        ch.basic_publish(f"{tag}.dir", "k2", b"d2")

        def bodies(q):
            out = []
            while True:
                m, _, b = ch.basic_get(q, auto_ack=True)
                if m is None:
                    return out
                out.append(b)

        assert bodies(queues["star"]) == [b"a.b.c"]
        assert bodies(queues["hash"]) == [b"a.b.c", b"a.b.b.c", b"c"]
        assert bodies(queues["fan"]) == [b"f"]
        assert bodies(queues["all"]) == [b"both"]
        assert bodies(queues["any"]) == [b"both", b"one"]
        assert bodies(queues["dir"]) == [b"d1"]
        # unbind: later messages no longer routed; purge and delete report counts
        ch.queue_unbind(queues["dir"], f"{tag}.dir", "k1")
        ch.basic_publish(f"{tag}.dir", "k1", b"d3")
        assert bodies(queues["dir"]) == []
        for i in range(4):
            ch.basic_publish(f"{tag}.fan", "", b"p%d" % i)
        assert ch.queue_declare(queues["fan"], passive=True).method.message_count == 4
        assert ch.queue_purge(queues["fan"]).method.message_count == 4
        ch.basic_publish(f"{tag}.fan", "", b"left")
        assert ch.queue_delete(queues["fan"]).method.message_count == 1
        ch.exchange_delete(f"{tag}.fan")


def test_confirms_and_mandatory_returns(server):
    q = name("confirm")
    with connect(server) as c:
        ch = c.channel()
        ch.confirm_delivery()
        ch.queue_declare(q, durable=True)
        for i in range(50):
            ch.basic_publish("", q, b"%d" % i, pika.BasicProperties(delivery_mode=2), mandatory=True)
        with pytest.raises(pika.exceptions.UnroutableError) as e:
            ch.basic_publish("", name("nowhere"), b"lost", mandatory=True)
        assert e.value.messages[0].body == b"lost"
        assert e.value.messages[0].method.reply_code == 312
        assert ch.queue_declare(q, passive=True).method.message_count == 50


def test_prefetch_is_never_exceeded(server):
    q = name("prefetch")
    with connect(server) as c:
        ch = c.channel()
        ch.queue_declare(q)
        for i in range(20):
            ch.basic_publish("", q, b"%d" % i)
        ch.basic_qos(prefetch_count=3)
        got = []
        ch.basic_consume(q, lambda ch_, m, p, b: got.append(m))
        wait_until(lambda: c.process_data_events(0.05) or len(got) >= 3, what="3 deliveries")
        # a later event: a message published now on another channel and fetched by basic.get
        # shows the server had its chance to over-deliver
        probe = name("probe")
        other = c.channel()
        other.queue_declare(probe)
        other.basic_publish("", probe, b"x")
        wait_until(lambda: other.basic_get(probe, auto_ack=True)[0] is not None, what="probe")
        c.process_data_events(0.1)
        assert len(got) == 3
        ch.basic_ack(got[0].delivery_tag)
        wait_until(lambda: c.process_data_events(0.05) or len(got) >= 4, what="a 4th delivery after one ack")
        ch.basic_ack(0, multiple=True)
        wait_until(lambda: c.process_data_events(0.05) or len(got) >= 7, what="3 more after ack multiple")
        c.process_data_events(0.1)
        assert len(got) == 7
        assert [int(m.delivery_tag) for m in got] == list(range(1, 8))


def test_nack_requeue_redelivers_and_reject_drops(server):
    q = name("nack")
    with connect(server) as c:
        ch = c.channel()
        ch.queue_declare(q)
        for b in (b"a", b"b"):
            ch.basic_publish("", q, b)
        m, _, body = ch.basic_get(q)
        assert body == b"a" and not m.redelivered
        ch.basic_nack(m.delivery_tag, requeue=True)
        m, _, body = ch.basic_get(q)
        assert body == b"a" and m.redelivered
        ch.basic_reject(m.delivery_tag, requeue=False)
        m, _, body = ch.basic_get(q)
        assert body == b"b"
        ch.basic_ack(m.delivery_tag)
        assert ch.basic_get(q)[0] is None
        # an unknown delivery tag closes the channel with 406
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.basic_ack(99)
            ch.queue_declare(q, passive=True)
        assert e.value.reply_code == 406


def test_unacked_deliveries_of_a_closed_connection_are_redelivered(server):
    q = name("redeliver")
    with connect(server) as c:
        ch = c.channel()
        ch.queue_declare(q)
        for i in range(5):
            ch.basic_publish("", q, b"%d" % i)
    c1 = connect(server)
    ch1 = c1.channel()
    first = [ch1.basic_get(q) for _ in range(3)]
    ch1.basic_ack(first[0][0].delivery_tag)
    c1.close()
    with connect(server) as c2:
        got = drain(c2.channel(), q, 4, auto_ack=True)
    assert [(b, m.redelivered) for m, _, b in got] == [(b"1", True), (b"2", True), (b"3", False), (b"4", False)]


def test_dead_letters_carry_x_death(server):
    tag = name("dlx")
    with connect(server) as c:
        ch = c.channel()
        ch.confirm_delivery()  # each basic.get finds the message published before it (RabbitMQ's quorum queue too)
        ch.exchange_declare(f"{tag}.dlx", "fanout")
        dlq = ch.queue_declare(f"{tag}-dlq").method.queue
        ch.queue_bind(dlq, f"{tag}.dlx", "")
        work = ch.queue_declare(f"{tag}-work", arguments={"x-dead-letter-exchange": f"{tag}.dlx",
                                                          "x-message-ttl": 60_000}).method.queue
        ch.basic_publish("", work, b"rejected", pika.BasicProperties(headers={"keep": "me"}))
        m, _, _ = ch.basic_get(work)
        ch.basic_reject(m.delivery_tag, requeue=False)
        ch.basic_publish("", work, b"expired", pika.BasicProperties(expiration="1"))
        time.sleep(0.01)  # the scenario is time passing: the second message's 1 ms expiration
        assert ch.basic_get(work, auto_ack=True)[0] is None  # found expired: dead-lettered, not delivered
        assert ch.queue_declare(dlq, passive=True).method.message_count == 2
        got = [ch.basic_get(dlq, auto_ack=True) for _ in range(2)]
        # a dead letter sent on by routing key to a queue of the default exchange (a retry pattern)
        retry = ch.queue_declare(f"{tag}-retry").method.queue
        limited = ch.queue_declare(f"{tag}-lim", durable=True, arguments={
            "x-queue-type": "quorum", "x-delivery-limit": 1, "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": retry}).method.queue
        ch.basic_publish("", limited, b"poison")
        for i in range(2):
            m, p, _ = ch.basic_get(limited)
            assert m.redelivered == (i == 1)
            if i == 1:
                assert p.headers["x-delivery-count"] == 1
            ch.basic_nack(m.delivery_tag, requeue=True)
        assert ch.basic_get(limited)[0] is None
        m, p, body = ch.basic_get(retry, auto_ack=True)
    (m1, p1, b1), (m2, p2, b2) = got
    assert (b1, b2) == (b"rejected", b"expired")
    d = p1.headers["x-death"][0]
    assert d["reason"] == "rejected" and d["queue"] == work and d["count"] == 1 and d["exchange"] == ""
    assert d["routing-keys"] == [work] and p1.headers["keep"] == "me"
    assert p1.headers["x-first-death-reason"] == "rejected"
    assert p2.headers["x-death"][0]["reason"] == "expired" and p2.expiration is None
    assert m1.exchange == f"{tag}.dlx" and m1.routing_key == work
    assert body == b"poison" and m.routing_key == retry
    assert p.headers["x-death"][0]["reason"] == "delivery_limit"


def test_ttl_and_max_length(server):
    tag = name("limits")
    with connect(server) as c:
        ch = c.channel()
        ttl = ch.queue_declare(f"{tag}-ttl", arguments={"x-message-ttl": 1}).method.queue
        ch.basic_publish("", ttl, b"gone")
        ch.basic_publish("", ttl, b"per-message", pika.BasicProperties(expiration="1"))
        time.sleep(0.01)  # the scenario is time passing: 1 ms TTLs
        assert ch.basic_get(ttl)[0] is None
        ml = ch.queue_declare(f"{tag}-ml", arguments={"x-max-length": 3}).method.queue
        for i in range(10):
            ch.basic_publish("", ml, b"%d" % i)
        assert ch.queue_declare(ml, passive=True).method.message_count == 3
        bodies = [ch.basic_get(ml, auto_ack=True)[2] for _ in range(3)]
        assert bodies == [b"7", b"8", b"9"]


def test_streams_read_from_x_stream_offset(server):
    s = name("stream")
    with connect(server) as c:
        ch = c.channel()
        ch.queue_declare(s, durable=True, arguments={"x-queue-type": "stream"})
        for i in range(10):
            ch.basic_publish("", s, b"%d" % i)
        ch.basic_qos(prefetch_count=100)
        got = []
        for spec in ("first", 0):  # offset 0 is before the stream's first: from its first
            msgs = []
            for m, p, b in ch.consume(s, arguments={"x-stream-offset": spec}, inactivity_timeout=scaled(10)):
                if m is None:
                    break
                msgs.append((p.headers["x-stream-offset"], b))
                ch.basic_ack(m.delivery_tag)
                if len(msgs) == 10:
                    break
            ch.cancel()
            got.append(msgs)
        assert [b for _, b in got[0]] == [b"%d" % i for i in range(10)]
        offsets = [o for o, _ in got[0]]
        assert offsets == sorted(offsets)
        # from the 6th message's offset: the last five
        msgs = []
        for m, _p, b in ch.consume(s, arguments={"x-stream-offset": offsets[5]}, inactivity_timeout=scaled(10)):
            if m is None:
                break
            msgs.append(b)
            ch.basic_ack(m.delivery_tag)
            if len(msgs) == 5:
                break
        ch.cancel()
        assert msgs == [b"%d" % i for i in range(5, 10)]


def test_channel_errors_close_only_that_channel(server):
    q = name("errors")
    with connect(server) as c:
        ch = c.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.queue_declare(name("missing"), passive=True)
        assert e.value.reply_code == 404
        ch = c.channel()
        ch.queue_declare(q, durable=True)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.queue_declare(q, durable=False)
        assert e.value.reply_code == 406
        ch = c.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.queue_declare(q, durable=True, arguments={"x-max-length": 5})
        assert e.value.reply_code == 406
        ch = c.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.basic_publish(name("noexchange"), "k", b"x")
            ch.queue_declare(q, passive=True)
        assert e.value.reply_code == 404
        ch = c.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.exchange_declare("amq.mine", "direct")
        assert e.value.reply_code == 403
        ch = c.channel()  # the connection is fine
        assert ch.queue_declare(q, passive=True).method.queue == q
        ch.queue_delete(q)


def test_exclusive_and_server_named_queues(server):
    c1 = connect(server)
    ch1 = c1.channel()
    q = ch1.queue_declare("", exclusive=True).method.queue
    assert q.startswith("amq.gen-")
    with connect(server) as c2:
        ch2 = c2.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch2.basic_get(q)
        assert e.value.reply_code == 405
        c1.close()
        ch2 = c2.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch2.queue_declare(q, passive=True)
        assert e.value.reply_code == 404
        # auto-delete: gone with its last consumer
        ch2 = c2.channel()
        ad = ch2.queue_declare(name("autodel"), auto_delete=True).method.queue
        tag = ch2.basic_consume(ad, lambda *a: None)
        ch2.basic_cancel(tag)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            ch2.queue_declare(ad, passive=True)


def test_durable_metadata_is_a_json_file(server):
    tag = name("meta")
    with connect(server) as c:
        ch = c.channel()
        ch.exchange_declare(f"{tag}.ex", "topic", durable=True)
        ch.queue_declare(f"{tag}-q", durable=True, arguments={"x-max-length": 9})
        ch.queue_bind(f"{tag}-q", f"{tag}.ex", "a.#")
        ch.queue_declare(f"{tag}-transient")
    with open(os.path.join(server.data_dir, "meta", "amqp.json")) as f:
        meta = json.load(f)
    qs = {q["name"]: q for q in meta["queues"]}
    assert f"{tag}-transient" not in qs
    assert [(b["exchange"], b["key"]) for b in qs[f"{tag}-q"]["bindings"]] == [("", f"{tag}-q"), (f"{tag}.ex", "a.#")]
    assert any(e["name"] == f"{tag}.ex" and e["type"] == "topic" for e in meta["exchanges"])

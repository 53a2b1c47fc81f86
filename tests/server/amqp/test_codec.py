"""The AMQP door's native message path against pamqp's own encoder and decoder:
basic.publish runs read back whole (and nothing of a run cut short), content
properties round-trip, and basic.deliver runs decode as pamqp decodes them."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import body as pbody
from pamqp import commands as cmd
from pamqp import decode as pdecode
from pamqp import frame as pframe
from pamqp import header as pheader

from umlog._native.core import amqp_deliver_frames, amqp_scan_publishes
from umlog.delivery.group import ShareRecord
from umlog.server.amqp.codec import FrameError, add_death, content_frames, parse_properties

short = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=40)
names = st.from_regex(r"[A-Za-z0-9_.:-]{0,20}", fullmatch=True)
tables = st.dictionaries(st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8),
                         st.one_of(st.integers(-2**31, 2**31 - 1), short, st.booleans()), max_size=4)
prop = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), min_size=1, max_size=40)
# (pamqp leaves empty strings out, refuses a cluster_id and reads a timestamp past 2**32 as
# milliseconds: the pika tests cover those)
props = st.fixed_dictionaries({}, optional={
    "content_type": prop, "content_encoding": prop, "headers": tables, "delivery_mode": st.integers(1, 2),
    "priority": st.integers(0, 9), "correlation_id": prop, "reply_to": prop,
    "expiration": st.integers(0, 10**9).map(str), "message_id": prop,
    "timestamp": st.integers(0, 2**32 - 1).map(lambda s: datetime.datetime.fromtimestamp(s, datetime.UTC)),
    "message_type": prop, "user_id": prop, "app_id": prop})
messages = st.lists(st.tuples(names, short, props, st.binary(max_size=600), st.booleans()), min_size=1, max_size=5)


def _publish_frames(ch: int, exchange: str, key: str, p: dict, body: bytes, mandatory: bool, frame_max: int) -> bytes:
    out = pframe.marshal(cmd.Basic.Publish(exchange=exchange, routing_key=key, mandatory=mandatory), ch)
    out += pframe.marshal(pheader.ContentHeader(0, len(body), cmd.Basic.Properties(**p)), ch)
    for i in range(0, len(body), frame_max - 8):
        out += pframe.marshal(pbody.ContentBody(body[i:i + frame_max - 8]), ch)
    return out


def _properties_of(headers) -> cmd.Basic.Properties:
    """What a client decodes from the content header the door writes for these record headers."""
    frames = content_frames(1, headers, b"", 4096)
    return pframe.unmarshal(frames)[2].properties


@settings(max_examples=60, deadline=None)
@given(messages, st.sampled_from([4096, 300]))
def test_a_run_of_publishes_reads_back_whole_and_its_properties_round_trip(msgs, frame_max):
    buf = b"".join(_publish_frames(3, e, k, p, b, m, frame_max) for e, k, p, b, m in msgs)
    got, pos = amqp_scan_publishes(buf, 0, len(buf), 3, frame_max, 1 << 20)
    assert pos == len(buf) and len(got) == len(msgs)
    for (exchange, key, bits, headers, table, body), (e, k, p, b, m) in zip(got, msgs):
        assert (exchange, key, bool(bits & 1), body) == (e.encode(), k.encode(), m, b)
        assert (table is not None) == ("headers" in p)
        back = _properties_of(headers)
        for name, value in p.items():
            assert getattr(back, name) == value, name


@settings(max_examples=40, deadline=None)
@given(messages, st.data())
def test_a_run_cut_anywhere_gives_the_whole_messages_before_the_cut(msgs, data):
    frames = [_publish_frames(1, e, k, p, b, m, 4096) for e, k, p, b, m in msgs]
    buf = b"".join(frames)
    cut = data.draw(st.integers(0, len(buf)))
    got, pos = amqp_scan_publishes(buf, 0, cut, 1, 4096, 1 << 20)
    whole = 0
    while whole < len(frames) and sum(map(len, frames[:whole + 1])) <= cut:
        whole += 1
    assert len(got) == whole and pos == sum(map(len, frames[:whole]))
    # another channel's frames, a larger body than allowed, or a frame over frame_max end the run
    assert amqp_scan_publishes(buf, 0, len(buf), 2, 4096, 1 << 20) == ([], 0)
    if any(len(b) for *_, b, _ in msgs):
        assert len(amqp_scan_publishes(buf, 0, len(buf), 1, 4096, 0)[0]) < len(msgs)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(short, st.binary(max_size=2000), props, st.integers(1, 3)), min_size=1, max_size=6),
       st.sampled_from([4096, 512]))
def test_a_run_of_deliveries_decodes_as_pamqp_decodes_it(recs, frame_max):
    records = []
    for key, value, p, count in recs:
        frames = _publish_frames(1, "", "", p, b"", False, 4096)
        headers = amqp_scan_publishes(frames, 0, len(frames), 1, 4096, 0)[0][0][3]
        topic = "amq.default" if count == 2 else "orders"
        records.append(ShareRecord(_Rec(key.encode(), value, headers), topic, 0, count))
    buf = amqp_deliver_frames(records, 7, b"ctag", 41, frame_max, {"amq.default": b""})
    pos = 0
    for i, rec in enumerate(records):
        n, ch, m = pframe.unmarshal(buf[pos:])
        pos += n
        assert ch == 7 and isinstance(m, cmd.Basic.Deliver)
        assert (m.consumer_tag, m.delivery_tag, m.redelivered, m.routing_key) == \
            ("ctag", 41 + i, rec.delivery_count > 1, rec.key.decode())
        assert m.exchange == ("" if rec.topic == "amq.default" else "orders")
        n, _, h = pframe.unmarshal(buf[pos:])
        pos += n
        assert h.body_size == len(rec.value)
        assert h.properties == _properties_of(rec.headers)
        body = b""
        while len(body) < h.body_size:
            n, _, b = pframe.unmarshal(buf[pos:])
            assert n <= frame_max
            pos += n
            body += b.value
        assert body == rec.value
    assert pos == len(buf)


class _Rec:
    """A log record as a share group's acquire gets it (what ShareRecord copies)."""

    def __init__(self, key: bytes, value: bytes, headers) -> None:
        self.offset, self.timestamp, self.key, self.value, self.headers = 0, 0, key, value, tuple(headers)


def test_record_headers_of_other_doors_become_long_string_entries():
    p = _properties_of([("amqp-delivery-mode", b"2"), ("kafka-header", b"v"), ("umlog-ttl-ms", b"5")])
    assert p.delivery_mode == 2 and p.headers == {"kafka-header": "v"}


@pytest.mark.parametrize("payload, why", [
    (b"\x00\x3c\x00\x00" + b"\x00" * 6, "too short"),
    (b"\x00\x3d\x00\x00" + b"\x00" * 8 + b"\x00\x00", "class 61"),
    (b"\x00\x3c\x00\x00" + b"\x00" * 8 + b"\x00\x01", "continue"),
    (b"\x00\x3c\x00\x00" + b"\x00" * 8 + b"\x00\x02", "undefined"),
    (b"\x00\x3c\x00\x00" + b"\x00" * 8 + b"\x80\x00\x05ab", "runs past"),
    (b"\x00\x3c\x00\x00" + b"\x00" * 8 + b"\x20\x00\x00\x00\x00\x02Sx", "bad headers table"),
])
def test_bad_content_headers_are_frame_errors(payload, why):
    with pytest.raises(FrameError, match=why):
        parse_properties(payload)


def test_a_dead_letter_keeps_the_other_header_entries_byte_for_byte_and_counts_as_rabbitmq():
    # entries of types pamqp would re-encode otherwise: an 'l' and an 'I' holding small numbers
    other = b"\x01nl" + (5).to_bytes(8, "big") + b"\x01tI" + (7).to_bytes(4, "big")
    headers = [("amqp-headers", other), ("amqp-expiration", b"60000")]
    first = add_death(headers, "q", "rejected", "", b"q", 1_700_000_000)
    raw = dict(first)["amqp-headers"]
    assert raw.startswith(other) and "amqp-expiration" not in dict(first)
    again = add_death(first, "q", "rejected", "", b"q", 1_700_000_001)
    raw = dict(again)["amqp-headers"]
    assert raw.startswith(other)
    table = pdecode.field_table(len(raw).to_bytes(4, "big") + raw)[1]
    (death,) = table["x-death"]
    assert death["count"] == 2 and death["original-expiration"] == "60000"
    assert b"\x05countl" + (2).to_bytes(8, "big") in raw  # a long-long, as RabbitMQ sends it
    assert (table["x-first-death-reason"], table["x-last-death-queue"]) == ("rejected", "q")

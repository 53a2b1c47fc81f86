"""The MQTT door's message path in runs against the per-packet reference.

A reader with ``plain_headers`` (a server connection's) gives runs of plain
PUBLISHes (``MqttPublishRun``) and PUBACKs (``MqttAckRun``) instead of a
packet each: expanded, they must be exactly the packets, and the errors, a
reader without runs gives, and a run's lists must be what the per-packet path
would append and answer. On the way out, ``mqtt_encode_run`` and
``mqtt_encode_waiting`` must give the bytes of ``encode_publish`` with the
packet ids ``Session.packet_id`` would give, ``mqtt_settle`` must only settle
what a PUBACK settles, and the records they read (``decode_records``, which
shares equal keys and headers between consecutive records) must be the
records that were written."""

from __future__ import annotations

import struct
from collections import deque
from itertools import accumulate

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import umlog
from umlog._native.core import (
    MqttAckRun,
    MqttOutgoing,
    MqttPublishRun,
    Record,
    decode_records,
    encode_batch,
    mqtt_encode_run,
    mqtt_encode_waiting,
    mqtt_runs,
    mqtt_scan,
    mqtt_settle,
    mqtt_wait_run,
)
from umlog.server.mqtt.codec import (
    MAX_PACKET_SIZE,
    PUBACK,
    Connect,
    Disconnect,
    MQTTError,
    PacketReader,
    PingReq,
    PubAck,
    Publish,
    PubRec,
    Subscribe,
    Subscription,
    encode,
    encode_ack,
    encode_publish,
    encode_varint,
)
from umlog.server.mqtt.door import PLAIN_HEADERS, QOS_HEADER
from umlog.server.mqtt.session import Outgoing, Session

# --- the receive side: mqtt_scan with plain_headers --------------------------------------------

texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
# Topic names the run path must leave to the per-packet path: empty, wildcards.
odd_names = st.sampled_from(["", "+", "#", "a/+", "a/#", "+/b", "sport/#/x"])
# Topic bytes the codec refuses: not UTF-8 (a lone continuation byte, an
# overlong '/', a surrogate, a cut sequence), or holding U+0000.
bad_names = st.sampled_from([b"\xff", b"a/\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"caf\xc3", b"a\x00b"])


def raw_publish(topic: bytes, payload: bytes, qos: int, retain: bool, dup: bool, pid: int, version: int) -> bytes:
    """A PUBLISH of any topic bytes (``encode`` only takes a str): MQTT 5 section 3.3's layout."""
    body = (struct.pack(">H", len(topic)) + topic + (struct.pack(">H", pid) if qos else b"")
            + (b"\x00" if version == 5 else b"") + payload)
    return bytes([0x30 | dup << 3 | qos << 1 | retain]) + encode_varint(len(body)) + body


@st.composite
def publish_frames(draw, version: int, names: list[str]) -> bytes:
    """A PUBLISH: mostly a plain one on one of a few names (runs, sharing
    keys), else one with one thing a run does not take."""
    qos = draw(st.integers(0, 1))
    topic, retain, props = draw(st.sampled_from(names)), False, {}
    odd = draw(st.sampled_from([None, None, None, None, "qos2", "retain", "name", "bad name", "properties"]))
    if odd == "qos2":
        qos = 2
    elif odd == "retain":
        retain = True
    elif odd == "name":
        topic = draw(odd_names)
    elif odd == "properties" and version == 5:
        props = {"content_type": draw(texts), "message_expiry_interval": draw(st.integers(1, 65535))}
    dup = qos > 0 and draw(st.booleans())
    pid = draw(st.integers(1, 65535)) if qos else None
    payload = draw(st.binary(max_size=40))
    if odd == "bad name":
        return raw_publish(draw(bad_names), payload, qos, retain, dup, pid or 0, version)
    return encode(Publish(topic, payload, qos, retain, dup, pid, props), version)


def other_frames(version: int):
    """Packets no run takes."""
    packets = [PingReq(), PubRec(7), Disconnect(), Subscribe(5, [Subscription("a/#", 1)]),
               Connect("c", version=4), Connect("c", version=5)]
    frames = [encode(p, version) for p in packets]
    if version == 5:
        frames.append(encode(PubAck(3, 0x10), 5))  # a reason code: not a run's PUBACK
    return st.sampled_from(frames)


# What the codec refuses: QoS 3, DUP at QoS 0, packet id 0 (PUBLISH, PUBACK),
# PUBACK flags, a remaining length not in its shortest form.
refused = st.sampled_from([b"\x36\x05\x00\x01a\x00\x01", b"\x38\x04\x00\x01ax", b"\x32\x05\x00\x01a\x00\x00",
                           b"\x40\x02\x00\x00", b"\x41\x02\x00\x01", b"\x30\x80\x00"])


@st.composite
def streams(draw):
    """(version, the frames of a stream): mostly plain PUBLISHes and PUBACKs,
    now and then another packet, and at most one the codec refuses."""
    version = draw(st.sampled_from([4, 5]))
    # names of one length (the run compares a name with the one before), and any
    names = ["a/b", "a/c", "é", *draw(st.lists(texts.filter(lambda t: t and "+" not in t and "#" not in t),
                                               max_size=2))]
    publish = publish_frames(version, names)
    puback = st.integers(1, 65535).map(lambda pid: encode_ack(PUBACK, pid))
    frame = st.one_of(publish, publish, publish, publish, puback, puback, other_frames(version))
    frames = draw(st.lists(frame, max_size=30))
    if draw(st.integers(0, 3)) == 0:
        frames.insert(draw(st.integers(0, len(frames))), draw(refused))
    return version, frames


def read_all(reader: PacketReader, chunks: list[bytes]) -> tuple[list, list, object]:
    """(what ``packets`` gave, per feed; the same with runs expanded; the
    error raised, as (type, message), or None). Stops at the first error, as
    a connection does."""
    given_out: list = []
    expanded: list = []
    for chunk in chunks:
        reader.feed(chunk)
        batch: list = []
        given_out.append(batch)
        try:
            for p in reader.packets():
                batch.append(p)
                expanded += expand(p)
        except MQTTError as e:
            return given_out, expanded, (type(e), str(e))
    return given_out, expanded, None


def expand(p) -> list:
    if type(p) is MqttPublishRun:
        return p.packets(Publish, PubAck)
    if type(p) is MqttAckRun:
        return [PubAck(pid) for pid in p.packet_ids()]
    return [p]


def is_plain(p) -> bool:
    """A PUBLISH the run path takes: QoS 0/1, no RETAIN, no properties, a valid topic name."""
    return (type(p) is Publish and p.qos < 2 and not p.retain and not p.properties and p.topic != ""
            and "+" not in p.topic and "#" not in p.topic)


def check_publish_run(run: MqttPublishRun) -> None:
    """A run's lists and acks are those of its packets (``packets`` decodes ``raw``)."""
    packets = run.packets(Publish, PubAck)
    assert packets and all(is_plain(p) for p in packets)
    assert run.count == len(packets)
    assert run.keys == [p.topic.encode() for p in packets]
    assert run.values == [p.payload for p in packets]
    assert all(h is PLAIN_HEADERS[p.qos] for h, p in zip(run.headers, packets, strict=True))
    assert run.acks == b"".join(encode_ack(PUBACK, p.packet_id) for p in packets if p.qos == 1)


def splits(data, size: int) -> list[int]:
    """Where a stream of ``size`` bytes is cut into reads (packets cut anywhere)."""
    cuts = sorted(data.draw(st.lists(st.integers(0, size), max_size=6)))
    return [0, *cuts, size]


@settings(max_examples=150)
@given(streams(), st.data())
def test_runs_expand_to_the_packets_and_errors_of_the_per_packet_reader(vs, data):
    version, frames = vs
    stream = b"".join(frames)
    max_packet = data.draw(st.sampled_from([MAX_PACKET_SIZE, MAX_PACKET_SIZE, 30]))
    cuts = splits(data, len(stream))
    chunks = [stream[a:b] for a, b in zip(cuts, cuts[1:])]

    reference = PacketReader(max_packet, version)
    _, expected, expected_error = read_all(reference, [stream])
    runs = PacketReader(max_packet, version)
    runs.plain_headers = PLAIN_HEADERS
    given_out, got, error = read_all(runs, chunks)

    assert got == expected
    assert error == expected_error
    for batch in given_out:
        for prev, p in zip([None, *batch], batch):
            if type(p) is MqttPublishRun:
                check_publish_run(p)
            elif type(p) is MqttAckRun:
                assert p.count == len(p.packet_ids()) > 0
                assert p.raw == b"".join(encode_ack(PUBACK, pid) for pid in p.packet_ids())
            else:
                assert not is_plain(p), "a plain PUBLISH left out of a run"
            # one run per stretch of plain packets within a read
            assert not (type(p) in (MqttPublishRun, MqttAckRun) and type(prev) is type(p))


@given(st.sampled_from([4, 5]), st.lists(st.tuples(st.sampled_from(["ab", "é", "a", "b/c"]), st.integers(0, 1),
                                                   st.binary(max_size=20)), min_size=1, max_size=20))
def test_a_run_is_the_lists_append_many_takes_and_its_bytes(version, messages):
    frames = [encode(Publish(t, v, q, packet_id=i + 1 if q else None), version)
              for i, (t, q, v) in enumerate(messages)]
    out: list = []
    end = mqtt_scan(b"".join(frames), 0, version, MAX_PACKET_SIZE, out, Publish, PubAck, PLAIN_HEADERS)
    assert end == sum(map(len, frames))
    [run] = out
    assert run.raw == b"".join(frames)
    assert run.keys == [t.encode() for t, _, _ in messages]
    assert run.values == [v for _, _, v in messages]
    assert run.headers == [PLAIN_HEADERS[q] for _, q, _ in messages]
    assert run.acks == b"".join(encode_ack(PUBACK, i + 1) for i, (_, q, _) in enumerate(messages) if q)


def test_runs_absorb_the_runs_after_them():
    first: list = []
    second: list = []
    a = encode(Publish("t", b"1", 1, packet_id=1)) + encode_ack(PUBACK, 9)
    b = encode(Publish("u", b"2", 0)) + encode_ack(PUBACK, 8)
    mqtt_scan(a, 0, 4, MAX_PACKET_SIZE, first, Publish, PubAck, PLAIN_HEADERS)
    mqtt_scan(b, 0, 4, MAX_PACKET_SIZE, second, Publish, PubAck, PLAIN_HEADERS)
    first[0].absorb(second[0])
    first[1].absorb(second[1])
    check_publish_run(first[0])
    assert first[0].packets(Publish, PubAck) == [Publish("t", b"1", 1, packet_id=1), Publish("u", b"2", 0)]
    assert first[1].packet_ids() == [9, 8] and first[1].count == 2


# --- the send side: mqtt_encode_run, mqtt_wait_run, mqtt_encode_waiting --------------------------

def plain_records(messages, offset: int = 100) -> list[Record]:
    """Records as the door stores a plain PUBLISH: key the topic name, one QoS header."""
    return [Record(offset + i, 1_700_000_000_000 + i, key, value, PLAIN_HEADERS[q], "mqtt-messages", 0)
            for i, (key, value, q) in enumerate(messages)]


def reference_session(next_id: int, inflight: dict) -> Session:
    """A session whose ``packet_id`` is the reference for the ids a run takes."""
    s = Session("c", 4, 0)
    s.next_id = next_id
    s.inflight = dict(inflight)
    return s


def busy(pids) -> dict:
    """In-flight entries holding ``pids`` (messages sent before)."""
    return {pid: MqttOutgoing("x", b"", {}, 1, False, ("other", 0, pid)) for pid in pids}


# Packet ids near the wrap and next to the session's next one, in flight already.
next_ids = st.sampled_from([0, 1, 7, 65533, 65534, 65535])
held = st.sets(st.sampled_from([1, 2, 3, 8, 9, 65534, 65535]), max_size=5)


@given(st.lists(st.tuples(st.binary(max_size=300) | st.none(), st.integers(0, 2)), min_size=1, max_size=12),
       st.integers(0, 2), st.sampled_from([4, 5]), next_ids, held, st.sampled_from([1 << 28, 200, 40]),
       st.sampled_from([-1, -1, 0, 1, 3]), st.booleans(), st.data())
def test_encode_run_is_the_reference_frames_with_the_sessions_packet_ids(values, max_qos, version, next_id, pids,
                                                                          max_packet, room, skip_qos0, data):
    topic = data.draw(st.sampled_from(["a/b", "é/ü", "x" * 130]))
    records = plain_records([(topic.encode(), v, q) for v, q in values])
    start = data.draw(st.integers(0, len(records) - 1))
    stop = data.draw(st.integers(start + 1, len(records)))
    session = reference_session(next_id, busy(pids))
    inflight = dict(session.inflight)
    before = dict(inflight)

    got = mqtt_encode_run(records, start, stop, topic, max_qos, version, session, inflight, "mqtt-messages", 0,
                          max_packet, room, skip_qos0)

    # the reference: message by message, Session.packet_id giving the ids
    ref = reference_session(next_id, before)
    frames, entries, end = [], {}, start
    for r in records[start:stop]:
        qos = min(max_qos, int(r.headers[0][1]))
        if qos and len(entries) == room:
            break  # the subscriber's receive maximum is reached
        end += 1
        if qos == 0 and skip_qos0:
            continue
        pid = ref.packet_id() if qos else None
        if pid is not None:
            ref.inflight[pid] = entries[pid] = (qos, r.value or b"", ("mqtt-messages", 0, r.offset))
        frames.append(encode_publish(topic, r.value or b"", qos, False, False, pid, {}, version))
    if any(len(f) > max_packet for f in frames):
        assert got is None
        assert inflight == before and session.next_id == next_id
        return
    assert got == (b"".join(frames), len(entries), end)
    assert session.next_id == ref.next_id
    assert inflight.keys() == before.keys() | entries.keys()
    for pid, (qos, payload, loc) in entries.items():
        out = inflight[pid]
        assert type(out) is Outgoing
        assert (out.topic, out.payload, out.props, out.qos, out.state, out.retain, out.loc, out.share) == (
            topic, payload, {}, qos, qos, False, loc, None)


def test_packet_ids_wrap_past_65535_and_skip_the_ones_in_flight():
    records = plain_records([(b"t", b"v", 1)] * 3)
    session = reference_session(65534, {})
    inflight = busy([65535, 1])
    frames, kept, end = mqtt_encode_run(records, 0, 3, "t", 2, 4, session, inflight, "mqtt-messages", 0, 1 << 20)
    assert (kept, end) == (3, 3) and session.next_id == 4
    assert frames == b"".join(encode_publish("t", b"v", 1, packet_id=pid) for pid in (2, 3, 4))
    assert [inflight[pid].loc for pid in (2, 3, 4)] == [("mqtt-messages", 0, o) for o in (100, 101, 102)]


def test_every_packet_id_in_flight_is_an_error():
    session = reference_session(0, {})
    with pytest.raises(RuntimeError, match="every packet id is in flight"):
        mqtt_encode_run(plain_records([(b"t", b"v", 1)]), 0, 1, "t", 1, 4, session, busy(range(1, 65536)),
                        "mqtt-messages", 0, 1 << 20)


def test_records_read_back_from_a_log_go_out_in_runs(tmp_path):
    """Records as the door appends them (``append_many``) and a read gives them."""
    names = [b"a", b"a", b"a", b"b", b"b", b"a"]
    with umlog.open(tmp_path / "data") as broker:
        t = broker.create_topic("mqtt-messages")
        t.append_many([b"v%d" % i for i in range(6)], names, [PLAIN_HEADERS[i % 3] for i in range(6)], partition=0)
        t.append(b"retained", key=b"a", headers=[(QOS_HEADER, b"1"), ("mqtt-retain", b"1")], partition=0)
        records = t.partition(0).read_list(0, 100)
    assert [(r.key, r.value, r.headers) for r in records[:6]] == [
        (k, b"v%d" % i, PLAIN_HEADERS[i % 3]) for i, k in enumerate(names)]
    assert mqtt_runs(records, QOS_HEADER) == [(b"a", 0, 3, True), (b"b", 3, 5, True), (b"a", 5, 7, False)]
    session = reference_session(0, {})
    inflight: dict = {}
    frames, kept, end = mqtt_encode_run(records, 0, 3, "a", 2, 5, session, inflight, "mqtt-messages", 0, 1 << 20)
    assert (kept, end) == (2, 3) and sorted(inflight) == [1, 2]
    reader = PacketReader(version=5)
    reader.feed(frames)
    assert list(reader.packets()) == [Publish("a", b"v0", 0), Publish("a", b"v1", 1, packet_id=1),
                                      Publish("a", b"v2", 2, packet_id=2)]


plain_entries = st.tuples(st.binary(max_size=300), st.integers(0, 2))
other_entries = st.sampled_from(["retained", "properties", "shared"])


@settings(max_examples=80)
@given(st.lists(st.one_of(plain_entries, plain_entries, plain_entries, other_entries), max_size=12),
       st.integers(0, 2), st.sampled_from([4, 5]), st.integers(0, 6), st.sampled_from([1 << 28, 200]), next_ids,
       held)
def test_encode_waiting_stops_at_an_entry_that_is_not_plain_the_room_or_the_packet_limit(
        items, max_qos, version, room, max_packet, next_id, pids):
    # a str: an entry the per-packet path queued (retained, with properties, or a share group's)
    records = plain_records([(b"w", v, q) for v, q in (i for i in items if type(i) is tuple)])
    others = {"retained": ("w", b"r", 1, True, {}, ("mqtt-messages", 0, 1), None),
              "properties": ("w", b"p", 0, False, {"content_type": "x"}, ("mqtt-messages", 0, 2), None),
              "shared": ("w", b"s", 1, False, {}, ("mqtt-messages", 0, 3), ("share", "member", "rec"))}
    waiting: deque = deque()
    n = 0
    for item in items:
        if type(item) is str:
            waiting.append(others[item])
        else:
            mqtt_wait_run(records, n, n + 1, "w", max_qos, "mqtt-messages", 0, waiting)
            n += 1
    assert [e for e in waiting if e[6] is None and not e[3] and not e[4]] == [
        ("w", r.value, min(max_qos, int(r.headers[0][1])), False, {}, ("mqtt-messages", 0, r.offset), None)
        for r in records]
    entries = list(waiting)
    session = reference_session(next_id, busy(pids))
    inflight = dict(session.inflight)
    ref = reference_session(next_id, inflight)

    frames, taken, kept = mqtt_encode_waiting(waiting, room, version, session, inflight, max_packet)

    expected, expected_kept, new = [], 0, {}
    for e in entries:
        topic, payload, qos, retain, props, loc, share = e
        if (qos and expected_kept >= room) or retain or props or share is not None:
            break
        if len(encode_publish(topic, payload, qos, False, False, 1 if qos else None, {}, version)) > max_packet:
            break
        pid = ref.packet_id() if qos else None
        if pid is not None:
            ref.inflight[pid] = new[pid] = e
            expected_kept += 1
        expected.append(encode_publish(topic, payload, qos, False, False, pid, {}, version))
    assert (frames, taken, kept) == (b"".join(expected), len(expected), expected_kept)
    assert list(waiting) == entries[taken:]
    assert session.next_id == ref.next_id
    assert inflight.keys() == ref.inflight.keys()
    for pid, e in new.items():
        assert (inflight[pid].payload, inflight[pid].qos, inflight[pid].state, inflight[pid].loc,
                inflight[pid].share) == (e[1], e[2], e[2], e[5], None)


# --- mqtt_settle -------------------------------------------------------------------------------

def ack_run(pids) -> MqttAckRun:
    out: list = []
    mqtt_scan(b"".join(encode_ack(PUBACK, p) for p in pids), 0, 4, MAX_PACKET_SIZE, out, Publish, PubAck,
              PLAIN_HEADERS)
    [run] = out
    return run


def outgoing(qos: int, state: int, share=None) -> MqttOutgoing:
    out = MqttOutgoing("t", b"v", {}, qos, False, ("mqtt-messages", 0, 0), share)
    out.state = state
    return out


@given(st.dictionaries(st.integers(1, 12), st.sampled_from(["q1", "q2", "pubrec", "shared"])),
       st.lists(st.integers(1, 14), min_size=1, max_size=20))
def test_settle_removes_only_qos1_entries_no_share_group_holds(kinds, pids):
    make = {"q1": lambda: outgoing(1, 1), "q2": lambda: outgoing(2, 2), "pubrec": lambda: outgoing(2, 3),
            "shared": lambda: outgoing(1, 1, ("group", "member", "record"))}
    inflight = {pid: make[kind]() for pid, kind in kinds.items()}
    before = dict(inflight)
    done, rest = mqtt_settle(ack_run(pids), inflight)
    settled = [pid for pid in dict.fromkeys(pids) if kinds.get(pid) == "q1"]
    assert done == len(settled)
    assert inflight == {pid: out for pid, out in before.items() if pid not in settled}
    left = list(pids)
    for pid in settled:
        left.remove(pid)  # the first PUBACK of it settles; a repeat is left to the per-packet path
    assert rest == left


# --- decode_records: equal keys and headers shared within a batch ------------------------------

keys = st.sampled_from([None, b"", b"a", b"b", b"ab", b"a\x00"])
header_sets = st.sampled_from([(), PLAIN_HEADERS[0], PLAIN_HEADERS[1], (("mqtt-qos", b"10"),), (("a", None),),
                               (("a", b""),), (("a", b"1"), ("b", b"2")), (("a", b"1"),), (("a", b"1"), ("a", b"1"))])


@given(st.lists(st.lists(st.tuples(keys, st.binary(max_size=30) | st.none(), header_sets), min_size=1, max_size=10),
                min_size=1, max_size=3),
       st.integers(0, 4), st.integers(0, 12))
def test_records_of_a_batch_that_share_keys_and_headers_are_the_records_written(batches, codec, min_offset):
    buf = b""
    expected = []
    offset = 0
    for batch in batches:
        ts = [1_700_000_000_000 + offset + i for i in range(len(batch))]
        buf += encode_batch([v for _, v, _ in batch], [k for k, _, _ in batch], [h for _, _, h in batch], ts,
                            base_offset=offset, codec=codec)
        expected += [Record(offset + i, ts[i], k, v, h, "t", 3) for i, (k, v, h) in enumerate(batch)]
        offset += len(batch)
    records, end = decode_records(buf, 0, -1, min_offset, -1, "t", 3)
    assert end == len(buf)
    assert records == [r for r in expected if r.offset >= min_offset]
    starts = set(accumulate((len(b) for b in batches), initial=0))
    for prev, r in zip(records, records[1:]):
        if r.offset in starts:
            continue  # each batch decodes on its own
        if r.key is not None and r.key == prev.key:
            assert r.key is prev.key
        if r.headers == prev.headers:
            assert r.headers is prev.headers

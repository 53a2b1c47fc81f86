"""The MQTT codec: hypothesis round-trips of every packet in 3.1.1 and 5.0,
hand-made frames for every refusal, and topic filter rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from umlog.server.mqtt.codec import (
    PROPERTIES,
    Auth,
    Connack,
    Connect,
    Disconnect,
    MalformedPacket,
    MQTTError,
    PacketReader,
    PacketTooLarge,
    PingReq,
    PingResp,
    ProtocolError,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
    UnsupportedProtocolVersion,
    Will,
    check_topic_filter,
    check_topic_name,
    encode,
    encode_varint,
    parse_shared,
    topic_matches,
)

text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
blob = st.binary(max_size=40)
pid = st.integers(1, 0xFFFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
_VALUES = {0: st.integers(0, 255), 1: u16, 2: u32, 3: st.integers(1, 268_435_455), 4: text, 5: blob,
           6: st.tuples(text, text)}


@st.composite
def properties(draw, version):
    if version != 5:
        return {}
    out = {}
    for _pid, (name, typ) in PROPERTIES.items():
        if not draw(st.booleans()):
            continue
        if name in ("user_property", "subscription_identifier"):
            out[name] = draw(st.lists(_VALUES[typ], min_size=1, max_size=3))
        else:
            v = draw(_VALUES[typ])
            if name in ("receive_maximum", "maximum_packet_size") and v == 0:
                v = 1
            out[name] = v
    return out


@st.composite
def packets(draw, version):
    props = properties(version)
    kind = draw(st.sampled_from(["connect", "connack", "publish", "ack", "subscribe", "suback", "unsubscribe",
                                 "unsuback", "ping", "disconnect", "auth"] if version == 5 else
                                ["connect", "connack", "publish", "ack", "subscribe", "suback", "unsubscribe",
                                 "unsuback", "ping", "disconnect"]))
    if kind == "connect":
        will = None
        if draw(st.booleans()):
            will = Will(draw(text), draw(blob), draw(st.integers(0, 2)), draw(st.booleans()), draw(props))
        user = draw(st.none() | text)
        password = draw(st.none() | blob) if (user is not None or version == 5) else None
        return Connect(draw(text), version=version, clean_start=draw(st.booleans()), keep_alive=draw(u16),
                       username=user, password=password, will=will, properties=draw(props))
    if kind == "connack":
        return Connack(draw(st.booleans()), draw(st.integers(0, 255)), draw(props))
    if kind == "publish":
        qos = draw(st.integers(0, 2))
        return Publish(draw(text), draw(blob), qos, draw(st.booleans()), qos > 0 and draw(st.booleans()),
                       draw(pid) if qos else None, draw(props))
    if kind == "ack":
        cls = draw(st.sampled_from([PubAck, PubRec, PubRel, PubComp]))
        if version == 5:
            return cls(draw(pid), draw(st.integers(0, 255)), draw(props))
        return cls(draw(pid))
    if kind == "subscribe":
        subs = draw(st.lists(st.builds(Subscription, text, st.integers(0, 2),
                                       *([st.booleans(), st.booleans(), st.integers(0, 2)] if version == 5 else [])),
                             min_size=1, max_size=4))
        return Subscribe(draw(pid), subs, draw(props))
    if kind == "suback":
        return Suback(draw(pid), draw(st.lists(st.integers(0, 255), max_size=5)), draw(props))
    if kind == "unsubscribe":
        return Unsubscribe(draw(pid), draw(st.lists(text, min_size=1, max_size=4)), draw(props))
    if kind == "unsuback":
        if version == 5:
            return Unsuback(draw(pid), draw(st.lists(st.integers(0, 255), max_size=5)), draw(props))
        return Unsuback(draw(pid))
    if kind == "ping":
        return draw(st.sampled_from([PingReq(), PingResp()]))
    if kind == "disconnect":
        return Disconnect(draw(st.integers(0, 255)), draw(props)) if version == 5 else Disconnect()
    return Auth(draw(st.integers(0, 255)), draw(props))


@given(st.sampled_from([4, 5]).flatmap(lambda v: st.tuples(st.just(v), st.lists(packets(v), min_size=1,
                                                                                  max_size=5))),
       st.integers(1, 64))
def test_every_packet_round_trips_through_any_split_of_the_stream(vp, chunk):
    version, ps = vp
    data = b"".join(encode(p, version) for p in ps)
    r = PacketReader(version=version)
    got = []
    for i in range(0, len(data), chunk):
        r.feed(data[i:i + chunk])
        got += list(r.packets())
    assert got == ps
    assert r.buffered() == 0


def test_known_frames():
    # CONNECT 3.1.1, client id "c1", clean, keep alive 60 (as mosquitto_pub -i c1 sends it)
    frame = bytes.fromhex("100e00044d5154540402003c00026331")
    (p,) = _read(frame)
    assert p == Connect("c1", version=4, clean_start=True, keep_alive=60)
    assert encode(p) == frame
    # PUBLISH QoS 1 "a/b" id 10 payload "hi", MQTT 5 with a user property
    p = Publish("a/b", b"hi", 1, packet_id=10, properties={"user_property": [("k", "v")]})
    frame = encode(p, 5)
    assert frame == bytes.fromhex("3211" "0003612f62" "000a" "07" "2600016b000176" "6869")
    assert _read(frame, 5) == [p]
    # PUBACK in 5.0 with reason 0 and no properties is the 3.1.1 form (2 bytes)
    assert encode(PubAck(7), 5) == bytes.fromhex("40020007")
    assert _read(bytes.fromhex("4003000710"), 5) == [PubAck(7, 0x10)]


def _read(data, version=4, **kw):
    r = PacketReader(version=version, **kw)
    r.feed(data)
    return list(r.packets())


@pytest.mark.parametrize("frame,version,error,what", [
    ("00020000", 4, MalformedPacket, "type 0"),
    ("100d00044d5154540402003c000263", 4, MalformedPacket, "truncated"),  # remaining length short
    ("100f00044d5154540402003c000263310000", 4, MalformedPacket, "past its end"),
    ("100e00044d5154540403003c00026331", 4, MalformedPacket, "reserved flag"),
    ("100e00044d5154540602003c00026331", 4, UnsupportedProtocolVersion, "protocol level 6"),
    ("100e00044d5154580402003c00026331", 4, UnsupportedProtocolVersion, "not MQTT"),
    ("3606000161000168", 4, MalformedPacket, "QoS 3"),
    ("3805000161ffff", 4, MalformedPacket, "DUP set at QoS 0"),
    ("320500016100007878", 4, ProtocolError, "packet identifier 0"),
    ("60020001", 4, MalformedPacket, "flags"),  # PUBREL must have flags 0b0010
    ("820400010000", 4, MalformedPacket, "truncated"),
    ("82020001", 4, ProtocolError, "without a topic filter"),
    ("820600010001610f", 4, MalformedPacket, "reserved bits"),
    ("8207000100000161" "30", 5, ProtocolError, "retain handling 3"),
    ("300a000161" "06" "230001" "230001", 5, ProtocolError, "appears twice"),  # topic alias twice
    ("3006000161" "02" "0500", 5, MalformedPacket, "unknown property"),
    ("3006000161" "02" "0b00", 5, ProtocolError, "is 0"),  # subscription identifier 0
    ("3004" "0002c328", 4, MalformedPacket, "UTF-8"),
    ("c0ff80808000", 4, MalformedPacket, "longer than 4 bytes"),
    ("c08000", 4, MalformedPacket, "shortest form"),
    ("f000", 4, MalformedPacket, "MQTT 5"),
])
def test_refusals_name_what_is_wrong(frame, version, error, what):
    with pytest.raises(error, match=what):
        _read(bytes.fromhex(frame), version)


def test_the_reader_takes_the_version_of_the_connect_it_reads():
    # A client may send CONNECT and its first packets in one write: MQTT 5
    # properties after a version 5 CONNECT must be read as such.
    p = Publish("a", b"x", 1, packet_id=1, properties={"content_type": "t"})
    assert _read(encode(Connect("c", version=5), 5) + encode(p, 5))[1] == p


def test_a_packet_over_the_maximum_is_refused_from_its_fixed_header():
    r = PacketReader(max_packet_size=100)
    r.feed(b"\x30" + encode_varint(1000))  # no body sent yet
    with pytest.raises(PacketTooLarge) as e:
        list(r.packets())
    assert e.value.reason == 0x95


def test_a_partial_packet_waits_for_the_rest():
    frame = encode(Publish("t", b"x" * 300, 1, packet_id=1))
    r = PacketReader()
    r.feed(frame[:2])
    assert list(r.packets()) == []
    r.feed(frame[2:-1])
    assert list(r.packets()) == []
    r.feed(frame[-1:])
    assert [p.payload for p in r.packets()] == [b"x" * 300]


@pytest.mark.parametrize("f,name,match", [
    ("a/b", "a/b", True), ("a/+", "a/b", True), ("a/+", "a/b/c", False), ("a/#", "a", True),
    ("a/#", "a/b/c", True), ("#", "a/b", True), ("+/+", "/a", True), ("+", "/a", False),
    ("#", "$SYS/x", False), ("+/x", "$SYS/x", False), ("$SYS/#", "$SYS/x", True), ("a/+/c", "a//c", True),
    ("home/+/temp", "home/hall/temp", True), ("a", "a/", False), ("a/+", "a/", True),
])
def test_topic_matching(f, name, match):
    check_topic_filter(f)
    assert topic_matches(f, name) is match


@pytest.mark.parametrize("f", ["", "a/#/b", "a#", "a/b+", "+a", "##"])
def test_bad_filters(f):
    with pytest.raises(MQTTError) as e:
        check_topic_filter(f)
    assert e.value.reason == 0x8F


@pytest.mark.parametrize("name", ["", "a/+", "a/#"])
def test_bad_topic_names(name):
    with pytest.raises(MQTTError) as e:
        check_topic_name(name)
    assert e.value.reason == 0x90


def test_shared_subscriptions():
    assert parse_shared("$share/g/a/+") == ("g", "a/+")
    assert parse_shared("a/+") == (None, "a/+")
    for bad in ("$share/g", "$share//a", "$share/g+/a"):
        with pytest.raises(MQTTError):
            parse_shared(bad)

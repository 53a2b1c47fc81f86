"""The native PUBLISH/PUBACK path of the MQTT codec against the Python one.

``mqtt_scan`` may only take packets the Python decoder (``decode_packet``)
decodes, must decode them to the same packets, and must stop (not raise) at
anything else; ``mqtt_publish_frame`` must give the bytes of a plain
reference encoder (the layout of MQTT 5 section 3.3), which paho-mqtt reads
in test_codec_paho.py."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from umlog._native.core import mqtt_publish_frame, mqtt_scan
from umlog.server.mqtt.codec import (
    MAX_PACKET_SIZE,
    Disconnect,
    MQTTError,
    PingReq,
    PubAck,
    Publish,
    PubRec,
    decode_packet,
    encode,
    encode_properties,
    encode_publish,
    encode_varint,
)

texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
topics = texts.filter(bool)
payloads = st.binary(max_size=300)
pids = st.integers(1, 65535)


@st.composite
def publishes(draw, version: int, props: bool = False):
    qos = draw(st.integers(0, 2))
    p = Publish(draw(topics), draw(payloads), qos, draw(st.booleans()), qos > 0 and draw(st.booleans()),
                draw(pids) if qos else None)
    if props and version == 5 and draw(st.booleans()):
        p.properties = {"content_type": draw(texts), "message_expiry_interval": draw(pids)}
    return p


def stream_packets(version: int):
    """Mostly PUBLISH and PUBACK, and now and then a packet the native path leaves alone."""
    others = [PingReq(), PubRec(7), Disconnect(), PubAck(3, 0x10)]
    return st.one_of(publishes(version, props=True), pids.map(PubAck), st.sampled_from(others))


def frames_of(buf: bytes):
    """(first byte, body, total size) of each whole packet, by the reference framing."""
    pos = 0
    while pos < len(buf):
        length, shift, i = 0, 0, pos + 1
        while True:
            b = buf[i]
            length |= (b & 0x7F) << shift
            i += 1
            if not b & 0x80:
                break
            shift += 7
        yield buf[pos], buf[i:i + length], i - pos + length
        pos = i + length


def scan(buf, version: int, pos: int = 0, max_packet_size: int = MAX_PACKET_SIZE):
    out: list = []
    end = mqtt_scan(bytearray(buf), pos, version, max_packet_size, out, Publish, PubAck)
    return out, end


@given(st.sampled_from([4, 5]).flatmap(lambda v: st.tuples(st.just(v), st.lists(stream_packets(v), max_size=30))))
def test_a_scan_takes_the_plain_packets_up_to_the_first_other_one(vp):
    version, packets = vp
    frames = [encode(p, version) for p in packets]
    got, end = scan(b"".join(frames), version)
    expected = []
    for frame in frames:
        first, body, _ = next(frames_of(frame))
        p = decode_packet(first, memoryview(body), version)
        if not ((type(p) is Publish and not p.properties) or (first == 0x40 and len(frame) == 4)):
            break
        expected.append(p)
    assert got == expected
    assert end == sum(len(f) for f in frames[:len(expected)])


@given(st.sampled_from([4, 5]), st.lists(st.one_of(publishes(4), pids.map(PubAck)), min_size=1, max_size=5),
       st.data())
def test_a_partial_packet_stops_the_scan_before_it(version, packets, data):
    buf = b"".join(encode(p, version) for p in packets)
    cut = data.draw(st.integers(0, len(buf) - 1))
    got, end = scan(buf[:cut], version)
    assert got == packets[:len(got)]
    assert end == sum(len(encode(p, version)) for p in got) <= cut


@given(st.sampled_from([4, 5]), st.integers(0, 255), st.binary(max_size=40))
def test_any_bytes_are_taken_only_as_the_python_decoder_reads_them(version, first, rest):
    buf = bytes([first]) + rest
    got, end = scan(buf, version)
    assert not got or end <= len(buf)
    for p, (f, body, _size) in zip(got, frames_of(buf[:end])):
        assert decode_packet(f, memoryview(body), version) == p
    if not got:
        assert end == 0


@pytest.mark.parametrize("frame, why", [
    (b"\x36\x05\x00\x01a\x00\x01", "QoS 3"),
    (b"\x38\x04\x00\x01ax", "DUP at QoS 0"),
    (b"\x32\x05\x00\x01a\x00\x00", "packet id 0"),
    (b"\x30\x04\x00\x01\x00x", "U+0000 in the topic"),
    (b"\x30\x04\x00\x01\xffx", "a topic that is not UTF-8"),
    (b"\x30\x04\x00\x05abc", "a topic longer than the packet"),
    (b"\x40\x02\x00\x00", "PUBACK packet id 0"),
    (b"\x41\x02\x00\x01", "PUBACK flags"),
    (b"\x30\x80\x00", "a remaining length not in its shortest form"),
])
def test_what_the_python_decoder_refuses_is_left_to_it(frame, why):
    assert scan(frame, 4) == ([], 0), why
    assert scan(encode(PubAck(1)) + frame, 4) == ([PubAck(1)], 4), why
    framed = next(frames_of(frame), None) if frame[1] != 0x80 else None
    if framed is not None:
        with pytest.raises(MQTTError):
            decode_packet(framed[0], memoryview(framed[1]), 4)


def test_a_packet_over_the_maximum_is_left_to_the_reader():
    frame = encode(Publish("a", b"x" * 100, 1, packet_id=1))
    assert scan(frame, 4, max_packet_size=len(frame) - 1) == ([], 0)
    assert scan(frame, 4, max_packet_size=len(frame))[1] == len(frame)


def reference_publish(topic: str, payload: bytes, qos: int, retain: bool, dup: bool, pid, props: bytes) -> bytes:
    t = topic.encode()
    body = struct.pack(">H", len(t)) + t + (struct.pack(">H", pid) if qos else b"") + props + payload
    return bytes([0x30 | dup << 3 | qos << 1 | retain]) + encode_varint(len(body)) + body


@given(st.sampled_from([4, 5]).flatmap(lambda v: st.tuples(st.just(v), publishes(v, props=True))),
       st.sampled_from([0, 200, 20_000, 3_000_000]))
def test_publish_frames_are_the_reference_bytes_and_decode_back(vp, extra):
    version, p = vp
    p.payload += b"p" * extra  # remaining lengths of 1 to 4 bytes
    props = encode_properties(p.properties) if version == 5 else b""
    frame = encode_publish(p.topic, p.payload, p.qos, p.retain, p.dup, p.packet_id, p.properties, version)
    assert frame == reference_publish(p.topic, p.payload, p.qos, p.retain, p.dup, p.packet_id, props)
    first, body, size = next(frames_of(frame))
    assert size == len(frame)
    assert decode_packet(first, memoryview(body), version) == p


def test_publish_frame_refusals():
    with pytest.raises(ValueError, match="packet id"):
        mqtt_publish_frame("a", b"", 2, 0, b"")
    with pytest.raises(ValueError, match="65,535"):
        mqtt_publish_frame("a" * 65536, b"", 0, 0, b"")
    with pytest.raises(ValueError, match="65,535"):
        mqtt_publish_frame("a", b"", 2, 65536, b"")
    with pytest.raises(UnicodeEncodeError):
        mqtt_publish_frame("\ud800", b"", 0, 0, b"")

"""The hand-written hot-path codecs (wire.py) against kio as the oracle."""

from __future__ import annotations

import io
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kio.index import load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader, entity_writer

from umlog.errors import RemoteProtocolError
from umlog.server.kafka.wire import (
    FetchPartitionResult,
    decode_produce_request,
    encode_fetch_response,
    encode_produce_response,
    read_request_header,
    read_uvarint,
    write_uvarint,
)

from .kafka_frames import ms, request_frame

PRODUCE_VERSIONS = range(3, 12)
FETCH_VERSIONS = range(4, 13)

topic_names = st.text(st.characters(min_codepoint=48, max_codepoint=122), min_size=1, max_size=20)
records = st.one_of(st.none(), st.binary(max_size=300))
produce_topics = st.lists(
    st.tuples(topic_names, st.lists(st.tuples(st.integers(0, 2**31 - 1), records), max_size=4)),
    max_size=4,
)


def _mod(cls):
    import sys

    return sys.modules[cls.__module__]


def kio_produce(version, transactional_id, acks, timeout, topics):
    cls = load_request_schema(0, version)
    m = _mod(cls)
    kw = {}
    if any(f == "transactional_id" for f in cls.__dataclass_fields__):
        kw["transactional_id"] = transactional_id
    return cls(acks=acks, timeout=ms(timeout), topic_data=tuple(
        m.TopicProduceData(name=n, partition_data=tuple(
            m.PartitionProduceData(index=i, records=r) for i, r in parts))
        for n, parts in topics), **kw)


@pytest.mark.parametrize("version", PRODUCE_VERSIONS)
@given(topics=produce_topics, acks=st.sampled_from([0, 1, -1]),
       txn=st.one_of(st.none(), topic_names), timeout=st.integers(0, 2**31 - 1))
def test_produce_request_decodes_like_kio(version, topics, acks, txn, timeout):
    frame = bytearray(request_frame(kio_produce(version, txn, acks, timeout, topics))[4:])
    view = memoryview(frame)
    h = read_request_header(view, version >= 9)
    assert (h.api_key, h.api_version, h.client_id) == (0, version, "test")
    ours = decode_produce_request(view, h.body_pos, version)
    theirs, _ = entity_reader(load_request_schema(0, version))(bytes(frame), h.body_pos)
    assert ours.acks == theirs.acks
    assert ours.timeout_ms == timeout
    assert ours.transactional_id == theirs.transactional_id
    got = [(n, [(p.index, None if p.records is None else bytes(p.records)) for p in parts])
           for n, parts in ours.topics]
    want = [(t.name, [(p.index, p.records) for p in t.partition_data]) for t in theirs.topic_data]
    assert got == want


def test_produce_records_are_views_of_the_frame():
    frame = bytearray(request_frame(kio_produce(9, None, 1, 100, [("t", [(0, b"x" * 70)])]))[4:])
    view = memoryview(frame)
    req = decode_produce_request(view, read_request_header(view, True).body_pos, 9)
    rec = req.topics[0][1][0].records
    assert isinstance(rec, memoryview) and rec.obj is frame and not rec.readonly


@pytest.mark.parametrize("version", [3, 9])
def test_truncated_produce_request_raises_naming_the_field(version):
    frame = request_frame(kio_produce(version, None, 1, 100, [("topic", [(0, b"y" * 100)])]))[4:]
    h = read_request_header(memoryview(frame), version >= 9)
    for cut in range(h.body_pos, len(frame) - 1, 7):
        with pytest.raises(RemoteProtocolError, match="truncated produce request"):
            decode_produce_request(memoryview(frame[:cut]), h.body_pos, version)


def test_absurd_array_length_is_refused_early():
    body = struct.pack(">hhi", -1, 1, 100) + struct.pack(">i", 2**31 - 1)
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        decode_produce_request(memoryview(body), 0, 3)


def kio_produce_response(version, rows):
    cls = load_response_schema(0, version)
    m = _mod(cls)
    topics = tuple(
        m.TopicProduceResponse(name=n, partition_responses=tuple(
            m.PartitionProduceResponse(**{k: v for k, v in dict(
                index=i, error_code=ErrorCode(code), base_offset=base, log_append_time=-1 if lat < 0 else None,
                log_start_offset=start, record_errors=(), error_message=None).items()
                if k in m.PartitionProduceResponse.__dataclass_fields__})
            for i, code, base, lat, start in parts))
        for n, parts in rows)
    return cls(responses=topics, throttle_time=ms(0))


@pytest.mark.parametrize("version", PRODUCE_VERSIONS)
@given(rows=st.lists(st.tuples(topic_names, st.lists(st.tuples(
    st.integers(0, 1000), st.sampled_from([0, 2, 3, 45, 87]), st.integers(-1, 2**40),
    st.just(-1), st.integers(-1, 2**40)), max_size=3)), max_size=3))
def test_produce_response_encodes_like_kio(version, rows):
    ours = bytes(encode_produce_response(version, rows))
    cls = load_response_schema(0, version)
    decoded, used = entity_reader(cls)(ours, 0)
    assert used == len(ours)
    got = [(t.name, [(p.index, p.error_code.value, p.base_offset,
                      getattr(p, "log_start_offset", -1)) for p in t.partition_responses])
           for t in decoded.responses]
    want = [(n, [(i, c, b, s if version >= 5 else -1) for i, c, b, _, s in parts]) for n, parts in rows]
    assert got == want
    # and byte for byte, where kio can express the same values
    if all(lat == -1 for _, parts in rows for *_, lat, _s in parts):
        out = io.BytesIO()
        entity_writer(cls)(out, decoded)
        assert out.getvalue() == ours


fetch_parts = st.lists(st.tuples(
    st.integers(0, 100), st.sampled_from([0, 1, 3]), st.integers(-1, 2**40), st.integers(-1, 2**40),
    st.one_of(st.none(), st.lists(st.binary(min_size=1, max_size=200), max_size=3))), max_size=3)


@pytest.mark.parametrize("version", FETCH_VERSIONS)
@given(topics=st.lists(st.tuples(topic_names, fetch_parts), max_size=3))
def test_fetch_response_encodes_byte_for_byte_like_kio(version, topics):
    parts = [(n, [FetchPartitionResult(i, e, hw, ls, recs) for i, e, hw, ls, recs in ps]) for n, ps in topics]
    ours = b"".join(bytes(p) for p in encode_fetch_response(version, parts))
    cls = load_response_schema(1, version)
    m = _mod(cls)
    kio_topics = tuple(m.FetchableTopicResponse(topic=n, partitions=tuple(
        m.PartitionData(**{k: v for k, v in dict(
            partition_index=p.index, error_code=ErrorCode(p.error_code), high_watermark=p.high_watermark,
            last_stable_offset=p.high_watermark, log_start_offset=p.log_start_offset,
            aborted_transactions=None, preferred_read_replica=-1,
            records=None if p.records is None else b"".join(p.records)).items()
            if k in m.PartitionData.__dataclass_fields__}) for p in ps)) for n, ps in parts)
    kw = {"throttle_time": ms(0), "responses": kio_topics}
    if version >= 7:
        kw.update(error_code=ErrorCode.none, session_id=0)
    out = io.BytesIO()
    entity_writer(cls)(out, cls(**kw))
    assert ours == out.getvalue()


def test_fetch_response_passes_stored_buffers_through():
    stored = memoryview(bytearray(b"z" * 1000))
    pieces = encode_fetch_response(12, [("t", [FetchPartitionResult(0, 0, 10, 0, [stored])])])
    assert any(p is stored for p in pieces)


@pytest.mark.parametrize("value", [0, 1, 127, 128, 255, 256, 16383, 16384, 65535, 65536, 2**21, 2**28, 2**32 - 1])
def test_uvarint_round_trip_at_edges(value):
    out = bytearray()
    write_uvarint(out, value)
    assert read_uvarint(memoryview(out), 0) == (value, len(out))


def test_uvarint_too_long_or_truncated():
    with pytest.raises(RemoteProtocolError, match="longer than 5"):
        read_uvarint(memoryview(b"\xff" * 6), 0)
    with pytest.raises(RemoteProtocolError, match="truncated"):
        read_uvarint(memoryview(b"\xff\xff"), 0)

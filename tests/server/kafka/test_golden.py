"""Golden frames: requests that real clients sent, and what our server answered.

Captured with ``tools/capture_frames.py`` (a loopback proxy) from kcat
(librdkafka 2.0.2), confluent-kafka (librdkafka 2.16: the producer/consumer and
the AdminClient, client id "rdkafka"), kafka-python 3.0 and aiokafka, one
frame per client, API, direction and version, under tests/data/golden/<client id>/.

- every request decodes with kio (our oracle) and re-encodes to the same bytes,
  so nothing a client sends is lost or misread by the codecs;
- our own Produce decoder finds the same record bytes kio does;
- every response our server sent decodes with kio and re-encodes byte for
  byte: the server emits canonical frames (no stray bytes, right versions).
"""

from __future__ import annotations

import io
import os
import re
import struct

import pytest
from kio.index import load_request_schema, load_response_schema
from kio.schema.request_header.v1.header import RequestHeader as RequestHeaderV1
from kio.schema.request_header.v2.header import RequestHeader as RequestHeaderV2
from kio.serial import entity_reader, entity_writer

from umlog.server.kafka.wire import decode_produce_request, read_request_header

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "..", "data", "golden")
NAME = re.compile(r"^(?P<api>[a-z_]+)_(?P<kind>request|response)_v(?P<version>\d+)_\d{3}\.bin$")


def frames(kind: str):
    out = []
    for client in sorted(os.listdir(GOLDEN)):
        d = os.path.join(GOLDEN, client)
        for name in sorted(os.listdir(d)):
            m = NAME.match(name)
            if m and m.group("kind") == kind:
                out.append(pytest.param(os.path.join(d, name), int(m.group("version")), id=f"{client}/{name}"))
    return out


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_every_client_is_represented():
    clients = set(os.listdir(GOLDEN))
    assert {"golden-kcat", "golden-confluent", "rdkafka", "golden-kafka-python", "golden-aiokafka"} <= clients
    for c in clients:
        names = os.listdir(os.path.join(GOLDEN, c))
        assert any(n.startswith("api_versions_request") for n in names), c


@pytest.mark.parametrize("path,version", frames("request"))
def test_request_reencodes_byte_for_byte(path, version):
    frame = read(path)
    key, v, _ = struct.unpack_from(">hhi", frame, 0)
    assert v == version
    cls = load_request_schema(key, version)
    hcls = RequestHeaderV2 if cls.__flexible__ else RequestHeaderV1
    header, hused = entity_reader(hcls)(frame, 0)
    body, used = entity_reader(cls)(frame, hused)
    assert hused + used == len(frame), f"{len(frame) - hused - used} bytes left after the body"
    out = io.BytesIO()
    entity_writer(hcls)(out, header)
    entity_writer(cls)(out, body)
    assert out.getvalue() == frame
    if key == 0:  # our Produce decoder against kio
        view = memoryview(bytearray(frame))
        h = read_request_header(view, cls.__flexible__)
        ours = decode_produce_request(view, h.body_pos, version)
        theirs = [(t.name, p.index, p.records) for t in body.topic_data for p in t.partition_data]
        mine = [(name, p.index, bytes(p.records)) for name, parts in ours.topics for p in parts]
        assert mine == theirs


@pytest.mark.parametrize("path,version", frames("response"))
def test_our_response_reencodes_byte_for_byte(path, version):
    frame = read(path)
    api = os.path.basename(path).split("_response_")[0]
    key = {"produce": 0, "fetch": 1, "list_offsets": 2, "metadata": 3, "find_coordinator": 10,
           "api_versions": 18, "create_topics": 19, "delete_topics": 20, "init_producer_id": 22,
           "describe_configs": 32, "alter_configs": 33, "create_partitions": 37}[api]
    cls = load_response_schema(key, version)
    pos = 4  # correlation id
    if cls.__flexible__ and key != 18:  # response header v1 (ApiVersions always answers with v0)
        assert frame[pos] == 0, "tagged fields in the response header"
        pos += 1
    body, used = entity_reader(cls)(frame, pos)
    assert pos + used == len(frame)
    out = io.BytesIO()
    entity_writer(cls)(out, body)
    assert out.getvalue() == frame[pos:]

"""Bad Kafka frames against a real ``umlog serve``: a short hypothesis run of tools/fuzz_kafka.py
(the long one is ``-m fuzz``), and regression tests for what the fuzzer found."""

from __future__ import annotations

import datetime
import os
import socket
import struct
import sys

import fuzz_kafka  # tools/, put on sys.path by conftest.py
import pytest
from harness import Server
from kio.index import load_request_schema

import umlog
from umlog._native.core import encode_batch

pytestmark = pytest.mark.clients


def test_fuzz_short_run(tmp_path):
    """A few seconds of every kind of bad input; every invariant of fuzz_kafka.run holds."""
    r = fuzz_kafka.run(str(tmp_path), seconds=float(os.environ.get("UMLOG_FUZZ_SECONDS", "5")), log=print)
    print(r)
    assert r["cases"] >= 50 and r["good_client_rounds"] > 0 and r["batches_stored"] > 0, r
    assert set(r["kinds"]) == {"raw", "header", "request", "produce", "length"}, r


FUZZ_SECONDS = float(os.environ.get("UMLOG_FUZZ_SECONDS", "300"))


@pytest.mark.fuzz
@pytest.mark.timeout(int(FUZZ_SECONDS) + 300)  # the run, plus room for the start and the final checks
def test_fuzz_long_run(tmp_path):
    r = fuzz_kafka.run(str(tmp_path), seconds=FUZZ_SECONDS, log=print)
    print(r)


# --- found by the fuzzer ------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path):
    data = str(tmp_path / "data")
    with umlog.open(data) as b:
        b.create_topic("t")
        b.topic("__consumer_offsets")  # the internal topic exists
    s = Server(data)
    s.start()
    yield s
    assert s.stop() == 0
    log = s.log_text()
    assert " ERROR " not in log and "Traceback" not in log, log


def _m(cls):
    return sys.modules[cls.__module__]


def test_produce_to_the_internal_offsets_topic_is_refused(server):
    """Found: keyless records sent to __consumer_offsets were logged as a server ERROR;
    worse, a client could write junk the group offset store replays. Kafka refuses
    appends to internal topics from clients: INVALID_TOPIC_EXCEPTION, and so do we."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        r = fuzz_kafka.call(sock, fuzz_kafka.produce_request("__consumer_offsets", 0, encode_batch([b"junk"],
                                                                                                 [b"k"])), 1, 9)
        assert r.responses[0].partition_responses[0].error_code == 17  # INVALID_TOPIC_EXCEPTION
    finally:
        sock.close()
    assert "produce to internal topic __consumer_offsets refused" in server.log_text()


def test_null_array_in_a_request_closes_the_connection(server):
    """Found: kio decodes a null (-1) array as None even where the schema forbids it;
    CreateTopics then failed with a TypeError (an ERROR and UNKNOWN_SERVER_ERROR).
    Now refused like Kafka does: the connection is closed with one warning."""
    body = struct.pack(">i", -1) + struct.pack(">i", 1000) + b"\x00"  # CreateTopics v4: topics = null
    head = struct.pack(">hhih", 19, 4, 77, 4) + b"fuzz"
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        sock.sendall(struct.pack(">i", len(head) + len(body)) + head + body)
        assert sock.recv(100) == b""
    finally:
        sock.close()
    assert "non-nullable field topics was serialized as null" in server.log_text()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as ok:
        fuzz_kafka.call(ok, fuzz_kafka.fetch_request("t", 0, 0), 1, 12)


def test_partition_counts_beyond_the_file_descriptor_budget_are_refused(server):
    """Found: one CreatePartitions with a large count opened descriptors until EMFILE;
    the half-made partitions then stopped the data dir from opening at all. Now the
    door refuses what would not fit (POLICY_VIOLATION) and the engine undoes a
    creation that fails half-way (tests/log/test_faults.py)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        cp = load_request_schema(37, 3)
        r = fuzz_kafka.call(sock, cp(topics=(_m(cp).CreatePartitionsTopic(name="t", count=60_000, assignments=None),),
                                     timeout=datetime.timedelta(seconds=30), validate_only=False), 1, 3)
        assert r.results[0].error_code == 44 and "file descriptors" in r.results[0].error_message
        ct = load_request_schema(19, 7)
        r = fuzz_kafka.call(sock, ct(topics=(_m(ct).CreatableTopic(name="huge", num_partitions=60_000,
                                                                    replication_factor=1, assignments=(),
                                                                    configs=()),),
                                     timeout=datetime.timedelta(seconds=30), validate_only=False), 2, 7)
        assert r.topics[0].error_code == 44
        r = fuzz_kafka.call(sock, cp(topics=(_m(cp).CreatePartitionsTopic(name="t", count=3, assignments=None),),
                                     timeout=datetime.timedelta(seconds=30), validate_only=False), 3, 3)
        assert r.results[0].error_code == 0  # a sane count still works
    finally:
        sock.close()
    assert sorted(n for n in os.listdir(server.data_dir) if n.startswith(("t-", "huge"))) == ["t-0", "t-1", "t-2"]
    server.stop()
    server.start()  # and the data dir opens again


def test_metadata_v11_with_a_null_topic_name_closes_the_connection(server):
    """Found by the long fuzz run: Metadata v10-v11 requests may carry a null topic
    name, but their responses cannot (kio's writer raised: 'internal error')."""
    # header v2: api 3, version 11, correlation 5, client_id null, no tags; then
    # topics: one (compact 2), topic_id zero uuid, name null (compact 0), tags;
    # allow_auto_topic_creation, include_topic_authorized_operations, tags.
    frame = struct.pack(">hhih", 3, 11, 5, -1) + b"\x00" + b"\x02" + bytes(16) + b"\x00\x00" + b"\x00\x00\x00"
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        sock.sendall(struct.pack(">i", len(frame)) + frame)
        assert sock.recv(100) == b""
    finally:
        sock.close()
    assert "does not support null topic names" in server.log_text()


def test_metadata_auto_create_of_a_colliding_name_is_an_invalid_topic(server):
    """Found by the long fuzz run: 'fz_0' asked for while 'fz.0' exists (one name to
    Kafka): create_topic refused it as existing, then the lookup raised UnknownTopicError."""
    md = load_request_schema(3, 4)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        r = fuzz_kafka.call(sock, md(topics=(_m(md).MetadataRequestTopic(name="fz.0"),),
                                     allow_auto_topic_creation=True), 1, 4)
        assert r.topics[0].error_code == 0
        r = fuzz_kafka.call(sock, md(topics=(_m(md).MetadataRequestTopic(name="fz_0"),),
                                     allow_auto_topic_creation=True), 2, 4)
        assert r.topics[0].error_code == 17  # INVALID_TOPIC_EXCEPTION

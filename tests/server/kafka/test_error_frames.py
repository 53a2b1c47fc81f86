"""Error answers against Kafka's schemas: decoded with kio, nothing null where Kafka writes empty.

For every error the door answers in Fetch (each version v4-v12 of the hand-written
``wire.encode_fetch_response``), Produce (v3-v11), ListOffsets, Metadata and the
group APIs, the response is driven in-process (``test_protocol``'s door and
``call``), decoded with kio as Kafka's schema for that version, and compared
with the answer Kafka would send, built with kio's own classes: the rule kept is
that a field Kafka writes as an empty value (Fetch records, Produce record_errors,
SyncGroup assignment, ...) is never null in ours. A null records field in a Fetch
error row made librdkafka fail to parse the whole response (PROTOERR) and never
apply auto.offset.reset; ``test_error_paths.py`` shows the same with real clients.

Values that differ from Kafka on purpose are named where they are compared.
"""

from __future__ import annotations

import dataclasses
import sys

import pytest
from kio.schema.errors import ErrorCode

from umlog._native.core import encode_batch
from umlog.server.kafka.handlers._util import make

from .kafka_frames import ms, request_class
from .test_protocol import broker, call, door, produce_request  # noqa: F401  (fixtures)


def module_of(cls):
    return sys.modules[cls.__module__]


def nulls(entity, path: str = "") -> list[str]:
    """Every field of a decoded kio entity (recursively) that is None."""
    out = []
    for f in dataclasses.fields(entity):
        v = getattr(entity, f.name)
        p = f"{path}.{f.name}" if path else f.name
        if v is None:
            out.append(p)
        elif dataclasses.is_dataclass(v):
            out += nulls(v, p)
        elif isinstance(v, tuple):
            for i, item in enumerate(v):
                if dataclasses.is_dataclass(item):
                    out += nulls(item, f"{p}[{i}]")
    return out


def strip(path: str) -> str:
    """``responses[0].partitions[1].records`` -> ``responses.partitions.records``."""
    import re

    return re.sub(r"\[\d+\]", "", path)


@pytest.fixture
def topics(broker):  # noqa: F811
    t = broker.create_topic("t")
    t.partition(0).append_batches(encode_batch([b"v%d" % i for i in range(10)], [None] * 10))
    low = broker.create_topic("low", config={"segment.bytes": 4096, "retention.bytes": 1})
    p = low.partition(0)
    for _ in range(3):
        p.append_batches(encode_batch([b"l%d" % i for i in range(10)], [None] * 10))
        p.roll()
    broker.run_retention("low")
    assert p.start_offset == 20  # retention keeps the last closed segment under retention.bytes
    broker.create_topic("small", config={"max.message.bytes": 1000})
    broker.create_topic("seg", config={"segment.bytes": 4096, "max.message.bytes": 1 << 20})
    broker.create_topic("compacted", config={"cleanup.policy": "compact"})
    return broker


# --- Fetch ------------------------------------------------------------------------------------------

FETCH_CASES = [  # (topic, partition, offset, error, high watermark, log start) as we answer them
    ("t", 0, 1000, ErrorCode.offset_out_of_range, 10, 0),  # past the end
    ("low", 0, 0, ErrorCode.offset_out_of_range, 30, 20),  # below the start
    ("nope", 0, 0, ErrorCode.unknown_topic_or_partition, -1, -1),
    ("t", 7, 0, ErrorCode.unknown_topic_or_partition, -1, -1),
]


def fetch_request_v(version: int, wanted):
    cls = request_class(1, version)
    m = module_of(cls)
    topics = tuple(make(m.FetchTopic, topic=t, partitions=(make(
        m.FetchPartition, partition=p, fetch_offset=o, partition_max_bytes=1 << 20, current_leader_epoch=-1,
        log_start_offset=-1, last_fetched_epoch=-1),)) for t, p, o in wanted)
    return make(cls, replica_id=-1, max_wait=ms(0), min_bytes=1, max_bytes=1 << 20, isolation_level=0,
                session_id=0, session_epoch=-1, topics=topics, forgotten_topics_data=(), rack_id="")


def kafka_fetch_response(version: int, cases):
    """Kafka's error rows (FetchResponse.partitionResponse): records MemoryRecords.EMPTY,
    aborted_transactions null (READ_UNCOMMITTED), preferred_read_replica -1. Kafka
    answers high watermark and log start -1 on OFFSET_OUT_OF_RANGE; we send the
    partition's real ones (clients ignore them there, and they help a human)."""
    cls = load_response(1, version)
    m = module_of(cls)
    topics = tuple(make(m.FetchableTopicResponse, topic=t, partitions=(make(
        m.PartitionData, partition_index=p, error_code=err, high_watermark=hw, last_stable_offset=hw,
        log_start_offset=start, aborted_transactions=None, preferred_read_replica=-1, records=b"",
        **tagged_defaults(m)),))
        for t, p, _, err, hw, start in cases)
    return make(cls, throttle_time=ms(0), error_code=ErrorCode.none, session_id=0, responses=topics)


def tagged_defaults(m) -> dict:
    """v12's tagged fields, absent from the wire, as kio's defaults."""
    names = {"diverging_epoch": "EpochEndOffset", "current_leader": "LeaderIdAndEpoch", "snapshot_id": "SnapshotId"}
    return {f: getattr(m, c)() for f, c in names.items() if hasattr(m, c)}


def load_response(key, version):
    from kio.index import load_response_schema

    return load_response_schema(key, version)


@pytest.mark.parametrize("version", range(4, 13))
async def test_fetch_error_rows_are_kafkas(door, topics, version):  # noqa: F811
    ours = await call(door, fetch_request_v(version, [(t, p, o) for t, p, o, *_ in FETCH_CASES]))
    assert ours == kafka_fetch_response(version, FETCH_CASES)
    # Only aborted_transactions may be null (Kafka writes null there too).
    assert {strip(n) for n in nulls(ours)} <= {"responses.partitions.aborted_transactions"}
    for t in ours.responses:
        for p in t.partitions:
            assert p.records == b""


# --- Produce ---------------------------------------------------------------------------------------


PRODUCE_CASES = [  # (topic, partition, records, error)
    ("small", 0, encode_batch([b"x" * 5000], [None]), ErrorCode.message_too_large),
    ("seg", 0, encode_batch([b"y" * 10_000], [None]), ErrorCode.record_list_too_large),
    ("compacted", 0, encode_batch([b"keyless"], [None]), ErrorCode.invalid_record),
    ("nope", 0, encode_batch([b"z"], [None]), ErrorCode.unknown_topic_or_partition),
    ("t", 9, encode_batch([b"z"], [None]), ErrorCode.unknown_topic_or_partition),
]


def kafka_produce_response(version, topic, index, err):
    """Kafka: base_offset -1, log_append_time -1 (kio reads it as None), log_start_offset
    -1, record_errors empty, error_message null (its schema's default), on every
    refused partition."""
    cls = load_response(0, version)
    m = module_of(cls)
    return make(cls, responses=(make(m.TopicProduceResponse, name=topic, partition_responses=(make(
        m.PartitionProduceResponse, index=index, error_code=err, base_offset=-1, log_append_time=None,
        log_start_offset=-1, record_errors=(), error_message=None),)),), throttle_time=ms(0))


def check_produce(ours, version, topic, index, err):
    assert ours == kafka_produce_response(version, topic, index, err)
    assert {strip(n) for n in nulls(ours)} <= {"responses.partition_responses.error_message",
                                               "responses.partition_responses.log_append_time"}


@pytest.mark.parametrize("version", range(3, 12))
@pytest.mark.parametrize("case", PRODUCE_CASES, ids=lambda c: c[3].name)
async def test_produce_errors_are_kafkas(door, topics, version, case):  # noqa: F811
    topic, index, records, err = case
    ours = await call(door, produce_request(topic, index, records, version=version))
    check_produce(ours, version, topic, index, err)


@pytest.mark.parametrize("version", [3, 8, 11])
async def test_idempotent_sequence_errors_are_kafkas(door, topics, version):  # noqa: F811
    """Real clients never send these (librdkafka only gaps its sequences when the
    broker lost data), so they are driven here: a gap in the sequence, then an
    epoch older than the producer's."""
    pid = door.new_producer().producer_id

    def batch(seq, epoch):
        return encode_batch([b"i"], [b"k"], producer_id=pid, producer_epoch=epoch, base_sequence=seq)

    ours = await call(door, produce_request("t", 0, batch(5, 0), version=version))
    check_produce(ours, version, "t", 0, ErrorCode.out_of_order_sequence_number)
    ours = await call(door, produce_request("t", 0, batch(0, 1), version=version))
    assert ours.responses[0].partition_responses[0].error_code == ErrorCode.none
    ours = await call(door, produce_request("t", 0, batch(1, 0), version=version))
    check_produce(ours, version, "t", 0, ErrorCode.invalid_producer_epoch)


# --- ListOffsets, Metadata, the group APIs ---------------------------------------------------------


@pytest.mark.parametrize("version", range(1, 7))
async def test_list_offsets_unknown_partition_is_kafkas(door, topics, version):  # noqa: F811
    cls = request_class(2, version)
    m = module_of(cls)
    req = make(cls, replica_id=-1, isolation_level=0, topics=(make(m.ListOffsetsTopic, name="nope", partitions=(
        make(m.ListOffsetsPartition, partition_index=0, current_leader_epoch=-1, timestamp=-1),)),))
    ours = await call(door, req)
    p = ours.topics[0].partitions[0]
    # Kafka: timestamp -1 (kio: None), offset -1, leader_epoch -1.
    assert (p.error_code, p.offset, getattr(p, "leader_epoch", -1)) == (ErrorCode.unknown_topic_or_partition, -1, -1)
    assert {strip(n) for n in nulls(ours)} <= {"topics.partitions.timestamp"}


@pytest.mark.parametrize("version", range(4, 13))  # v0-v3 always auto-create, as in Kafka
async def test_metadata_unknown_topic_is_kafkas(door, topics, version):  # noqa: F811
    cls = request_class(3, version)
    m = module_of(cls)
    ours = await call(door, make(cls, topics=(make(m.MetadataRequestTopic, name="nope", topic_id=None),),
                                 allow_auto_topic_creation=False, include_cluster_authorized_operations=False,
                                 include_topic_authorized_operations=False))
    (t,) = ours.topics
    assert (t.error_code, t.name, t.partitions) == (ErrorCode.unknown_topic_or_partition, "nope", ())
    # Kafka writes a null topic id as the zero uuid (kio: None) and a null rack.
    assert {strip(n) for n in nulls(ours)} <= {"topics.topic_id", "brokers.rack", "cluster_id"} - (
        {"cluster_id"} if version >= 2 else set())


@pytest.mark.parametrize("version", range(0, 6))
async def test_sync_group_unknown_member_is_kafkas(door, version):  # noqa: F811
    cls = request_class(14, version)
    ours = await call(door, make(cls, group_id="g", generation_id=3, member_id="who", group_instance_id=None,
                                 protocol_type="consumer", protocol_name="range", assignments=()))
    # Kafka: the assignment is empty bytes, never null; protocol type/name null (v5+).
    assert ours.error_code == ErrorCode.unknown_member_id and ours.assignment == b""
    assert {strip(n) for n in nulls(ours)} <= {"protocol_type", "protocol_name"}


@pytest.mark.parametrize("version", range(0, 5))
async def test_heartbeat_unknown_member_is_kafkas(door, version):  # noqa: F811
    cls = request_class(12, version)
    ours = await call(door, make(cls, group_id="g", generation_id=3, member_id="who", group_instance_id=None))
    assert ours.error_code == ErrorCode.unknown_member_id and nulls(ours) == []


@pytest.mark.parametrize("version", range(2, 10))
async def test_offset_commit_unknown_member_and_partition_are_kafkas(door, topics, version):  # noqa: F811
    cls = request_class(8, version)
    m = module_of(cls)

    def commit(generation, member, topic):
        return make(cls, group_id="g", generation_id_or_member_epoch=generation, member_id=member,
                    group_instance_id=None, retention_time_ms=-1, topics=(make(
                        m.OffsetCommitRequestTopic, name=topic, partitions=(make(
                            m.OffsetCommitRequestPartition, partition_index=0, committed_offset=5,
                            committed_leader_epoch=-1, commit_timestamp=-1, committed_metadata=""),)),))

    ours = await call(door, commit(3, "who", "t"))
    assert ours.topics[0].partitions[0].error_code in (ErrorCode.unknown_member_id, ErrorCode.illegal_generation)
    ours = await call(door, commit(-1, "", "nope"))
    assert ours.topics[0].partitions[0].error_code == ErrorCode.unknown_topic_or_partition
    assert nulls(ours) == []

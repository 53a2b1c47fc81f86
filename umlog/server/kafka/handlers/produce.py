"""Produce (key 0): validate, sequence-check and append record batches as received.

Decoded by ``wire.decode_produce_request``: each partition's records are a view
of the request frame, handed to ``Partition.append_batches`` which validates
every batch natively (CRC, magic, count, offset deltas), assigns offsets in place
and stores the bytes as they are, compressed or not. A refused batch stores
nothing and answers CORRUPT_MESSAGE.

Versions: v3-v11 carry RecordBatch v2; v0-v2 (clients from before Kafka 0.11)
carry the old message format, which ``..legacy.upconvert_produce`` turns into
one RecordBatch v2 per partition before anything below sees it (a bad CRC or
a malformed set: CORRUPT_MESSAGE for that partition).

Sizes, as Kafka: a batch over the topic's ``max.message.bytes`` is
MESSAGE_TOO_LARGE, a partition's records over ``segment.bytes``
RECORD_LIST_TOO_LARGE (``_check_sizes``).

Idempotent producers (producerId >= 0 in the batch header): the state is the
partition's own (``Partition.producer_state``, Kafka's ProducerStateManager:
snapshots at rolls and close, the batches after the newest one replayed after
a crash), so it survives rolls and restarts. One batch per partition per
request; an epoch older than the producer's is INVALID_PRODUCER_EPOCH; a batch
whose sequence range equals one of the last 5 appended for that producer and
partition is a duplicate and is acknowledged with its original offsets without
storing it again; any other sequence that does not follow the last one is
OUT_OF_ORDER_SEQUENCE_NUMBER. A producer id the partition has never seen and
this process did not issue may start at any sequence.

``--fsync always``: the response waits for a group-committed fdatasync that
started after the appends (the hub's durability gate, ``hub.durable``), and so
does the answer to a retried duplicate (its original may still be waiting for
its own). Readers waiting for these partitions are woken by the engine's append
listeners (the hub), not here.

With security on, a topic the principal may not WRITE answers
TOPIC_AUTHORIZATION_FAILED for its partitions (``..authz``).

Check-then-append runs without an await in between, so concurrent requests
from several connections cannot interleave between the sequence check and the
append.
"""

from __future__ import annotations

import logging
import time

from kio.schema.errors import ErrorCode

from umlog import errors
from umlog.broker import INTERNAL_TOPICS
from umlog.log.producer_state import seq_add

from ..errors import error_code_for
from ..legacy import upconvert_produce
from ..wire import decode_produce_request, encode_produce_response

API_KEY = 0
API_VERSIONS = (0, 11)

log = logging.getLogger("umlog.server.kafka")

_MAGIC_OFFSET = 16  # in a RecordBatch header (layout drawn in umlog/_native/core.pyi)


def decode_request(buf: memoryview, pos: int, version: int):
    return decode_produce_request(buf, pos, version)


class _Refused(Exception):
    def __init__(self, code: ErrorCode, why: str) -> None:
        super().__init__(why)
        self.code = code


def _check_sizes(infos, total: int, config) -> None:
    """Kafka's size limits (UnifiedLog.append), with its codes: a batch over the
    topic's max.message.bytes is MESSAGE_TOO_LARGE, a partition's records over
    segment.bytes RECORD_LIST_TOO_LARGE. Clients act on these codes (librdkafka
    fails the message at once; CORRUPT_MESSAGE, which the engine raises, reads as
    a bad batch), so they are refused here, before the engine sees the bytes."""
    max_message = config["max.message.bytes"]
    for i in infos:
        if max_message and i.size > max_message:
            raise _Refused(ErrorCode.message_too_large, f"batch of {i.size} bytes at position {i.position} "
                           f"exceeds max.message.bytes={max_message}")
    if total > config["segment.bytes"]:
        raise _Refused(ErrorCode.record_list_too_large,
                       f"{total} bytes of records exceed segment.bytes={config['segment.bytes']}")


def _append_one(door, topic_name: str, index: int, records: memoryview | None, touched: dict):
    """Append one partition's records: (error_code, base_offset, append_time, log_start).
    ``touched[partition]`` is set to the end offset the answer must wait to be durable."""
    b = door.broker
    if topic_name in INTERNAL_TOPICS:  # as Kafka: clients never write the broker's own topics
        log.warning("produce to internal topic %s refused", topic_name)
        return ErrorCode.invalid_topic_exception, -1, -1, -1
    try:
        t = b.topic(topic_name)
    except errors.UnknownTopicError:
        return ErrorCode.unknown_topic_or_partition, -1, -1, -1
    if not 0 <= index < t.num_partitions:
        return ErrorCode.unknown_topic_or_partition, -1, -1, -1
    p = t.partition(index)
    if records is None or len(records) == 0:
        return ErrorCode.invalid_record, -1, -1, -1
    try:
        data, infos = p.validate_batches(records)
        _check_sizes(infos, len(data), t.config)
    except errors.CorruptBatchError as e:
        pos = getattr(e, "position", 0) or 0
        old = len(records) > pos + _MAGIC_OFFSET and records[pos + _MAGIC_OFFSET] != 2
        log.warning("produce to %s-%d refused: %s", topic_name, index, e)
        return (ErrorCode.unsupported_for_message_format if old else ErrorCode.corrupt_message), -1, -1, -1
    except _Refused as r:
        log.warning("produce to %s-%d refused: %s", topic_name, index, r)
        return r.code, -1, -1, -1

    head = infos[0]
    pid = head.producer_id
    if pid >= 0:
        if len(infos) != 1:
            return ErrorCode.invalid_record, -1, -1, -1
        epoch, first_seq = head.producer_epoch, head.base_sequence
        last_seq = seq_add(first_seq, head.last_offset - head.base_offset)
        issued = door.producers.get(pid)  # None: issued before a restart, or by another broker
        entry = p.producer_state.entry(pid)
        if entry is not None and epoch < entry.epoch or issued is not None and epoch < issued.epoch:
            return ErrorCode.invalid_producer_epoch, -1, -1, -1
        if issued is not None and epoch > issued.epoch:
            issued.epoch = epoch
        if entry is not None and epoch == entry.epoch and entry.batches:
            for rec in entry.batches:
                if rec.first_seq == first_seq and rec.last_seq == last_seq:
                    touched[p] = max(touched.get(p, 0), rec.last_offset + 1)
                    return ErrorCode.none, rec.base_offset, rec.timestamp, p.start_offset
            expected = seq_add(entry.batches[-1].last_seq, 1)
            if first_seq != expected:
                log.warning("produce to %s-%d: producer %d sequence %d, expected %d",
                            topic_name, index, pid, first_seq, expected)
                return ErrorCode.out_of_order_sequence_number, -1, -1, -1
        elif first_seq != 0 and (entry is not None or issued is not None):
            # A new epoch, or a producer id this server issued, starts at 0. One
            # this partition has never seen and this process did not issue may
            # start anywhere (its state is older than the log, or another's).
            return ErrorCode.out_of_order_sequence_number, -1, -1, -1

    try:
        base, last, append_time = p.append_batches(data, infos)
    except errors.CorruptBatchError as e:
        log.warning("produce to %s-%d refused: %s", topic_name, index, e)
        return ErrorCode.corrupt_message, -1, -1, -1
    except Exception as e:
        code = error_code_for(e)
        # A record the topic refuses (InvalidRecordError: keyless on a compacted
        # topic) is the client's doing; a storage failure or a bug is ours.
        level = logging.ERROR if code in (ErrorCode.kafka_storage_error, ErrorCode.unknown_server_error) \
            else logging.WARNING
        _log_failure(level, topic_name, index, e)
        return code, -1, -1, -1
    touched[p] = last + 1  # the engine recorded the batch in p.producer_state
    return ErrorCode.none, base, append_time, p.start_offset


# (topic, partition) -> (monotonic time of the last line, failures not logged since)
_failure_lines: dict[tuple[str, int], tuple[float, int]] = {}


def _log_failure(level: int, topic: str, index: int, e: BaseException) -> None:
    """One line per partition per second at most: a full disk fails every produce,
    and a line for each would flood the log (often on that same disk)."""
    key = (topic, index)
    now = time.monotonic()
    last, quiet = _failure_lines.get(key, (0.0, 0))
    if now - last < 1.0:
        _failure_lines[key] = (last, quiet + 1)
        return
    _failure_lines[key] = (now, 0)
    more = f" ({quiet} more since the last such line)" if quiet else ""
    log.log(level, "produce to %s-%d failed: %r%s", topic, index, e, more)


def _may_write(ctx, name: str) -> bool:
    from ...security.acls import Operation, ResourceType
    from ..authz import allowed

    return allowed(ctx, Operation.WRITE, ResourceType.TOPIC, name)


async def handle_produce(ctx, req):
    door = ctx.door
    refuse = None
    if req.acks not in (0, 1, -1):
        refuse = ErrorCode.invalid_required_acks
    elif req.transactional_id is not None:
        refuse = ErrorCode.transactional_id_authorization_failed  # no transactions here
    results = []
    touched: dict = {}
    # v0-v2: old message sets become RecordBatch v2 here, before the normal path
    legacy_refused = upconvert_produce(req) if ctx.version < 3 and refuse is None else {}
    secure = door.security is not None and ctx.conn is not None
    for name, parts in req.topics:
        rows = []
        denied = secure and not _may_write(ctx, name)
        for pd in parts:
            code = refuse if refuse is not None else ErrorCode.topic_authorization_failed if denied \
                else legacy_refused.get((name, pd.index))
            if code is not None:
                rows.append((pd.index, code, -1, -1, -1))
                continue
            code, base, append_time, log_start = _append_one(door, name, pd.index, pd.records, touched)
            rows.append((pd.index, code, base, append_time, log_start))
        results.append((name, rows))
    if req.acks == 0:
        return None
    if touched:
        try:
            await door.hub.durable(touched)
        except Exception as e:  # fdatasync failed: not durable, so not acknowledged
            log.error("produce: fdatasync failed, answering KAFKA_STORAGE_ERROR: %r", e)
            results = [(name, [(i, ErrorCode.kafka_storage_error if code == ErrorCode.none else code, -1, -1, -1)
                               for i, code, _, _, _ in rows]) for name, rows in results]
    return [encode_produce_response(ctx.version, results)]

"""Dead letters: find the topics that hold them, read them, and redrive them to
their original topics exactly once (``umlog dlq``).

A dead letter is a record with the Spring Kafka header
``kafka_dlt-original-topic`` (share groups and webhooks write them with
``kafka_dlt-original-partition``/``-offset``/``-timestamp`` as big-endian
int32/int64/int64, ``kafka_dlt-exception-message`` the reason, and umlog's
``umlog-delivery-count`` and ``umlog-share-group``; see ``group.py``).

Finding dead-letter topics (``dead_letter_topics``) is cheap on purpose: a
topic counts when its name says so (``*.dlq``, ``*-dlt``, ``*.DLT``) or when the
first or the last record of one of its partitions carries the header (two
one-record reads per partition; no topic is scanned). A share group's
``dead_letter`` is not saved anywhere, so a dead-letter topic with another
name is found by its records alone.

Redrive (``redrive``): one ``ForwardStream`` per partition of the dead-letter
topic, group ``service_group("redrive", <dlq topic>)``. A dead letter becomes
a record with its key and value, its headers without ``kafka_dlt-*`` and
``umlog-delivery-count``/``umlog-share-group``, stamped with the time of the
redrive (so retention and ``umlog-ttl-ms`` count from there), on its original
topic (or ``to``): in its original partition when that topic has it, else by
its key's murmur2 hash, else the original partition modulo the partition
count. A missing target topic is created with the dead-letter topic's
partition count. The stream checkpoints after every batch; after a kill the
next run reads again from the checkpoint and skips what the targets already
hold, so each dead letter is redriven once (the derivation is deterministic
as long as the targets' partition counts and ``to`` stay the same between
the runs). A dead letter without an original topic, and no ``to``, is skipped
(and counted). Dead letters are not removed: the checkpoint is what says
they were redriven (``umlog groups list`` shows it with its lag).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator

from .._native.core import partition_for_key
from ..errors import TopicExistsError, UnknownTopicError
from .forward import Derived, ForwardStream, service_group
from .group import COUNT_HEADER, DLT_MESSAGE, DLT_OFFSET, DLT_PARTITION, DLT_TIMESTAMP, DLT_TOPIC, GROUP_HEADER

__all__ = ["dead_letter_topics", "dead_letters", "redrive", "is_dead_letter", "redrive_group", "redrive_headers",
           "DLQ_SUFFIXES"]

DLQ_SUFFIXES = (".dlq", "-dlt", ".DLT")
DLT_PREFIX = "kafka_dlt-"
DROPPED = frozenset({COUNT_HEADER, GROUP_HEADER})
BATCH = 500


def redrive_group(dlq: str) -> str:
    return service_group("redrive", dlq)


def is_dead_letter(headers) -> bool:
    return any(k == DLT_TOPIC for k, _ in headers)


def redrive_headers(headers) -> list:
    """A dead letter's headers without the DLT and umlog delivery headers."""
    return [(k, v) for k, v in headers if not k.startswith(DLT_PREFIX) and k not in DROPPED]


def _int(v, size: int) -> int | None:
    if v is None:
        return None
    v = bytes(v)
    if len(v) == size:
        return struct.unpack(">i" if size == 4 else ">q", v)[0]
    try:  # some writers put decimal text in these headers
        return int(v.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None


def _decimal(v) -> int | None:
    try:
        return None if v is None else int(bytes(v).decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None


def _text(v) -> str | None:
    return None if v is None else bytes(v).decode("utf-8", "backslashreplace")


def origin(headers) -> dict:
    """The DLT headers of a dead letter, decoded (None where absent)."""
    h = dict(headers)
    count = h.get(COUNT_HEADER)
    return {"original_topic": _text(h.get(DLT_TOPIC)), "original_partition": _int(h.get(DLT_PARTITION), 4),
            "original_offset": _int(h.get(DLT_OFFSET), 8), "original_timestamp": _int(h.get(DLT_TIMESTAMP), 8),
            "reason": _text(h.get(DLT_MESSAGE)), "delivery_count": _decimal(count),
            "group": _text(h.get(GROUP_HEADER))}


def _edge_records(p) -> Iterator:
    if p.end_offset <= p.start_offset:
        return
    yield from p.read(p.start_offset, max_records=1)
    if p.end_offset - 1 > p.start_offset:
        try:
            yield from p.read(p.end_offset - 1, max_records=1)
        except Exception:  # the last offset is a gap (compaction, a control batch): the first one said enough
            return


def dead_letter_topics(broker) -> list[dict]:
    """Topics holding dead letters: by name or by a dead letter at the start or end of a partition."""
    out = []
    for name in broker.topics():
        t = broker.topic(name)
        by_name = name.endswith(DLQ_SUFFIXES)
        originals: set[str] = set()
        records = 0
        for p in t.partitions:
            if not p.writable:
                p.refresh()
            records += max(0, p.end_offset - p.start_offset)
            for r in _edge_records(p):
                o = origin(r.headers)["original_topic"]
                if o is not None:
                    originals.add(o)
        if by_name or originals:
            found = "name and headers" if by_name and originals else "name" if by_name else "headers"
            out.append({"topic": name, "partitions": t.num_partitions, "records": records,
                        "original_topics": sorted(originals), "found_by": found,
                        "not_redriven": _not_redriven(broker, name)})
    return out


def _not_redriven(broker, dlq: str) -> int:
    """Records past the redrive checkpoint of each partition (all of them if never redriven)."""
    t = broker.topic(dlq)
    try:
        committed = broker.offsets.group_offsets(redrive_group(dlq))
    except Exception:  # a read-only data dir without __consumer_offsets
        committed = {}
    n = 0
    for p in t.partitions:
        v = committed.get((dlq, p.index))
        n += max(0, p.end_offset - max(p.start_offset, v.offset if v is not None else 0))
    return n


def dead_letters(broker, dlq: str, max_records: int | None = None) -> Iterator[dict]:
    """The dead letters of ``dlq`` (partition by partition, in offset order), decoded."""
    t = broker.topic(dlq)
    try:
        committed = broker.offsets.group_offsets(redrive_group(dlq))
    except Exception:
        committed = {}
    left = max_records
    for p in t.partitions:
        if left is not None and left <= 0:
            return
        if not p.writable:
            p.refresh()
        v = committed.get((dlq, p.index))
        for r in p.read(p.start_offset, max_records=left):
            d = {"partition": p.index, "offset": r.offset, "timestamp": r.timestamp, **origin(r.headers),
                 "key": r.key, "value": r.value, "headers": redrive_headers(r.headers),
                 "redriven": v is not None and r.offset < v.offset}
            yield d
            if left is not None:
                left -= 1


def redrive(broker, dlq: str, *, to: str | None = None, max_records: int | None = None, create_topic=None,
            progress: Callable[[dict], None] | None = None, partitions: Iterable[int] | None = None) -> dict:
    """Put the dead letters of ``dlq`` back on their original topics (or ``to``), exactly
    once across kills (see the module docstring). ``max_records`` bounds the dead
    letters read in this run; ``partitions`` limits it to those partitions of ``dlq``
    (``partitions=[p], max_records=1``: the next dead letter of ``p``); ``progress``
    gets a dict after every batch.

    :return: {"read", "appended", "already_there", "skipped", "targets": {topic: n}}
    """
    t = broker.topic(dlq)
    if to is not None and to == dlq:
        raise ValueError(f"redriving {dlq!r} into itself would never end")
    create = create_topic or broker.create_topic
    group = redrive_group(dlq)
    sizes: dict[str, int] = {}

    def partitions_of(topic: str) -> int:
        n = sizes.get(topic)
        if n is None:
            try:
                n = broker.topic(topic).num_partitions
            except UnknownTopicError:
                try:
                    n = create(topic, t.num_partitions).num_partitions
                except TopicExistsError:
                    n = broker.topic(topic).num_partitions
            sizes[topic] = n
        return n

    total = {"read": 0, "appended": 0, "already_there": 0, "skipped": 0, "targets": {}}
    left = max_records
    only = None if partitions is None else set(partitions)
    for p in t.partitions:
        if only is not None and p.index not in only:
            continue
        s = ForwardStream(broker, group, dlq, p.index)
        pos = p.start_offset if s.position is None else max(s.position, p.start_offset)
        end = p.end_offset
        while pos < end and (left is None or left > 0):
            n = BATCH if left is None else min(BATCH, left)
            recs = list(p.read(pos, max_records=min(n, end - pos)))
            if not recs:
                break
            out = []
            for r in recs:
                o = origin(r.headers)
                target = to or o["original_topic"]
                if not target or target == dlq:
                    total["skipped"] += 1
                    continue
                tn = partitions_of(target)
                op = o["original_partition"]
                if op is not None and 0 <= op < tn:
                    tp = op
                elif r.key is not None:
                    tp = partition_for_key(r.key, tn)
                else:
                    tp = (op if op is not None and op >= 0 else p.index) % tn
                out.append(Derived(target, tp, r.value, r.key, redrive_headers(r.headers), None))
                total["targets"][target] = total["targets"].get(target, 0) + 1
            pos = recs[-1].offset + 1
            appended = s.send(out, pos)
            s.checkpoint()
            total["read"] += len(recs)
            total["appended"] += appended
            total["already_there"] += len(out) - appended
            if left is not None:
                left -= len(recs)
            if progress is not None:
                progress({"partition": p.index, "first_offset": recs[0].offset, "last_offset": recs[-1].offset,
                          "read": len(recs), "appended": appended, "already_there": len(out) - appended})
    return total

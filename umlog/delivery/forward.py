"""Exactly-once forwarding: records derived from an ordered source, appended to
target partitions once each, across crashes.

Theory of operation
-------------------
Routes, dead-letter redrives and the delay scheduler all read records from
somewhere (a source partition, the dead-letter topic, ``__delayed``) and append
records derived from them to other partitions. A crash between "appended" and
"remembered where I was" must not append them twice, and nothing may be lost.

The engine already answers "did this append happen?" for idempotent Kafka
producers: every partition keeps, durably and rebuilt after a crash, the last
sequence number each producer id wrote to it (``log/producer_state.py``). A
``ForwardStream`` is such a producer. It has a producer id of its own (a hash
of its name in the range no Kafka producer is given, ``2**62`` and up) and
numbers the records it appends to each target partition 0, 1, 2, ...

The stream's checkpoint is a committed offset in ``__consumer_offsets``: group
``umlog.<service>.<name>``, the source partition, the next source offset to
read, and as metadata how many records it had appended to each target by then.
After a crash the stream reads the source again from the checkpoint and derives
the same records in the same order (the caller's one duty: derivation is
deterministic); for each target the partition's producer state says how many
of them are already there (its last sequence + 1, minus the checkpoint's
count), and those are skipped. So the checkpoint need not be written after
every append; it only bounds how much is read again.

Durability order: with ``fsync`` other than ``never`` the targets are synced
before the checkpoint that counts them is written, so a power cut never leaves
a checkpoint ahead of its targets. (A checkpoint behind its targets is what
the skip above is for.)

Sequence numbers are Kafka's int32 and wrap at ``2**31``; counts are kept as
plain ints and compared modulo ``2**31``, which is right while fewer than
``2**30`` records are appended to one target between two checkpoints.

The group is a service's checkpoint, not a consumer: ``umlog groups list``
shows it (with its lag), and offsets expiry never removes it
(``SERVICE_GROUP_PREFIX``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from .._native.core import encode_batch
from ..groups.offsets import SERVICE_GROUP_PREFIX, OffsetAndMetadata

__all__ = ["ForwardStream", "Derived", "forward_producer_id", "service_group"]

log = logging.getLogger("umlog.delivery")

PRODUCER_ID_BASE = 1 << 62  # Kafka producers get ids from the clock (ms * 1000): far below
_SEQ = 1 << 31  # Kafka's sequence numbers are int32 and wrap to 0
_HALF = 1 << 30


def service_group(service: str, name: str) -> str:
    """The group that holds the checkpoints of one service instance (``umlog.route.eu``)."""
    return f"{SERVICE_GROUP_PREFIX}{service}.{name}"


def forward_producer_id(*parts: str | int) -> int:
    """A stable producer id for one stream, in the range reserved for forwarders."""
    h = hashlib.blake2b("\0".join(map(str, parts)).encode(), digest_size=8).digest()
    return PRODUCER_ID_BASE | (int.from_bytes(h, "big") & (PRODUCER_ID_BASE - 1))


class Derived(NamedTuple):
    """One record to append: where, and what (headers as (str, bytes) pairs)."""

    topic: str
    partition: int
    value: bytes | None
    key: bytes | None = None
    headers: Sequence | None = None
    timestamp: int | None = None


class ForwardStream:
    """Appends records derived from one ordered source to their targets exactly once.

    ``position`` is the next source offset to read (None: no checkpoint yet; the
    caller picks where to start). Call ``send(records, position)`` with the
    records derived from the source up to ``position`` (exclusive), in source
    order; call ``checkpoint()`` now and then (``send`` does not).
    """

    def __init__(self, broker, group: str, topic: str, partition: int) -> None:
        self.broker = broker
        self.group = group
        self.source = (topic, partition)
        self.producer_id = forward_producer_id(group, topic, partition)
        v = broker.offsets.committed(group, topic, partition)
        self.position: int | None = None if v is None else v.offset
        self.counts: dict[tuple[str, int], int] = {}
        if v is not None and v.metadata:
            for k, n in json.loads(v.metadata).items():
                t, _, p = k.rpartition("/")
                self.counts[(t, int(p))] = n
        self._checked: set[tuple[str, int]] = set()  # targets whose written count was compared
        self._skip: dict[tuple[str, int], int] = {}
        self._dirty: set[tuple[str, int]] = set()  # targets appended to since the last checkpoint
        end = broker.topic(topic).partition(partition).end_offset
        # A checkpoint past the source's end: a power cut under fsync="never"
        # kept the checkpoint and lost the source's tail. The records appended
        # at those offsets from now on are new ones, so the stream goes on from
        # the end, and from what each target holds (its counts name the lost tail).
        self._lost_tail = self.position is not None and self.position > end
        if self._lost_tail:
            log.warning("%r: the checkpoint is past the source's end %d (its tail was lost with the power); "
                        "going on from there", self, end)
            self.position = end

    def __repr__(self) -> str:
        return f"<ForwardStream {self.group} {self.source[0]}-{self.source[1]} at {self.position}>"

    def _written_after_checkpoint(self, target: tuple[str, int]) -> int:
        """How many of the records the stream will send to ``target`` next are already
        there: appended after the checkpoint, before a crash."""
        p = self.broker.topic(target[0]).partition(target[1])
        e = p.producer_state.entry(self.producer_id)
        written = 0 if e is None or not e.batches else e.batches[-1].last_seq + 1
        if self._lost_tail:
            self.counts[target] = written
            return 0
        if not written:
            return 0
        ahead = (written - self.counts.get(target, 0)) % _SEQ
        if ahead >= _HALF:
            # The target has fewer than the checkpoint counted: it was deleted and
            # created again, or lost an unsynced tail. Nothing there to skip.
            log.warning("%r: %s-%d holds fewer records than the checkpoint counts; appending from there",
                        self, *target)
            return 0
        return ahead

    def send(self, records: Iterable[Derived], position: int) -> int:
        """Append ``records`` (derived from the source before ``position``), skipping
        those a previous run appended already; returns how many were appended."""
        by_target: dict[tuple[str, int], list[Derived]] = {}
        for r in records:
            by_target.setdefault((r.topic, r.partition), []).append(r)
        appended = 0
        for target, recs in by_target.items():
            if target not in self._checked:
                self._skip[target] = self._written_after_checkpoint(target)
                self._checked.add(target)
            n = self.counts.get(target, 0)
            skip = min(self._skip.get(target, 0), len(recs))
            if skip:
                self._skip[target] -= skip
            todo = recs[skip:]
            if todo:
                batch = encode_batch([r.value for r in todo], [r.key for r in todo],
                                     [r.headers or () for r in todo],
                                     [r.timestamp for r in todo],
                                     producer_id=self.producer_id, producer_epoch=0,
                                     base_sequence=(n + skip) % _SEQ)
                self.broker.topic(target[0]).partition(target[1]).append_batches(batch)
                appended += len(todo)
                self._dirty.add(target)
            self.counts[target] = n + len(recs)
        self.position = position
        return appended

    def checkpoint(self) -> None:
        """Remember ``position`` and the counts (targets synced first unless fsync is never)."""
        if self.position is None:
            return
        if self.broker.fsync != "never":
            for t, i in self._dirty:
                p = self.broker.topic(t).partition(i)
                p.sync_through(p.end_offset)
        self._dirty.clear()
        meta = json.dumps({f"{t}/{i}": n for (t, i), n in sorted(self.counts.items())}, separators=(",", ":"))
        self.broker.offsets.commit(self.group, {self.source: OffsetAndMetadata(self.position, -1, meta)})

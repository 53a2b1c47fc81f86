"""Committed consumer-group offsets: records in ``__consumer_offsets``, a map in memory.

Theory of operation
-------------------
The truth is the internal topic ``__consumer_offsets`` (``OFFSETS_PARTITIONS``
partitions, ``cleanup.policy=compact``), created by the broker the first time
groups are used. A commit appends one record per (group, topic, partition) in
Kafka's own key/value schema (``.schema``) to the group's partition of that
topic, all of one call in one batch, then updates the in-memory map; a
deletion appends tombstones (null values). Opening replays every partition of
the topic from its start into the map, last record per key winning, so
committed offsets survive a crash exactly as data does (with the broker's
fsync policy: under ``fsync="always"`` a commit returns after its fdatasync;
the Kafka door group-commits instead, see ``handlers/offset_commit.py``).
Compaction keeps the newest record per key, which is all replay needs.

A read-only broker (a tailer in another process) replays what the writer has
flushed and catches up on every query, from where it stopped.

Records that do not decode (a foreign writer, a newer Kafka schema) are
skipped with one warning each, never fatal: the rest of the topic still
replays.

Thread safety: one lock orders appends and map updates, so the map always
equals a replay of the log. The store is shared by the embedded API
(``Broker.group``), the embedded consumer and the Kafka door's coordinator.

``Group`` is the embedded face of one group's cursors: commits are validated
against the log (``InvalidOffsetError`` outside ``[start_offset,
end_offset]``), unlike the Kafka door, which stores what a client commits as
Kafka does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from ..errors import DecodeError, InvalidOffsetError, UnknownTopicError
from ..log.replay import InternalTopicReplay
from .schema import (
    GroupKey,
    decode_key,
    decode_offset_value,
    encode_offset_key,
    encode_offset_value,
    partition_for_group,
)

__all__ = ["OFFSETS_TOPIC", "OFFSETS_PARTITIONS", "OFFSETS_TOPIC_CONFIG", "OffsetAndMetadata",
           "OffsetStore", "Group", "MAX_METADATA_BYTES"]

log = logging.getLogger("umlog.groups")

OFFSETS_TOPIC = "__consumer_offsets"
# Kafka's offsets.topic.num.partitions is 50; a single node has no use for so
# many, and 8 keeps replay and the data dir small.
OFFSETS_PARTITIONS = 8
# Kafka's offsets topic: compacted, 100 MiB segments (offsets.topic.segment.bytes)
# so that compaction can reach closed segments soon.
OFFSETS_TOPIC_CONFIG = {"cleanup.policy": "compact", "segment.bytes": 100 * 1024 * 1024}
# Kafka's offset.metadata.max.bytes.
MAX_METADATA_BYTES = 4096

TopicPartition = tuple  # (topic: str, partition: int)


# Groups whose names start with this hold the checkpoints of umlog's own services
# (routes, redrives, the delay scheduler: ``delivery/forward.py``), not a
# consumer's position: offsets expiry leaves them alone.
SERVICE_GROUP_PREFIX = "umlog."


class OffsetAndMetadata(NamedTuple):
    """One committed offset: the next offset to read, and what came with it."""

    offset: int
    leader_epoch: int = -1
    metadata: str = ""
    commit_timestamp: int = 0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class OffsetStore:
    """Every group's committed offsets (see the module docstring)."""

    def __init__(self, broker, partitions: int = OFFSETS_PARTITIONS) -> None:
        self.broker = broker  # type of `broker` is `Broker`
        self._lock = threading.RLock()
        self._offsets: dict[str, dict[TopicPartition, OffsetAndMetadata]] = {}
        self.skipped = 0  # records that did not decode
        with self._lock:
            self._replay = InternalTopicReplay(broker, OFFSETS_TOPIC, partitions, OFFSETS_TOPIC_CONFIG)
            self._catch_up()

    # -- the internal topic -----------------------------------------------------

    @property
    def topic(self):
        """The ``__consumer_offsets`` Topic (None on a read-only broker before any commit)."""
        return self._replay.topic

    _topic = topic

    def _catch_up(self) -> None:
        """Replay what was appended since the last call (all of it the first time)."""
        self._replay.catch_up(self._apply)

    def _apply(self, r) -> None:
        if r.key is None:
            self._skip(r, "no key")
            return
        try:
            key = decode_key(r.key)
        except DecodeError as e:
            self._skip(r, str(e))
            return
        if isinstance(key, GroupKey):
            return  # group metadata: membership is not persisted (members rejoin)
        tp = (key.topic, key.partition)
        if r.value is None:
            g = self._offsets.get(key.group)
            if g is not None:
                g.pop(tp, None)
                if not g:
                    del self._offsets[key.group]
            return
        try:
            v = decode_offset_value(r.value)
        except DecodeError as e:
            self._skip(r, str(e))
            return
        self._offsets.setdefault(key.group, {})[tp] = OffsetAndMetadata(*v)

    def _skip(self, r, why: str) -> None:
        self.skipped += 1
        log.warning("%s-%d@%d: skipping a record that is not a committed offset (%s)",
                    OFFSETS_TOPIC, r.partition, r.offset, why)

    def _refresh(self) -> None:
        if self.broker.readonly:
            with self._lock:
                self._catch_up()

    # -- writes ---------------------------------------------------------------------

    def partition_of(self, group: str):
        """The ``__consumer_offsets`` partition that holds ``group``'s commits
        (None before the topic exists): a server waits on its durability."""
        t = self._topic
        return None if t is None else t.partitions[partition_for_group(group, t.num_partitions)]

    def _append(self, group: str, keys: list[bytes], values: list) -> None:
        t = self._topic
        if t is None:  # pragma: no cover - read-only brokers refuse earlier
            raise UnknownTopicError(f"no {OFFSETS_TOPIC} topic")
        p = t.partitions[partition_for_group(group, t.num_partitions)]
        now = _now_ms()
        p.append_many(values, keys, None, [now] * len(values))
        self._replay.wrote(p)  # a writer never re-reads its own appends

    def commit(self, group: str, offsets: Mapping[TopicPartition, OffsetAndMetadata | int]) -> None:
        """Store ``{(topic, partition): offset or OffsetAndMetadata}`` for ``group`` as one batch.

        No validation against the log here (the callers do what they must).
        :raises ReadOnlyError: on a read-only broker.
        """
        self.broker.check_writable()
        if not offsets:
            return
        now = _now_ms()
        items = []
        for (topic, partition), v in offsets.items():
            if not isinstance(v, OffsetAndMetadata):
                v = OffsetAndMetadata(int(v))
            v = v._replace(commit_timestamp=v.commit_timestamp or now, metadata=v.metadata or "")
            items.append(((topic, int(partition)), v))
        keys = [encode_offset_key(group, t, p) for (t, p), _ in items]
        values = [encode_offset_value(v.offset, v.leader_epoch, v.metadata, v.commit_timestamp) for _, v in items]
        with self._lock:
            self._append(group, keys, values)
            g = self._offsets.setdefault(group, {})
            for tp, v in items:
                g[tp] = v

    def delete(self, group: str, partitions: Iterable[TopicPartition] | None = None) -> list[TopicPartition]:
        """Tombstone the given committed offsets of ``group`` (all of them when None);
        returns those that existed."""
        self.broker.check_writable()
        with self._lock:
            g = self._offsets.get(group, {})
            doomed = list(g) if partitions is None else [tuple(tp) for tp in partitions if tuple(tp) in g]
            if not doomed:
                return []
            self._append(group, [encode_offset_key(group, t, p) for t, p in doomed], [None] * len(doomed))
            for tp in doomed:
                del g[tp]
            if not g:
                self._offsets.pop(group, None)
            return doomed

    def delete_topic(self, topic: str) -> dict[str, list[TopicPartition]]:
        """Tombstone every group's committed offsets of ``topic`` (the topic was
        deleted, as Kafka does); returns {group: partitions} of what existed."""
        self._refresh()
        with self._lock:
            doomed = {g: [tp for tp in offs if tp[0] == topic] for g, offs in self._offsets.items()}
        out = {}
        for g, tps in doomed.items():
            if tps:
                out[g] = self.delete(g, tps)
        return out

    def expire(self, retention_ms: int, now_ms: int | None = None, *, live: Iterable[str] = (),
               empty_since_ms: Mapping[str, int] | None = None) -> dict[str, list[TopicPartition]]:
        """Kafka's offsets.retention.minutes: every committed offset of a group
        with no live member goes once ``retention_ms`` have passed since the
        group's last commit, or since it became empty when that is later
        (``empty_since_ms``, known to a running coordinator). Groups in ``live``
        keep theirs, and so do services' checkpoints (``SERVICE_GROUP_PREFIX``).
        Returns {group: partitions} of what was deleted."""
        now = _now_ms() if now_ms is None else now_ms
        live = set(live)
        empty = empty_since_ms or {}
        self._refresh()
        with self._lock:
            last = {g: max(v.commit_timestamp for v in offs.values()) for g, offs in self._offsets.items() if offs}
        out = {}
        for g, ts in last.items():
            if g in live or g.startswith(SERVICE_GROUP_PREFIX):
                continue
            if now - max(ts, empty.get(g, 0)) >= retention_ms:
                out[g] = self.delete(g)
                log.info("group %r: committed offsets expired (%d partition(s), last commit %d ms ago)",
                         g, len(out[g]), now - ts)
        return out

    # -- reads -------------------------------------------------------------------------

    def committed(self, group: str, topic: str, partition: int) -> OffsetAndMetadata | None:
        self._refresh()
        with self._lock:
            return self._offsets.get(group, {}).get((topic, partition))

    def group_offsets(self, group: str) -> dict[TopicPartition, OffsetAndMetadata]:
        """A copy of ``group``'s committed offsets, sorted by (topic, partition)."""
        self._refresh()
        with self._lock:
            return dict(sorted(self._offsets.get(group, {}).items()))

    def groups(self) -> list[str]:
        """Groups with at least one committed offset."""
        self._refresh()
        with self._lock:
            return sorted(self._offsets)

    def has_group(self, group: str) -> bool:
        self._refresh()
        with self._lock:
            return bool(self._offsets.get(group))


class Group:
    """The committed offsets of one consumer group, for the embedded API.

    Obtained with ``Broker.group(name)``; cheap to create (the offsets live in
    the broker's store, shared with the Kafka door's coordinator when served).
    """

    def __init__(self, broker, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"group name must be a non-empty str, not {name!r}")
        self.broker = broker  # type of `broker` is `Broker`
        self.name = name

    def __repr__(self) -> str:
        return f"<Group {self.name!r}>"

    @property
    def _store(self) -> OffsetStore:
        return self.broker.offsets

    def _check(self, topic: str, partition: int, offset: int):
        t = self.broker.topic(topic)  # UnknownTopicError
        if isinstance(partition, bool) or not isinstance(partition, int) or not 0 <= partition < t.num_partitions:
            raise InvalidOffsetError(
                f"topic {topic!r} has no partition {partition!r} (it has {t.num_partitions})")
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise InvalidOffsetError(f"offset must be an int, not {offset!r}")
        p = t.partition(partition)
        if not p.start_offset <= offset <= p.end_offset:
            raise InvalidOffsetError(
                f"cannot commit offset {offset} for {topic}-{partition}: outside "
                f"[{p.start_offset}, {p.end_offset}] (start offset, end offset)")

    def commit(self, topic: str, partition: int, offset: int, metadata: str | None = None) -> None:
        """Commit ``offset`` (the next offset to read) for one partition.

        :raises UnknownTopicError: no such topic.
        :raises InvalidOffsetError: no such partition, or ``offset`` is below the
            partition's start offset or beyond its end offset.
        :raises ValueError: metadata longer than 4096 bytes (Kafka's limit).
        """
        self.commit_many({(topic, partition): offset}, metadata)

    def commit_many(self, offsets: Mapping[TopicPartition, int], metadata: str | None = None) -> None:
        """Commit several partitions at once (one record batch); all are checked first."""
        if metadata is not None and len(metadata.encode()) > MAX_METADATA_BYTES:
            raise ValueError(f"metadata is longer than {MAX_METADATA_BYTES} bytes")
        for (topic, partition), offset in offsets.items():
            self._check(topic, partition, offset)
        self._store.commit(self.name, {tp: OffsetAndMetadata(o, -1, metadata or "") for tp, o in offsets.items()})

    def committed(self, topic: str, partition: int) -> int | None:
        """The committed offset of one partition, or None."""
        v = self._store.committed(self.name, topic, partition)
        return None if v is None else v.offset

    def committed_metadata(self, topic: str, partition: int) -> OffsetAndMetadata | None:
        return self._store.committed(self.name, topic, partition)

    def committed_all(self) -> dict[TopicPartition, int]:
        """Every committed offset of the group: ``{(topic, partition): offset}``."""
        return {tp: v.offset for tp, v in self._store.group_offsets(self.name).items()}

    def lag(self, topic: str | None = None) -> dict[TopicPartition, int]:
        """``end_offset - committed`` per partition (never negative).

        Without ``topic``: the partitions the group has committed offsets for
        (in topics that still exist). With ``topic``: every partition of it; a
        partition with no commit counts from its start offset (what the group
        would read from the beginning).
        """
        committed = self.committed_all()
        out: dict[TopicPartition, int] = {}
        if topic is not None:
            t = self.broker.topic(topic)
            for i, p in enumerate(t.partitions):
                if not p.writable:
                    p.refresh()
                c = committed.get((topic, i))
                out[(topic, i)] = max(0, p.end_offset - (p.start_offset if c is None else c))
            return out
        for (name, i), c in committed.items():
            try:
                t = self.broker.topic(name)
            except UnknownTopicError:
                continue
            if i < t.num_partitions:
                p = t.partitions[i]
                if not p.writable:
                    p.refresh()
                out[(name, i)] = max(0, p.end_offset - c)
        return out

    def delete(self, topic: str | None = None, partition: int | None = None) -> list[TopicPartition]:
        """Delete committed offsets: all of the group's, one topic's, or one partition's.
        Returns the (topic, partition) pairs that were deleted."""
        if topic is None:
            if partition is not None:
                raise ValueError("partition given without topic")
            return self._store.delete(self.name)
        wanted = [tp for tp in self._store.group_offsets(self.name)
                  if tp[0] == topic and (partition is None or tp[1] == partition)]
        return self._store.delete(self.name, wanted)

    def exists(self) -> bool:
        """True when the group has at least one committed offset."""
        return self._store.has_group(self.name)

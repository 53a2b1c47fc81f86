"""Share-group state records in ``__share_group_state``, a map in memory.

The truth is the compacted internal topic ``__share_group_state``
(``STATE_PARTITIONS`` partitions; a group's records all go to the partition of
its name's murmur2 hash, so one group's writes are one batch in one
partition). Opening replays every partition from its start into a map
``{(group, topic, partition): value bytes}``, last record per key winning; a
group decodes its own windows from it when it opens (``state.decode_window``).
Writes append the windows a call changed as one batch, then update the map,
under one lock, so the map is always a replay of the log. With
``fsync="always"`` the append returns after its fdatasync, like any append.

A read-only broker (``umlog share-groups``, beside a running writer) replays
what the writer has flushed and catches up on every query.

Records that do not decode are skipped with a warning, never fatal.
"""

from __future__ import annotations

import logging
import threading

from .._native.core import partition_for_key
from ..errors import DecodeError
from ..log.replay import InternalTopicReplay
from .state import decode_key, encode_key

__all__ = ["STATE_TOPIC", "STATE_PARTITIONS", "STATE_TOPIC_CONFIG", "ShareStateStore"]

log = logging.getLogger("umlog.delivery")

STATE_TOPIC = "__share_group_state"
# Kafka's share.coordinator.state.topic.num.partitions is 50; one node needs few.
STATE_PARTITIONS = 4
# Every write is a whole window, so compaction must get to closed segments soon.
STATE_TOPIC_CONFIG = {"cleanup.policy": "compact", "segment.bytes": 64 * 1024 * 1024}


class ShareStateStore:
    """Every share group's state records (see the module docstring)."""

    def __init__(self, broker) -> None:
        self.broker = broker  # type of `broker` is `Broker`
        self._lock = threading.RLock()
        self._values: dict[tuple[str, str, int], bytes] = {}
        self.skipped = 0
        with self._lock:
            self._replay = InternalTopicReplay(broker, STATE_TOPIC, STATE_PARTITIONS, STATE_TOPIC_CONFIG)
            self._replay.catch_up(self._apply)

    @property
    def _topic(self):
        return self._replay.topic

    def _apply(self, r) -> None:
        try:
            if r.key is None:
                raise DecodeError("no key")
            key = decode_key(r.key)
        except DecodeError as e:
            self.skipped += 1
            log.warning("%s-%d@%d: skipping a record that is not share-group state (%s)",
                        STATE_TOPIC, r.partition, r.offset, e)
            return
        if r.value is None:
            self._values.pop(key, None)
        else:
            self._values[key] = r.value

    def refresh(self) -> None:
        if self.broker.readonly:
            with self._lock:
                self._replay.catch_up(self._apply)

    def partition_of(self, group: str):
        t = self._topic
        return None if t is None else t.partitions[partition_for_key(group.encode(), t.num_partitions)]

    def write(self, group: str, values: dict[tuple[str, int], bytes | None]) -> None:
        """Append ``{(topic, partition): value or None}`` of ``group`` as one batch."""
        self.broker.check_writable()
        if not values:
            return
        items = sorted(values.items())
        keys = [encode_key(group, t, p) for (t, p), _ in items]
        with self._lock:
            p = self.partition_of(group)
            p.append_many([v for _, v in items], keys)
            self._replay.wrote(p)  # our own appends need no replay
            for (t, i), v in items:
                if v is None:
                    self._values.pop((group, t, i), None)
                else:
                    self._values[(group, t, i)] = v

    def delete_topic(self, topic: str) -> None:
        """Tombstones for every group's state of ``topic`` (one batch per group)."""
        with self._lock:
            gone: dict[str, dict] = {}
            for g, t, p in self._values:
                if t == topic:
                    gone.setdefault(g, {})[(t, p)] = None
        for g, values in gone.items():
            self.write(g, values)

    def group_values(self, group: str) -> dict[tuple[str, int], bytes]:
        """``{(topic, partition): value}`` of one group, sorted."""
        self.refresh()
        with self._lock:
            return dict(sorted(((t, p), v) for (g, t, p), v in self._values.items() if g == group))

    def groups(self) -> list[str]:
        self.refresh()
        with self._lock:
            return sorted({g for g, _, _ in self._values})

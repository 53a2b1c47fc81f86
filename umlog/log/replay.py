"""An internal compacted topic as the durable state of a service above the
engine (committed offsets, share-group windows): the topic is the truth, the
service keeps a map that is always a replay of it.

``InternalTopicReplay`` opens (or, writable, creates) the topic and feeds every
record not yet seen to the service's ``apply``, partition by partition, from
where the last call stopped; the service's own appends need no replay
(``wrote``). A read-only opener (a tailer beside the writer) finds the topic
once the writer has made it, and catches up on every call.

Not thread-safe: the service calls it under its own lock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import UnknownTopicError

__all__ = ["InternalTopicReplay"]


class InternalTopicReplay:
    def __init__(self, broker: Any, name: str, partitions: int, config: Mapping[str, Any]) -> None:
        self.broker = broker  # type of `broker` is `Broker`
        self.name = name
        self._partitions = partitions
        self._config = config
        self._replayed: list[int] = []  # next offset to replay, per partition
        self.topic = self._open()

    def _open(self):
        b = self.broker
        if b.readonly:
            try:
                return b.topic(self.name)
            except UnknownTopicError:
                return None
        return b.internal_topic(self.name, self._partitions, self._config)

    def catch_up(self, apply: Callable[[Any], None]) -> None:
        """Feed ``apply`` every record appended since the last call (all of them the first time)."""
        t = self.topic
        if t is None:
            if not self.broker.readonly:
                return
            self.topic = t = self._open()
            if t is None:
                return
        while len(self._replayed) < t.num_partitions:
            self._replayed.append(0)
        for i, p in enumerate(t.partitions):
            if not p.writable:
                p.refresh()
            start = max(self._replayed[i], p.start_offset)
            if start >= p.end_offset:
                continue
            nxt = start
            for r in p.read(start):
                apply(r)
                nxt = r.offset + 1
            self._replayed[i] = nxt

    def wrote(self, p: Any) -> None:
        """The service appended to partition ``p`` itself: its map already holds it."""
        while len(self._replayed) <= p.index:
            self._replayed.append(0)
        if self._replayed[p.index] < p.end_offset:
            self._replayed[p.index] = p.end_offset

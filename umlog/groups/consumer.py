"""The embedded consumer: records of one or more topics, across all their
partitions, from a group's committed offsets, committing as it goes.

Theory of operation
-------------------
Positions: each (topic, partition) starts at the group's committed offset;
without one (or without a group) at the start offset with
``from_beginning=True``, else at the end offset (Kafka's
``auto.offset.reset``). A committed offset that has fallen outside the log
(retention moved the start past it, or a Kafka client committed beyond the
end) is clamped into ``[start_offset, end_offset]``: the group resumes with
what is left rather than skipping everything (a deliberate difference from
Kafka's reset policy, which would jump to the end under ``latest``).

Iteration visits the partitions round-robin, up to ``max_records`` records
from each per turn, so one busy partition cannot starve the others. A turn
that finds nothing ends the iteration, unless ``follow=True``: then it waits
for new records and stops after ``timeout`` seconds without one (None:
never). Waiting on one partition uses the engine's own wait
(``umlog.log.tailing.wait_for_data``: woken by appends in this process, refresh
polling in a tailer); on several, their end offsets are polled with the
tailers' backoff (1 ms to 50 ms), as nothing wakes a wait on many at once.

At-least-once: a record counts as consumed once the caller asks for the next
one, or calls ``commit()`` after receiving it. Every ``commit_every`` consumed
records, at the end of the iteration and on ``close()``, the consumed
positions are committed (only partitions that moved). Leaving a ``for`` loop
with ``break`` or an exception does not count the record in hand as consumed:
it is delivered again next time, unless ``commit()`` was called after it.
On a read-only broker the group's offsets are where reading starts, and
nothing is committed (``commit()`` raises ``ReadOnlyError``).

A consumer is meant for one thread. Embedded consumers of the same group do
not split partitions between them (that is the Kafka door's coordinator's
job): the group here is a cursor.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from ..errors import OffsetOutOfRangeError
from ..log.tailing import POLL_MAX_S, POLL_MIN_S, wait_for_data
from .offsets import OffsetAndMetadata

__all__ = ["Consumer"]

WAIT_SLICE_S = 1.0  # longest wait before looking at the topics again


class Consumer:
    """Iterate records from committed offsets; ``commit()``, ``close()``; a context manager.

    :param broker: the Broker.
    :param topics: a topic name or several.
    :param group: the consumer group whose offsets to start from and commit; None: no commits.
    :param from_beginning: where to start a partition with no committed offset.
    :param follow: wait for new records instead of stopping at the end.
    :param timeout: with ``follow``, stop after this many seconds without a record.
    :param commit_every: commit after this many consumed records (0: only at the end,
        on ``close()`` and on ``commit()``).
    :param max_records: records read from one partition per turn.
    """

    def __init__(self, broker, topics: str | Iterable[str], group: str | None = None, *,
                 from_beginning: bool = False, follow: bool = False, timeout: float | None = None,
                 commit_every: int = 1000, max_records: int = 500) -> None:
        self.broker = broker  # type of `broker` is `Broker`
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        if not self.topics:
            raise ValueError("no topic to consume")
        for name in self.topics:
            broker.topic(name)  # UnknownTopicError now rather than mid-iteration
        if commit_every < 0 or max_records < 1:
            raise ValueError("commit_every must be >= 0 and max_records >= 1")
        self.group = group
        self.from_beginning = from_beginning
        self.follow = follow
        self.timeout = timeout
        self.commit_every = commit_every
        self.max_records = max_records
        self._positions: dict[tuple[str, int], int] = {}
        self._committed: dict[tuple[str, int], int] = {}
        self._current: tuple[tuple[str, int], int] | None = None  # the record in the caller's hands
        self._consumed = 0  # since the last commit
        self._closed = False
        self._iterating = False
        # A read-only broker (a tailer) starts from the group's offsets but cannot store any.
        self._can_commit = group is not None and not broker.readonly
        self._auto_commit = self._can_commit and commit_every > 0

    def __repr__(self) -> str:
        return f"<Consumer {self.topics} group={self.group!r}>"

    # -- positions ---------------------------------------------------------------------

    def _partitions(self):
        for name in self.topics:
            t = self.broker.topic(name)
            for p in t.partitions:
                yield (name, p.index), p

    def _start(self, tp, p) -> int:
        if not p.writable:
            p.refresh()
        start, end = p.start_offset, p.end_offset
        if self.group is not None:
            c = self.broker.offsets.committed(self.group, tp[0], tp[1])
            if c is not None:
                self._committed[tp] = c.offset
                return min(max(c.offset, start), end)
        return start if self.from_beginning else end

    def position(self, topic: str, partition: int) -> int | None:
        """The next offset this consumer will hand out for a partition (None: not started)."""
        self._settle()
        return self._positions.get((topic, partition))

    def positions(self) -> dict[tuple[str, int], int]:
        self._settle()
        return dict(self._positions)

    def _settle(self) -> None:
        cur = self._current
        if cur is not None:
            self._current = None
            self._positions[cur[0]] = cur[1]
            self._consumed += 1

    # -- iteration ----------------------------------------------------------------------

    def __iter__(self) -> Iterator:
        if self._closed:
            raise ValueError("consumer is closed")
        if self._iterating:
            raise RuntimeError("this consumer is already being iterated")
        return self._run()

    def _run(self) -> Iterator:
        self._iterating = True
        positions = self._positions
        # end_offset when a read found nothing below it (offsets compacted away,
        # a batch still being written): wait for end_offset to pass it.
        barren: dict[tuple[str, int], int] = {}
        idle_since = time.monotonic()
        try:
            while True:
                got = False
                watch = []
                for tp, p in list(self._partitions()):
                    pos = positions.get(tp)
                    if pos is None:
                        pos = positions[tp] = self._start(tp, p)
                    if not p.writable:
                        p.refresh()
                    threshold = max(pos, barren.get(tp, pos))
                    if p.end_offset <= threshold:
                        watch.append((p, threshold))
                        continue
                    try:
                        records = list(p.read(pos, self.max_records))
                    except OffsetOutOfRangeError:  # retention moved the start meanwhile
                        positions[tp] = min(max(pos, p.start_offset), p.end_offset)
                        continue
                    if not records:
                        barren[tp] = p.end_offset
                        watch.append((p, barren[tp]))
                        continue
                    barren.pop(tp, None)
                    for r in records:
                        self._current = (tp, r.offset + 1)
                        yield r
                        self._settle()
                        if self._auto_commit and self._consumed >= self.commit_every:
                            self.commit()
                    got = got or bool(records)
                if got:
                    idle_since = time.monotonic()
                    continue
                if not self.follow or self.broker.closed:
                    break
                deadline = None if self.timeout is None else idle_since + self.timeout
                if deadline is not None and time.monotonic() >= deadline:
                    break
                _wait(watch, deadline)
            if self._can_commit:
                self.commit()
            else:
                self._settle()
        except GeneratorExit:
            self._current = None  # not consumed: delivered again (at-least-once)
            raise
        finally:
            self._iterating = False

    # -- commits -------------------------------------------------------------------------

    def commit(self) -> dict[tuple[str, int], int]:
        """Commit the consumed positions that moved since the last commit; returns them.

        The record the caller holds (the last one handed out) counts as consumed.
        Without a group, nothing is stored and {} is returned.

        :raises ReadOnlyError: the broker is read-only.
        """
        self._settle()
        self._consumed = 0
        if self.group is None:
            return {}
        self.broker.check_writable()
        moved = {tp: o for tp, o in self._positions.items() if self._committed.get(tp) != o}
        if moved:
            self.broker.offsets.commit(self.group, {tp: OffsetAndMetadata(o) for tp, o in moved.items()})
            self._committed.update(moved)
        return moved

    def close(self) -> None:
        """Commit what was consumed (not the record in hand, unless ``commit()`` was
        called after it) and stop. Idempotent."""
        if self._closed:
            return
        self._current = None
        if not self.broker.closed:
            if self._can_commit:
                moved = {tp: o for tp, o in self._positions.items() if self._committed.get(tp) != o}
                if moved:
                    self.broker.offsets.commit(self.group, {tp: OffsetAndMetadata(o) for tp, o in moved.items()})
                    self._committed.update(moved)
        self._closed = True

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _wait(watch, deadline: float | None) -> None:
    """Return when one of ``watch`` [(partition, threshold)] has ``end_offset >
    threshold``, at ``deadline``, or after ``WAIT_SLICE_S`` (the caller looks at
    the topics again: partitions may have been added)."""
    now = time.monotonic()
    until = now + WAIT_SLICE_S if deadline is None else min(deadline, now + WAIT_SLICE_S)
    if len(watch) == 1:  # the partition's own wake-up (in-process) or refresh polling
        p, threshold = watch[0]
        wait_for_data(p, threshold, until)
        return
    # Several partitions: no single thing to wait on, so look at them all with a
    # backoff (end_offset is an attribute read; tailers refresh, ~tens of us each).
    pause = POLL_MIN_S
    while True:
        for p, threshold in watch:
            if not p.writable:
                p.refresh()
            if p.end_offset > threshold:
                return
        now = time.monotonic()
        if now >= until:
            return
        time.sleep(min(pause, until - now))
        pause = min(pause * 2, POLL_MAX_S)

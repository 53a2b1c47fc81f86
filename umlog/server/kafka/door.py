"""The Kafka door's shared state: one per server, on the event loop's thread.

It holds what handlers share across connections:

* the broker and the door's settings (advertised address, auto-create, limits);
* ``waiters``: long-polling Fetches waiting for appends, keyed by
  (topic, partition). Appends happen only through this door in server mode (one
  writer process per data dir), so Produce wakes them itself after each append
  (``notify_append``);
* ``producers``: idempotent-producer state (producer id -> epoch, and per
  partition the last few batches' sequence ranges and offsets), kept in memory:
  after a restart a producer id we do not know is accepted as new (documented
  limit; Kafka rebuilds this from the log's batch headers);
* the group-commit fsync for ``--fsync always`` (``GroupCommit``);
* ``coordinator``: the consumer-group coordinator (``umlog.groups.coordinator``),
  created on first use with the loop's clock; ``wake_all`` (shutdown) answers
  the JoinGroup/SyncGroup requests it holds.

Not thread-safe: everything runs on the loop; ``broker.sync()`` alone runs in an
executor thread (the engine releases the GIL there).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
import uuid
from typing import Any

__all__ = ["KafkaDoor", "GroupCommit", "ProducerState", "BatchRecord"]

log = logging.getLogger("umlog.server.kafka")

DEFAULT_MAX_REQUEST_SIZE = 100 * 1024 * 1024
# Kafka keeps the last 5 batches per producer and partition for duplicate
# detection (max.in.flight.requests.per.connection <= 5 for idempotence).
PRODUCER_BATCH_CACHE = 5


class BatchRecord:
    """Sequence range and assigned offsets of one appended idempotent batch."""

    __slots__ = ("first_seq", "last_seq", "base_offset", "last_offset", "append_time")

    def __init__(self, first_seq: int, last_seq: int, base_offset: int, last_offset: int,
                 append_time: int) -> None:
        self.first_seq = first_seq
        self.last_seq = last_seq
        self.base_offset = base_offset
        self.last_offset = last_offset
        self.append_time = append_time


class ProducerState:
    """One idempotent producer: its epoch and its recent batches per partition."""

    __slots__ = ("producer_id", "epoch", "partitions", "from_log")

    def __init__(self, producer_id: int, epoch: int) -> None:
        self.producer_id = producer_id
        self.epoch = epoch
        self.partitions: dict[tuple[str, int], collections.deque[BatchRecord]] = {}
        # True for a producer id issued before this process started: its state
        # per partition is rebuilt from the log's tail on first use.
        self.from_log = False


class GroupCommit:
    """Acknowledge appends only after an fdatasync that started after them.

    Theory of operation: every append takes a ticket (``appended``). ``wait(ticket)``
    returns once a sync that *started* after that ticket was taken has finished.
    At most one ``broker.sync()`` runs at a time in an executor thread; when it
    ends, every waiter whose ticket it covered is released, and if more appends
    arrived meanwhile the next sync starts at once, covering all of them (one
    fdatasync per partition for a whole group of produce requests).
    """

    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self._appended = 0  # last ticket handed out
        self._synced = 0  # every ticket <= this is durable
        self._running: asyncio.Task | None = None
        self._waiters: list[tuple[int, asyncio.Future]] = []

    def appended(self) -> int:
        self._appended += 1
        return self._appended

    async def wait(self, ticket: int) -> None:
        if ticket <= self._synced:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((ticket, fut))
        if self._running is None:
            self._running = asyncio.get_running_loop().create_task(self._sync_loop())
        await fut

    async def _sync_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiters:
                target = self._appended
                try:
                    await loop.run_in_executor(None, self.broker.sync)
                except Exception as e:  # fail the waiters, keep serving
                    waiters, self._waiters = self._waiters, []
                    for _, fut in waiters:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                self._synced = target
                keep = []
                for t, fut in self._waiters:
                    if t <= target:
                        if not fut.done():
                            fut.set_result(None)
                    else:
                        keep.append((t, fut))
                self._waiters = keep
        finally:
            self._running = None


class KafkaDoor:
    """Shared state of the Kafka door (see module docstring)."""

    def __init__(
        self,
        broker: Any,
        *,
        advertise_host: str = "127.0.0.1",
        advertise_port: int = 9092,
        auto_create: bool = True,
        default_partitions: int = 1,
        fsync: str = "never",
        max_request_size: int = DEFAULT_MAX_REQUEST_SIZE,
        node_id: int = 0,
        group_initial_rebalance_delay_ms: int = 3000,
    ) -> None:
        self.broker = broker
        self.advertise_host = advertise_host
        self.advertise_port = advertise_port
        self.auto_create = auto_create
        self.default_partitions = default_partitions
        self.fsync = fsync
        self.max_request_size = max_request_size
        self.node_id = node_id
        from .protocol import MAX_QUEUED_BYTES

        self.max_queued_bytes = MAX_QUEUED_BYTES
        self.connections: set = set()
        self.waiters: dict[tuple[str, int], set[asyncio.Future]] = {}
        self.producers: dict[int, ProducerState] = {}
        # Producer ids start at the current time in ms times 1000, so ids handed out
        # after a restart do not collide with those of the previous run.
        self._next_pid = itertools.count(int(time.time() * 1000) * 1000)
        self.group_commit = GroupCommit(broker) if fsync == "always" else None
        self.shutting_down = False
        self.group_initial_rebalance_delay_ms = group_initial_rebalance_delay_ms
        self._coordinator = None

    # --- topic ids ------------------------------------------------------------------

    def topic_id(self, name: str) -> uuid.UUID:
        """The topic's id (Metadata v10+, CreateTopics v7): the engine's own id when it
        keeps one, else one derived from the cluster id and the name."""
        try:
            tid = getattr(self.broker.topic(name), "id", None)
            if tid:
                return uuid.UUID(str(tid))
        except Exception:
            pass
        return uuid.uuid5(uuid.NAMESPACE_URL, f"umlog:{self.broker.cluster_id}:{name}")

    # --- long polls --------------------------------------------------------------------

    def add_waiter(self, keys, fut: asyncio.Future) -> None:
        for k in keys:
            self.waiters.setdefault(k, set()).add(fut)

    def remove_waiter(self, keys, fut: asyncio.Future) -> None:
        for k in keys:
            s = self.waiters.get(k)
            if s is not None:
                s.discard(fut)
                if not s:
                    del self.waiters[k]

    def notify_append(self, topic: str, partition: int) -> None:
        s = self.waiters.pop((topic, partition), None)
        if s:
            for fut in s:
                if not fut.done():
                    fut.set_result(None)

    def wake_all(self) -> None:
        for s in list(self.waiters.values()):
            for fut in s:
                if not fut.done():
                    fut.set_result(None)
        self.waiters.clear()
        if self._coordinator is not None:
            self._coordinator.shutdown()

    # --- consumer groups ----------------------------------------------------------------

    @property
    def coordinator(self):
        """The group coordinator (``umlog.groups.coordinator.Coordinator``), on this loop."""
        if self._coordinator is None:
            from umlog.groups.coordinator import Coordinator

            from .handlers._groups import LoopScheduler

            self._coordinator = Coordinator(self.broker.offsets, LoopScheduler(asyncio.get_running_loop()),
                                            initial_rebalance_delay_ms=self.group_initial_rebalance_delay_ms)
        return self._coordinator

    # --- producers ---------------------------------------------------------------------

    def new_producer(self) -> ProducerState:
        pid = next(self._next_pid)
        st = ProducerState(pid, 0)
        self.producers[pid] = st
        return st

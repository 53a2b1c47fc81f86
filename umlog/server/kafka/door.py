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
  the JoinGroup/SyncGroup requests it holds;
* the limits (``--max-connections``, ``--idle-timeout-ms``, ``--fetch-max-bytes``,
  the file-descriptor budget of new partitions): ``refuse_connection``,
  ``watch_idle`` and ``partition_budget_error``.

Not thread-safe: everything runs on the loop; ``broker.sync()`` alone runs in an
executor thread (the engine releases the GIL there).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import time
import uuid
from typing import Any

try:
    import resource
except ImportError:  # pragma: no cover - not POSIX
    resource = None  # type: ignore[assignment]

__all__ = ["KafkaDoor", "GroupCommit", "ProducerState", "BatchRecord"]

log = logging.getLogger("umlog.server.kafka")

DEFAULT_MAX_REQUEST_SIZE = 100 * 1024 * 1024
# Kafka keeps the last 5 batches per producer and partition for duplicate
# detection (max.in.flight.requests.per.connection <= 5 for idempotence).
PRODUCER_BATCH_CACHE = 5
# Kafka's broker fetch.max.bytes (KIP-541): the most one Fetch response holds,
# whatever the client asks for. A response is read into memory (pread), so
# this bounds what one connection can make the server hold.
DEFAULT_FETCH_MAX_BYTES = 55 * 1024 * 1024
# Kafka's connections.max.idle.ms.
DEFAULT_IDLE_TIMEOUT_MS = 600_000
# Descriptors a new partition holds: its .log, the .index and .timeindex maps
# (Python's mmap keeps a descriptor each) and its recovery-point file.
FDS_PER_PARTITION = 4
FD_RESERVE = 64  # kept free for the data dir's meta files, rolls, the listener


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
        max_connections: int | None = None,
        idle_timeout_ms: int = DEFAULT_IDLE_TIMEOUT_MS,
        fetch_max_bytes: int = DEFAULT_FETCH_MAX_BYTES,
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
        self.max_connections = max_connections  # None: no limit
        self.idle_timeout_ms = idle_timeout_ms  # 0: never close idle connections
        self.fetch_max_bytes = fetch_max_bytes
        self._idle_timer: asyncio.TimerHandle | None = None
        self._refused = 0  # connections refused since the last log line
        self._refused_logged = 0.0
        self.refused_total = 0
        self.idle_closed_total = 0

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
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

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

    # --- limits ---------------------------------------------------------------------------

    def refuse_connection(self, peer: str) -> bool:
        """True if a new connection must be refused (``max_connections`` reached).

        Refused connections are accepted and closed at once; one log line a
        second at most says how many (a reconnect storm must not flood the log).
        """
        if self.max_connections is None or len(self.connections) < self.max_connections:
            return False
        self.refused_total += 1
        self._refused += 1
        now = time.monotonic()
        if now - self._refused_logged >= 1.0:
            log.warning("kafka %s: refused: %d connections open (--max-connections %d); "
                        "%d refused since the last such line", peer, len(self.connections),
                        self.max_connections, self._refused)
            self._refused = 0
            self._refused_logged = now
        return True

    def watch_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the idle-connection sweep (a no-op while one is scheduled).

        One timer for the whole door, every quarter of the timeout (at most
        30 s): a connection that is waiting for a request and has seen no byte
        for ``idle_timeout_ms`` is closed, as Kafka's connections.max.idle.ms.
        A long-polling Fetch is not idle. Stops while no connection is open.
        """
        if self.idle_timeout_ms <= 0 or self._idle_timer is not None or self.shutting_down:
            return
        interval = min(max(self.idle_timeout_ms / 4000, 0.02), 30.0)
        self._idle_timer = loop.call_later(interval, self._sweep_idle, loop)

    def _sweep_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        self._idle_timer = None
        now = loop.time()
        limit = self.idle_timeout_ms / 1000
        for c in list(self.connections):
            if c.idle and now - c.last_active >= limit:
                self.idle_closed_total += 1
                c.close_idle(now - c.last_active)
        if self.connections:
            self.watch_idle(loop)

    def partition_budget_error(self, new: int) -> str | None:
        """Why ``new`` more partitions would run the process out of file
        descriptors (a message for the client), or None when they fit.

        Every partition holds ``FDS_PER_PARTITION`` descriptors; the room the
        connection limit allows is kept free too. Without this one
        CreatePartitions with a large count exhausted them, after which
        nothing (accept, rolls, a restart) worked.
        """
        if new <= 0 or resource is None:
            return None
        try:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            used = len(os.listdir("/proc/self/fd"))
        except (OSError, ValueError):
            return None  # not Linux: no cheap count of open descriptors
        if soft == resource.RLIM_INFINITY:
            return None
        reserve = FD_RESERVE + max(0, (self.max_connections or 0) - len(self.connections))
        need = new * FDS_PER_PARTITION
        if used + need + reserve <= soft:
            return None
        return (f"{new} more partition(s) need {need} file descriptors: {used} of the limit of {soft} are "
                f"open and {reserve} are kept for connections (raise `ulimit -n`, or lower --max-connections)")

    # --- producers ---------------------------------------------------------------------

    def new_producer(self) -> ProducerState:
        pid = next(self._next_pid)
        st = ProducerState(pid, 0)
        self.producers[pid] = st
        return st

"""The Kafka door: its settings, its listener, and the state its handlers share.

``KafkaDoor`` is a ``umlog.server.door.Door`` over the hub
(``umlog.server.hub``). What every door needs lives in the hub and is reached
through it: the engine (``door.broker``), waking long-polling Fetches after
appends (``add_waiter``; the engine's append listeners wake them, whichever
door or thread appended), the durability gate (``hub.durable``), the group
coordinator, connection accounting and the descriptor budget. The door itself
keeps only what is Kafka's:

* its settings (``[kafka]``: listen, advertise, auto-create, request and
  fetch limits) and the advertised address;
* ``producers``: the producer ids this process issued (InitProducerId) and
  their epochs; the sequences of their batches are kept by each partition
  (``Partition.producer_state``), persisted beside the segments.

Not thread-safe: everything runs on the loop.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from typing import Any

from ..door import Door
from .settings import DEFAULT_FETCH_MAX_BYTES, DEFAULT_MAX_REQUEST_SIZE, KAFKA_SETTINGS

__all__ = ["KafkaDoor", "ProducerState", "DEFAULT_FETCH_MAX_BYTES", "DEFAULT_MAX_REQUEST_SIZE"]

log = logging.getLogger("umlog.server.kafka")



class ProducerState:
    """A producer id this process issued (InitProducerId) and its current epoch.
    Its batches' sequences are the partitions' own state (``Partition.producer_state``)."""

    __slots__ = ("producer_id", "epoch")

    def __init__(self, producer_id: int, epoch: int) -> None:
        self.producer_id = producer_id
        self.epoch = epoch


class KafkaDoor(Door):
    """The Kafka door (see the module docstring).

    ``KafkaDoor(hub, options)`` is how ``umlog serve`` makes it. Given a
    broker instead of a hub (tests, embedding), it makes its own hub from the
    hub's keyword arguments; keyword arguments override ``options``.
    """

    name = "kafka"
    settings = KAFKA_SETTINGS

    def __init__(
        self,
        hub: Any,
        options: dict[str, Any] | None = None,
        *,
        advertise_host: str = "127.0.0.1",
        advertise_port: int = 9092,
        node_id: int = 0,
        auto_create: bool | None = None,
        default_partitions: int | None = None,
        max_request_size: int | None = None,
        fetch_max_bytes: int | None = None,
        max_connections: int | None = None,
        idle_timeout_ms: int | None = None,
        group_initial_rebalance_delay_ms: int | None = None,
    ) -> None:
        from ..hub import Hub

        if not isinstance(hub, Hub):
            given = {"max_connections": max_connections, "idle_timeout_ms": idle_timeout_ms,
                     "group_initial_rebalance_delay_ms": group_initial_rebalance_delay_ms}
            hub = Hub(hub, **{k: v for k, v in given.items() if v is not None})  # the rest: the hub's defaults
        opts = {s.key: s.default for s in KAFKA_SETTINGS}
        opts.update(options or {})
        for key, value in (("auto_create", auto_create), ("default_partitions", default_partitions),
                           ("max_request_size", max_request_size), ("fetch_max_bytes", fetch_max_bytes)):
            if value is not None:
                opts[key] = value
        super().__init__(hub, opts)
        self.broker = hub.broker
        self.advertise_host = advertise_host
        self.advertise_port = advertise_port
        self.auto_create = opts["auto_create"]
        self.default_partitions = opts["default_partitions"]
        self.max_request_size = opts["max_request_size"]
        self.fetch_max_bytes = opts["fetch_max_bytes"]
        self.node_id = node_id
        from .protocol import MAX_QUEUED_BYTES

        self.max_queued_bytes = MAX_QUEUED_BYTES
        self.producers: dict[int, ProducerState] = {}
        # share groups (handlers/_share.py): sessions by (group, member id)
        self.share_sessions: dict = {}
        self._topic_names: dict[uuid.UUID, str] = {}
        # Producer ids start at the current time in ms times 1000, so ids handed out
        # after a restart do not collide with those of the previous run.
        self._next_pid = itertools.count(int(time.time() * 1000) * 1000)
        self._server: asyncio.base_events.Server | None = None

    # --- the Door interface ---------------------------------------------------------------

    async def start(self) -> str:
        from ..settings import parse_hostport
        from .protocol import KafkaProtocol

        host, port = parse_hostport(self.options["listen"])
        loop = asyncio.get_running_loop()
        self.hub.bind(loop)
        self._server = await loop.create_server(lambda: KafkaProtocol(self), host, port, reuse_address=True)
        bound = self._server.sockets[0].getsockname()
        bound_host, bound_port = bound[0], bound[1]
        if self.options.get("advertise"):
            self.advertise_host, self.advertise_port = parse_hostport(self.options["advertise"], bound_port)
        else:
            self.advertise_host = bound_host if bound_host not in ("0.0.0.0", "::") else "127.0.0.1"
            self.advertise_port = bound_port
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        return f"{shown}:{bound_port}"

    async def drain(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    # --- what lives in the hub, under the names the handlers use ------------------------------

    @property
    def coordinator(self):
        return self.hub.coordinator

    @property
    def shutting_down(self) -> bool:
        return self.hub.shutting_down

    @property
    def waiters(self):
        return self.hub.waiters

    def add_waiter(self, keys, fut: asyncio.Future) -> None:
        self.hub.add_waiter(keys, fut)

    def remove_waiter(self, keys, fut: asyncio.Future) -> None:
        self.hub.remove_waiter(keys, fut)

    def wake_all(self) -> None:
        self.hub.wake_all()

    @property
    def connections(self) -> set:
        return self.hub.connections_of(self.name)

    @property
    def refused_total(self) -> int:
        return self.hub.refused_total

    def partition_budget_error(self, new: int) -> str | None:
        return self.hub.partition_budget_error(new)

    def create_topic(self, name: str, partitions: int, config=None):
        return self.hub.create_topic(name, partitions, config)

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

    def topic_by_id(self, topic_id: uuid.UUID | None) -> str | None:
        """The name of the topic whose id (``topic_id``) is ``topic_id``, or None
        (requests that name topics by id: Metadata v12, the share-group APIs)."""
        if topic_id is None:
            return None
        name = self._topic_names.get(topic_id)
        if name is not None:
            try:
                self.broker.topic(name)
                return name
            except Exception:
                pass
        self._topic_names = {self.topic_id(t): t for t in self.broker.topics(internal=True)}
        return self._topic_names.get(topic_id)

    # --- producers ---------------------------------------------------------------------

    def new_producer(self) -> ProducerState:
        pid = next(self._next_pid)
        st = ProducerState(pid, 0)
        self.producers[pid] = st
        return st

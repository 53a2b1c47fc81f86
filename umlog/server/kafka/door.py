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
  (``Partition.producer_state``), persisted beside the segments;
* its listeners: ``listen`` is one address or a list of Kafka-style ones
  (``PLAINTEXT://``, ``SSL://``, ``SASL_PLAINTEXT://``, ``SASL_SSL://``); each
  advertises its own address in Metadata and FindCoordinator (``advertise``
  overrides the first one's). Authentication and ACLs are the hub's
  (``hub.security``; see ``dispatch`` and ``authz``).

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


class KafkaListener:
    """One listener: its scheme (``sasl_ssl``, ...) and the address it advertises."""

    __slots__ = ("scheme", "sasl", "tls", "advertised")

    def __init__(self, scheme: str, sasl: bool, tls: bool) -> None:
        self.scheme = scheme
        self.sasl = sasl
        self.tls = tls
        self.advertised: tuple[str, int] | None = None


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
        self.security = hub.security  # None: no authentication, no ACLs (and nothing checked per request)
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
        self._servers: list = []

    # --- the Door interface ---------------------------------------------------------------

    async def start(self) -> str | dict[str, str]:
        from ..security.settings import KAFKA_SCHEMES, parse_listeners
        from ..settings import parse_hostport
        from .protocol import KafkaProtocol

        loop = asyncio.get_running_loop()
        self.hub.bind(loop)
        bound: dict[str, str] = {}
        for i, spec in enumerate(parse_listeners(self.options["listen"], KAFKA_SCHEMES)):
            where = f"[kafka] listen {spec.scheme.upper()}://{spec.host}:{spec.port}"
            if spec.sasl and self.security is None:
                raise ValueError(f"{where}: SASL needs a [security] table (users and ACLs)")
            ctx = self.hub.tls.server(self.options.get("tls_cert"), self.options.get("tls_key"),
                                      self.options.get("tls_client_ca"), where) if spec.tls else None
            info = KafkaListener(spec.scheme, spec.sasl, spec.tls)
            server = await loop.create_server(lambda info=info: KafkaProtocol(self, info), spec.host, spec.port,
                                              reuse_address=True, ssl=ctx)
            self._servers.append(server)
            h, p = server.sockets[0].getsockname()[:2]
            info.advertised = (h if h not in ("0.0.0.0", "::") else "127.0.0.1", p)
            if i == 0:
                self._server = server
                if self.options.get("advertise"):
                    info.advertised = parse_hostport(self.options["advertise"], p)
                self.advertise_host, self.advertise_port = info.advertised
            name = "kafka" if i == 0 else f"kafka-{spec.scheme}"
            n = 2
            while name in bound:
                name, n = f"kafka-{spec.scheme}-{n}", n + 1
            bound[name] = f"[{h}]:{p}" if ":" in h else f"{h}:{p}"
        return bound if len(bound) > 1 else bound["kafka"]

    def advertised(self, conn) -> tuple[str, int]:
        """(host, port) given to a client of ``conn``'s listener in Metadata and FindCoordinator."""
        listener = getattr(conn, "listener", None)
        if listener is not None and listener.advertised is not None:
            return listener.advertised
        return self.advertise_host, self.advertise_port

    async def drain(self) -> None:
        for s in self._servers:
            s.close()

    async def close(self) -> None:
        for s in self._servers:
            s.close()
        self._servers = []
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

"""The AMQP door: exchanges, queues and bindings kept by the server, messages in the log.

See the package docstring for the mapping and the theory of operation.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import time
from typing import Any

from ..door import Door
from .codec import add_death
from .queues import EXCHANGE_TYPES, Binding, Exchange, Queue, exchange_of_topic
from .settings import AMQP_SETTINGS, DEFAULT_EXCHANGE_TOPIC

__all__ = ["AmqpDoor", "AmqpError", "META_FILE"]

log = logging.getLogger("umlog.server.amqp")

META_FILE = "amqp.json"
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
PREDECLARED = {"amq.direct": "direct", "amq.fanout": "fanout", "amq.topic": "topic", "amq.headers": "headers",
               "amq.match": "headers"}

# reply codes
NOT_FOUND, ACCESS_REFUSED, RESOURCE_LOCKED, PRECONDITION_FAILED = 404, 403, 405, 406
COMMAND_INVALID, NOT_IMPLEMENTED, NOT_ALLOWED, INTERNAL_ERROR = 503, 540, 530, 541


class AmqpError(Exception):
    """A channel (``hard`` False) or connection exception with its reply code."""

    def __init__(self, code: int, text: str, hard: bool = False) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.hard = hard


class AmqpDoor(Door):
    """AMQP 0-9-1 for RabbitMQ clients (see the package docstring)."""

    name = "amqp"
    settings = AMQP_SETTINGS

    def __init__(self, hub: Any, options: dict[str, Any]) -> None:
        super().__init__(hub, options)
        self.broker = hub.broker
        self.heartbeat_s = options.get("heartbeat_s", 60)
        self.frame_max = options.get("frame_max") or 131_072
        self.channel_max = options.get("channel_max") or 2047
        self.max_message_size = options.get("max_message_size") or 128 * 1024 * 1024
        self.disk_free_limit = (options.get("disk_free_limit_mb") or 0) * 1024 * 1024
        self.exchanges: dict[str, Exchange] = {"": Exchange("", "direct")}
        for n, t in PREDECLARED.items():
            self.exchanges[n] = Exchange(n, t)
        self.queues: dict[str, Queue] = {}
        self.connections: set = set()
        self.blocked = False
        self._server: asyncio.base_events.Server | None = None
        self._disk_timer: asyncio.TimerHandle | None = None
        self._meta_path = os.path.join(self.broker.path, "meta", META_FILE)

    # --- the Door interface ---------------------------------------------------------------------

    async def start(self) -> str:
        from ..settings import parse_hostport
        from .connection import AmqpConnection

        loop = asyncio.get_running_loop()
        self.hub.bind(loop)
        self._load()
        host, port = parse_hostport(self.options["listen"], 5672)
        self._server = await loop.create_server(lambda: AmqpConnection(self), host, port, reuse_address=True)
        if self.disk_free_limit:
            self._check_disk()
        h, p = self._server.sockets[0].getsockname()[:2]
        return f"[{h}]:{p}" if ":" in h else f"{h}:{p}"

    async def drain(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._disk_timer is not None:
            self._disk_timer.cancel()
            self._disk_timer = None
        for q in self.queues.values():
            q.stop()

    # --- metadata ------------------------------------------------------------------------------

    def _load(self) -> None:
        """Durable exchanges, queues and their bindings from ``DATA/meta/amqp.json``;
        share-group state of queues that are gone (transient ones) is dropped."""
        from umlog.log.files import read_json

        data = {}
        if os.path.exists(self._meta_path):
            data = read_json(self._meta_path) or {}
        from .queues import _unjson

        for e in data.get("exchanges", ()):
            self.exchanges[e["name"]] = Exchange(e["name"], e["type"], True, e.get("auto_delete", False),
                                                 e.get("internal", False), _unjson(e.get("arguments") or {}))
        for d in data.get("queues", ()):
            q = Queue(self, d["name"], True, None, d.get("auto_delete", False), _unjson(d.get("arguments") or {}),
                      d["gid"])
            for b in d.get("bindings", ()):
                b = Binding.from_json(b)
                if b.exchange in self.exchanges:
                    q.bindings.append(b)
                    if b.until is None:
                        self.exchanges[b.exchange].bound += 1
            self.queues[q.name] = q
            for t in q.topics():
                self._ensure_topic(t)
            q.open_group()
            q_touch(q)  # x-expires counts from the start, as if declared then
        self._forget_groups({q.group_name for q in self.queues.values()})

    def _forget_groups(self, keep: set) -> None:
        """Delete the saved state of AMQP share groups not in ``keep``."""
        from umlog.delivery.group import delete_share_group, saved_share_groups

        try:
            for g in saved_share_groups(self.broker):
                if g.startswith("amqp:") and g not in keep:
                    delete_share_group(self.broker, g)
        except Exception:
            log.exception("amqp: dropping the state of deleted queues failed")

    def save(self) -> None:
        """Write every durable exchange, queue and binding (atomically: a temp file,
        fsync, rename). Called before the -ok of whatever changed them."""
        from umlog.log.files import atomic_write_json

        exchanges = [e.to_json() for n, e in sorted(self.exchanges.items())
                     if e.durable and n and n not in PREDECLARED]
        queues = []
        for q in self.queues.values():
            if not q.durable:
                continue
            d = q.to_json()
            d["bindings"] = [b for b in d["bindings"] if self.exchanges.get(b["exchange"]) is not None
                             and self.exchanges[b["exchange"]].durable]
            queues.append(d)
        atomic_write_json(self._meta_path, {"version": 1, "exchanges": exchanges, "queues": queues})

    # --- exchanges -----------------------------------------------------------------------------

    def _ensure_topic(self, topic: str):
        try:
            return self.broker.topic(topic)
        except Exception:
            from umlog.errors import TopicExistsError

            try:
                return self.hub.create_topic(topic, 1)
            except TopicExistsError:
                return self.broker.topic(topic)

    def exchange(self, name: str) -> Exchange:
        e = self.exchanges.get(name)
        if e is None:
            raise AmqpError(NOT_FOUND, f"NOT_FOUND - no exchange '{name}' in vhost '/'")
        return e

    def declare_exchange(self, name: str, type: str, passive: bool, durable: bool, auto_delete: bool,
                         internal: bool, arguments: dict) -> None:
        e = self.exchanges.get(name)
        if passive:
            if e is None:
                raise AmqpError(NOT_FOUND, f"NOT_FOUND - no exchange '{name}' in vhost '/'")
            return
        if not name:
            raise AmqpError(ACCESS_REFUSED, "ACCESS_REFUSED - operation not permitted on the default exchange")
        if e is not None:
            if e.type != type:
                raise AmqpError(PRECONDITION_FAILED, f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange "
                                f"'{name}' in vhost '/': received '{type}' but current is '{e.type}'")
            if e.durable != durable or e.auto_delete != auto_delete:
                which = "durable" if e.durable != durable else "auto_delete"
                raise AmqpError(PRECONDITION_FAILED, f"PRECONDITION_FAILED - inequivalent arg '{which}' for "
                                f"exchange '{name}' in vhost '/'")
            return
        if name.startswith("amq."):
            raise AmqpError(ACCESS_REFUSED, f"ACCESS_REFUSED - exchange name '{name}' contains reserved prefix "
                            "'amq.*'")
        if type not in EXCHANGE_TYPES:
            raise AmqpError(COMMAND_INVALID, f"COMMAND_INVALID - invalid exchange type '{type}'", hard=True)
        check_topic_name(name)
        self._ensure_topic(name)
        self.exchanges[name] = Exchange(name, type, durable, auto_delete, internal, arguments)
        if durable:
            self.save()

    def delete_exchange(self, name: str, if_unused: bool) -> None:
        if not name or name in PREDECLARED:
            raise AmqpError(ACCESS_REFUSED, f"ACCESS_REFUSED - operation not permitted on exchange '{name}'")
        e = self.exchanges.get(name)
        if e is None:
            return  # RabbitMQ 3.x: deleting a missing exchange is ok
        if if_unused and e.bound:
            raise AmqpError(PRECONDITION_FAILED, f"PRECONDITION_FAILED - exchange '{name}' in use")
        for q in self.queues.values():
            for b in q.live_bindings():
                if b.exchange == name:
                    b.until = self._ends(b.topic)
        del self.exchanges[name]
        if e.durable:
            self.save()

    # --- queues --------------------------------------------------------------------------------

    def queue(self, name: str, conn=None) -> Queue:
        q = self.queues.get(name)
        if q is None:
            raise AmqpError(NOT_FOUND, f"NOT_FOUND - no queue '{name}' in vhost '/'")
        if q.owner is not None and conn is not None and q.owner is not conn:
            raise AmqpError(RESOURCE_LOCKED, f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue "
                            f"'{name}' in vhost '/'. It could be originally declared on another connection or the "
                            "exclusive property value does not match that of the original declaration.")
        return q

    def declare_queue(self, conn, name: str, passive: bool, durable: bool, exclusive: bool, auto_delete: bool,
                      arguments: dict) -> Queue:
        if not name:
            if passive:
                raise AmqpError(NOT_FOUND, "NOT_FOUND - no queue '' in vhost '/'")
            name = "amq.gen-" + secrets.token_urlsafe(16)
        q = self.queues.get(name)
        if passive or q is not None:
            q = self.queue(name, conn)
            if not passive:
                self._check_same(q, durable, exclusive, auto_delete, arguments)
            q_touch(q)
            return q
        if name.startswith("amq.") and not name.startswith("amq.gen-"):
            raise AmqpError(ACCESS_REFUSED, f"ACCESS_REFUSED - queue name '{name}' contains reserved prefix 'amq.*'")
        kind = arguments.get("x-queue-type") or "classic"
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind not in ("classic", "quorum", "stream"):
            raise AmqpError(PRECONDITION_FAILED, f"PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue "
                            f"'{name}' in vhost '/': {kind!r} is not classic, quorum or stream")
        if kind != "classic" and (not durable or exclusive or auto_delete):
            raise AmqpError(PRECONDITION_FAILED, f"PRECONDITION_FAILED - invalid property 'non-durable, exclusive "
                            f"or auto-delete' for queue '{name}' in vhost '/' (a {kind} queue)")
        dlx = arguments.get("x-dead-letter-exchange")
        if dlx is not None and not isinstance(dlx, (str, bytes)):
            raise AmqpError(PRECONDITION_FAILED, "PRECONDITION_FAILED - invalid arg 'x-dead-letter-exchange'")
        try:
            q = Queue(self, name, durable, conn if exclusive else None, auto_delete, arguments,
                      secrets.token_hex(6))
        except ValueError as e:
            raise AmqpError(PRECONDITION_FAILED, f"PRECONDITION_FAILED - {e}") from None
        self._ensure_topic(DEFAULT_EXCHANGE_TOPIC)
        q.bindings.append(Binding("", "direct", name, {}, self._ends(DEFAULT_EXCHANGE_TOPIC)))
        q.open_group()
        self.queues[name] = q
        if durable:
            self.save()
        if exclusive:
            conn.exclusive_queues.add(name)
        if q.max_length is not None:
            q.kick()
        q_touch(q)
        return q

    def _check_same(self, q: Queue, durable: bool, exclusive: bool, auto_delete: bool, arguments: dict) -> None:
        for what, mine, theirs in (("durable", q.durable, durable), ("exclusive", q.owner is not None, exclusive),
                                   ("auto_delete", q.auto_delete, auto_delete)):
            if mine != theirs:
                raise AmqpError(PRECONDITION_FAILED, f"PRECONDITION_FAILED - inequivalent arg '{what}' for queue "
                                f"'{q.name}' in vhost '/': received '{str(theirs).lower()}' but current is "
                                f"'{str(mine).lower()}'")
        for k in sorted(set(q.arguments) | set(arguments)):
            a, b = q.arguments.get(k), arguments.get(k)
            if k == "x-queue-type" and {a, b} <= {None, "classic", b"classic"}:
                continue
            if a != b:
                raise AmqpError(PRECONDITION_FAILED, f"PRECONDITION_FAILED - inequivalent arg '{k}' for queue "
                                f"'{q.name}' in vhost '/': received {b!r} but current is {a!r}")

    def delete_queue(self, conn, name: str, if_unused: bool, if_empty: bool) -> int:
        q = self.queues.get(name)
        if q is None:
            return 0
        self.queue(name, conn)
        if if_unused and q.consumers:
            raise AmqpError(PRECONDITION_FAILED, f"PRECONDITION_FAILED - queue '{name}' in vhost '/' in use")
        n = q.count_ready()
        if if_empty and n:
            raise AmqpError(PRECONDITION_FAILED, f"PRECONDITION_FAILED - queue '{name}' in vhost '/' is not empty")
        self.remove_queue(q)
        return n

    def remove_queue(self, q: Queue) -> None:
        if self.queues.get(q.name) is not q:
            return
        del self.queues[q.name]
        q.stop()
        for c in list(q.consumers.values()):
            c.channel.cancelled_by_server(c)
        q.consumers.clear()
        for b in q.live_bindings():
            self._unbound(b.exchange)
        if q.owner is not None:
            q.owner.exclusive_queues.discard(q.name)
        if q.durable:
            self.save()
        from umlog.delivery.group import delete_share_group

        try:
            delete_share_group(self.broker, q.group_name)
        except Exception:
            log.exception("amqp: dropping the state of queue %r failed", q.name)

    def _unbound(self, exchange: str) -> None:
        e = self.exchanges.get(exchange)
        if e is None or not exchange:
            return
        e.bound -= 1
        if e.auto_delete and e.bound <= 0:
            del self.exchanges[exchange]
            if e.durable:
                self.save()

    def _ends(self, topic: str) -> dict[int, int]:
        t = self._ensure_topic(topic)
        return {i: p.end_offset for i, p in enumerate(t.partitions)}

    def bind(self, conn, queue: str, exchange: str, key: str, arguments: dict) -> None:
        q = self.queue(queue, conn)
        e = self.exchange(exchange)
        if not exchange:
            raise AmqpError(ACCESS_REFUSED, "ACCESS_REFUSED - operation not permitted on the default exchange")
        if any(b.same(exchange, key, arguments) for b in q.live_bindings()):
            return
        b = Binding(exchange, e.type, key, arguments, self._ends(e.topic))
        q.bindings.append(b)
        q.add_topic(e.topic)
        e.bound += 1
        if q.durable and e.durable:
            self.save()
        q.kick()

    def unbind(self, conn, queue: str, exchange: str, key: str, arguments: dict) -> None:
        q = self.queue(queue, conn)
        if not exchange:
            raise AmqpError(ACCESS_REFUSED, "ACCESS_REFUSED - operation not permitted on the default exchange")
        for b in q.live_bindings():
            if b.same(exchange, key, arguments):
                b.until = self._ends(b.topic)
                self._unbound(exchange)
                if q.durable:
                    self.save()
                return

    # --- publishing ------------------------------------------------------------------------------

    def routed_anywhere(self, e: Exchange, key: bytes, headers) -> bool:
        """Would a message published now reach a queue (basic.publish mandatory)?"""
        cache: list = []
        if not e.name:
            q = self.queues.get(key.decode("utf-8", "replace"))
            return q is not None
        for q in self.queues.values():
            for b in q.bindings:
                if b.until is None and b.exchange == e.name and b.routes(key, headers, cache):
                    return True
        return False

    def dead_letter(self, q: Queue, dead: list) -> None:
        """Append ``[(record, reason)]`` of queue ``q`` to its dead-letter exchange with ``x-death``."""
        if q.dlx is None:
            return
        e = self.exchanges.get(q.dlx)
        if e is None:
            log.info("amqp: queue %r: dead-letter exchange %r does not exist; dropping %d message(s)",
                     q.name, q.dlx, len(dead))
            return
        t = self._ensure_topic(e.topic)
        now_s = int(time.time())
        touched = set()
        for r, reason in dead:
            key = q.dlrk if q.dlrk is not None else (b"" if r.key is None else bytes(r.key))
            headers = add_death(r.headers, q.name, reason, exchange_of_topic(r.topic),
                                b"" if r.key is None else bytes(r.key), now_s)
            md = t.append(r.value, key=key, headers=headers)
            touched.add(t.partition(md.partition))
        for p in touched:
            p.seal()

    def settle(self, fn, recs: list, q: Queue | None = None) -> None:
        from umlog.delivery.group import InvalidRecordStateError

        if not recs:
            return
        try:
            fn(recs)
        except InvalidRecordStateError as e:  # the queue was deleted, or its lock expired
            log.info("amqp: queue %r: %s", q.name if q else "?", e)
        except Exception:
            log.exception("amqp: queue %r: settling %d message(s) failed", q.name if q else "?", len(recs))

    # --- security ------------------------------------------------------------------------------------

    def authenticate(self, user: str, password: str, peer: str) -> str | None:
        """The principal for these credentials, or None. Without ``[security]``
        every client is let in (as RabbitMQ's guest/guest on loopback)."""
        if getattr(self.hub, "security", None) is None:
            return f"User:{user}"
        return self.hub.authenticate_plain(user, password, source="amqp", client=peer)

    def authorize(self, principal: str, operation: str, resource: str, name: str, peer: str) -> None:
        if getattr(self.hub, "security", None) is None:
            return
        host = peer.rsplit(":", 1)[0]
        if not self.hub.authorize(principal, operation, resource, name, host, source="amqp", client=peer):
            raise AmqpError(ACCESS_REFUSED, f"ACCESS_REFUSED - {operation.lower()} access to {resource.lower()} "
                            f"'{name}' refused for user '{principal}'")

    # --- disk alarm ------------------------------------------------------------------------------------

    def _check_disk(self) -> None:
        self._disk_timer = None
        if self.hub.shutting_down:
            return
        try:
            st = os.statvfs(self.broker.path)
            low = st.f_bavail * st.f_frsize < self.disk_free_limit
        except OSError:
            low = False
        if low != self.blocked:
            self.blocked = low
            log.warning("amqp: %s publishers: %s", "blocking" if low else "unblocking",
                        "free disk space is below disk_free_limit_mb" if low else "free disk space is back")
            for c in list(self.connections):
                c.set_blocked(low)
        self._disk_timer = asyncio.get_running_loop().call_later(1.0, self._check_disk)


def check_topic_name(name: str) -> None:
    if not _TOPIC_NAME.fullmatch(name) or name in (".", "..") or name.startswith("__"):
        raise AmqpError(PRECONDITION_FAILED, f"PRECONDITION_FAILED - exchange name '{name}' is not a log topic name "
                        "here (letters, digits, '.', '_', '-'; at most 249; not starting with '__')")


def q_touch(q: Queue) -> None:
    """x-expires: the queue is used now; deleted when unused that long."""
    if q.expires_ms is None or q.deleted:
        return
    if q._expiry is not None:
        q._expiry.cancel()
    q._expiry = asyncio.get_running_loop().call_later(q.expires_ms / 1000, _expire_queue, q)


def _expire_queue(q: Queue) -> None:
    q._expiry = None
    if q.consumers:
        q_touch(q)
        return
    log.info("amqp: queue %r unused for %d ms (x-expires): deleted", q.name, q.expires_ms)
    q.door.remove_queue(q)

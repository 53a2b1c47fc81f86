"""The hub: what every door needs, once, between the doors and the engine.

A door (``umlog/server/kafka/``, and later MQTT, HTTP, AMQP) parses its
protocol and calls the hub and the engine with whole batches. Everything a
second door would also need lives here:

* ``broker``: the engine handle (``umlog.Broker``), and ``create_topic``, which
  applies the server's ``[topics.defaults]`` under a client's own configs;
* **the durability gate** (``durable``): under ``fsync="always"`` an append is
  acknowledged only after a group-committed fdatasync that started after it.
  The group commit itself is the engine's (``Partition.sync_through``: one
  fdatasync covers every thread that appended before it); the hub only runs it
  off the event loop, one job per partition at a time, and resolves every
  waiter it covered. Appends made on the hub's loop thread skip the engine's
  inline sync (``Broker.defer_syncs_on``) so the loop never blocks on a disk;
  they are acknowledged through this gate. Appends from any other thread (the
  embedded API in the server's process) still sync before they return;
* **append listeners**: the engine calls ``_on_append`` whenever records become
  readable in a partition, whichever door, thread or embedded caller wrote
  them; waiters registered with ``add_waiter`` for that partition (a
  long-polling Fetch today; MQTT, SSE and AMQP subscribers tomorrow) are woken
  on the loop;
* **the group coordinator** (``coordinator``): created on first use with the
  loop's clock, shut down by ``wake_all`` at shutdown;
* **share-group members** (``shares``, ``umlog.server.shares``): members,
  epochs and sessions over the engine's share groups, for every door;
* **security** (``security``, ``umlog.server.security``; None without a
  ``[security]`` table): ``authenticate_plain``, ``authorize`` and ``audit``
  are what every door calls, so one authorizer decides for all of them; and
  ``tls``, the TLS contexts of every door's listeners (reloaded on SIGHUP);
* **connection accounting** across doors: ``admit`` / ``forget`` enforce
  ``max_connections`` for all doors together, one idle sweep closes any door's
  connection idle for ``idle_timeout_ms``, and ``partition_budget_error`` keeps
  the file-descriptor budget of new partitions.

A connection the hub tracks is any object with ``door`` (its ``Door``, whose
``name`` it reports), ``peer``, ``idle`` (waiting for a request), ``last_active`` (loop time) and
``close_idle(seconds)`` / ``close()``.

Not thread-safe: everything runs on the loop's thread, except ``_on_append``,
which the engine calls from whichever thread appended and which hands the
wake-up to the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

try:
    import resource
except ImportError:  # pragma: no cover - not POSIX
    resource = None  # type: ignore[assignment]

__all__ = ["Hub", "LoopScheduler", "DEFAULT_IDLE_TIMEOUT_MS", "FDS_PER_PARTITION", "default_max_connections"]

log = logging.getLogger("umlog.server.hub")

# Kafka's connections.max.idle.ms.
DEFAULT_IDLE_TIMEOUT_MS = 600_000
# Descriptors a new partition holds: its .log, the .index and .timeindex maps
# (Python's mmap keeps a descriptor each) and its recovery-point file.
FDS_PER_PARTITION = 4
FD_RESERVE = 64  # kept free for the data dir's meta files, rolls, the listeners


def default_max_connections() -> int | None:
    """Half the descriptors not yet open (the other half is for partitions)."""
    if resource is None:
        return None
    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            return None
        return max(64, (soft - len(os.listdir("/proc/self/fd"))) // 2)
    except (ValueError, OSError):
        return None


class LoopScheduler:
    """``umlog.groups.coordinator.Scheduler`` on an asyncio loop (``loop.time()`` is monotonic)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def time(self) -> float:
        return self.loop.time()

    def call_at(self, when: float, fn) -> asyncio.TimerHandle:
        return self.loop.call_at(when, fn)


class Hub:
    """The server core every door shares (see the module docstring)."""

    def __init__(
        self,
        broker: Any,
        *,
        max_connections: int | None = None,
        idle_timeout_ms: int = DEFAULT_IDLE_TIMEOUT_MS,
        group_initial_rebalance_delay_ms: int = 3000,
        topic_defaults: Mapping[str, Any] | None = None,
        offsets_retention_minutes: int = 10_080,
        offsets_retention_check_interval_ms: int = 600_000,
        share_settings: Mapping[str, Any] | None = None,
        security: Any = None,
    ) -> None:
        from .security.tls import TlsContexts

        self.broker = broker
        #: ``umlog.server.security.Security`` when [security] is on, else None (and
        #: ``authorizer`` None: a door tests that before anything else)
        self.security = security
        self.authorizer = security.authorizer if security is not None else None
        self.tls = TlsContexts()
        self._security_timer: asyncio.TimerHandle | None = None
        self.max_connections = max_connections  # None: no limit
        self.idle_timeout_ms = idle_timeout_ms  # 0: never close idle connections
        self.group_initial_rebalance_delay_ms = group_initial_rebalance_delay_ms
        self.topic_defaults = dict(topic_defaults or {})
        self.offsets_retention_ms = offsets_retention_minutes * 60_000
        self.offsets_retention_check_s = offsets_retention_check_interval_ms / 1000
        self._offsets_timer: asyncio.TimerHandle | None = None
        self.shutting_down = False
        self.connections: set = set()
        self.refused_total = 0
        self.idle_closed_total = 0
        self._refused = 0  # refused since the last log line
        self._refused_logged = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        # (topic, partition) -> futures of readers waiting for new records
        self.waiters: dict[tuple[str, int], set[asyncio.Future]] = {}
        self._coordinator = None
        self.share_settings = dict(share_settings or {})
        self._shares = None
        # The durability gate: partition -> (running sync task, [(offset, future)])
        self._syncing: dict[Any, asyncio.Task] = {}
        self._durable_waiters: dict[Any, list[tuple[int, asyncio.Future]]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        # What the server runs beside the doors, for those that report on it
        # (the HTTP door's /readyz and /metrics): the started doors and the
        # webhook service, set by the runner.
        self.doors: list = []
        self.webhooks: Any = None
        # fn(seconds) called after each fdatasync of the durability gate (metrics)
        self.sync_observers: list = []
        broker.add_append_listener(self._on_append)
        try:
            self.bind(asyncio.get_running_loop())
        except RuntimeError:  # made outside a loop (tests): bound on first use
            pass

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve on ``loop``: its thread's appends are acknowledged through ``durable``."""
        if self.loop is loop:
            return
        self.loop = loop
        self._loop_thread = threading.get_ident()
        self.broker.defer_syncs_on(self._loop_thread)

    def start_offsets_expiry(self) -> None:
        """Look for expired committed offsets every check interval (the server calls
        this once it serves; a hub made in tests does not run it unless asked)."""
        if self.loop is not None and self._offsets_timer is None and not self.shutting_down:
            self._offsets_timer = self.loop.call_later(self.offsets_retention_check_s, self._expire_offsets)

    def _expire_offsets(self) -> None:
        self._offsets_timer = None
        try:
            from umlog.groups.offsets import OFFSETS_TOPIC

            if OFFSETS_TOPIC in self.broker.topics(internal=True):  # none yet: nothing to expire, nothing made
                self.coordinator.expire_offsets(self.offsets_retention_ms)
        except Exception:  # a failing disk: log, try again at the next interval
            log.exception("expiring committed offsets failed")
        self.start_offsets_expiry()

    # --- security (umlog.server.security) ---------------------------------------------------

    def start_security(self) -> None:
        """Look for users and ACLs changed on disk (``umlog users``/``umlog acls``) every second."""
        if self.security is not None and self.loop is not None and not self.shutting_down:
            self._security_timer = self.loop.call_later(1.0, self._refresh_security)

    def _refresh_security(self) -> None:
        try:
            self.security.refresh()
        except Exception:  # a half-written file is replaced atomically; anything else: log, try again
            log.exception("re-reading users and ACLs failed")
        self.start_security()

    def authenticate_plain(self, user: str | None, password: str | None, source: str = "",
                           client: str | None = None) -> str | None:
        """The principal (``User:<user>``) when the password is right, else None
        (audited). Without security: None."""
        if self.security is None:
            return None
        return self.security.authenticate_plain(user, password, source, client)

    def authorize(self, principal: str, operation: Any, resource_type: Any, name: str, host: str = "*",
                  source: str = "", client: str | None = None) -> bool:
        """May ``principal`` do ``operation`` (``"WRITE"``) on the resource (``"TOPIC"``,
        ``"orders"``)? A denial is audited; without security always True."""
        if self.security is None:
            return True
        return self.security.authorize(principal, operation, resource_type, name, host, source, client)

    def audit(self, type_: str, source: str, subject: str | None, principal: str | None, client: str | None,
              operation: str | None, result: str, reason: str | None = None, **extra: Any) -> None:
        """One record of ``__audit`` (a no-op without security; see ``security.audit``)."""
        if self.security is not None:
            self.security.audit(type_, source, subject, principal, client, operation, result, reason, **extra)

    def close(self) -> None:
        """Detach from the engine (the broker stays open: its owner closes it)."""
        self.wake_all()
        self.broker.remove_append_listener(self._on_append)
        if self._loop_thread is not None:
            self.broker.defer_syncs_on(None)

    # --- topics ----------------------------------------------------------------------------

    def create_topic(self, name: str, partitions: int, config: Mapping[str, Any] | None = None):
        """Create a topic with the server's topic defaults under ``config``."""
        merged = dict(self.topic_defaults)
        merged.update(config or {})
        return self.broker.create_topic(name, partitions, merged)

    # --- append listeners ----------------------------------------------------------------------

    def add_waiter(self, keys: Iterable[tuple[str, int]], fut: asyncio.Future) -> None:
        """Resolve ``fut`` at the next append to any of ``keys`` ((topic, partition))."""
        self.bind(fut.get_loop())  # a hub made outside its loop (tests) binds on first use
        for k in keys:
            self.waiters.setdefault(k, set()).add(fut)

    def remove_waiter(self, keys: Iterable[tuple[str, int]], fut: asyncio.Future) -> None:
        for k in keys:
            s = self.waiters.get(k)
            if s is not None:
                s.discard(fut)
                if not s:
                    del self.waiters[k]

    def notify_append(self, topic: str, partition: int) -> None:
        """Wake the waiters of one partition (on the loop's thread)."""
        s = self.waiters.pop((topic, partition), None)
        if s:
            for fut in s:
                if not fut.done():
                    fut.set_result(None)

    def _on_append(self, partition: Any) -> None:
        # Called by the engine on the appending thread. On the loop's thread the
        # wake is immediate; from another thread it is handed over, always (a
        # waiter may register between our look and the hand-over).
        if threading.get_ident() == self._loop_thread:
            if self.waiters:
                self.notify_append(partition.topic, partition.index)
        elif self.loop is not None and not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(self.notify_append, partition.topic, partition.index)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def wake_all(self) -> None:
        """Shutdown: answer every waiting reader and held group request now."""
        for s in list(self.waiters.values()):
            for fut in s:
                if not fut.done():
                    fut.set_result(None)
        self.waiters.clear()
        if self._coordinator is not None:
            self._coordinator.shutdown()
        if self._shares is not None:
            self._shares.close()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._offsets_timer is not None:
            self._offsets_timer.cancel()
            self._offsets_timer = None
        if self._security_timer is not None:
            self._security_timer.cancel()
            self._security_timer = None

    # --- the durability gate ---------------------------------------------------------------------

    async def durable(self, appended: Mapping[Any, int]) -> None:
        """Return once every ``{partition: end offset}`` is durable, as the server's
        fsync policy promises: under ``always`` after an fdatasync that started
        after those appends; otherwise at once. Raises what the fdatasync raised
        (the caller must then not acknowledge)."""
        if self.broker.fsync != "always" or not appended:
            return
        loop = asyncio.get_running_loop()
        self.bind(loop)
        futs = []
        for p, end in appended.items():
            if p.flushed_offset >= end:
                continue
            fut = loop.create_future()
            self._durable_waiters.setdefault(p, []).append((end, fut))
            if p not in self._syncing:
                self._syncing[p] = loop.create_task(self._sync_partition(p))
            futs.append(fut)
        for fut in futs:
            await fut

    async def _sync_partition(self, p: Any) -> None:
        """Run the engine's group commit for ``p`` in a thread until no waiter is left."""
        loop = asyncio.get_running_loop()
        try:
            while self._durable_waiters.get(p):
                try:
                    # sync_through covers everything appended before it takes the
                    # partition's lock, so every waiter already queued is covered.
                    t0 = time.perf_counter()
                    await loop.run_in_executor(None, p.sync_through, p.end_offset)
                    for fn in self.sync_observers:
                        fn(time.perf_counter() - t0)
                except Exception as e:  # fail these waiters, keep serving
                    for _, fut in self._durable_waiters.pop(p, ()):
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                done = p.flushed_offset
                keep = []
                for end, fut in self._durable_waiters.get(p, ()):
                    if end <= done:
                        if not fut.done():
                            fut.set_result(None)
                    else:
                        keep.append((end, fut))
                if keep:
                    self._durable_waiters[p] = keep
                else:
                    self._durable_waiters.pop(p, None)
        finally:
            self._syncing.pop(p, None)

    # --- consumer groups ----------------------------------------------------------------------------

    @property
    def coordinator(self):
        """The group coordinator (``umlog.groups.coordinator.Coordinator``) on this loop."""
        if self._coordinator is None:
            from umlog.groups.coordinator import Coordinator

            self._coordinator = Coordinator(self.broker.offsets, LoopScheduler(asyncio.get_running_loop()),
                                            initial_rebalance_delay_ms=self.group_initial_rebalance_delay_ms)
        return self._coordinator

    @property
    def shares(self):
        """Share-group members of every door (``umlog.server.shares.ShareMembers``)."""
        if self._shares is None:
            from .shares import ShareMembers

            self._shares = ShareMembers(self.broker, **self.share_settings)
        return self._shares

    # --- connections --------------------------------------------------------------------------------

    def admit(self, conn: Any) -> bool:
        """Count a new connection of any door; False (and one log line a second at
        most) when ``max_connections`` is reached: the door then closes it at once."""
        self.bind(asyncio.get_running_loop())
        if self.max_connections is not None and len(self.connections) >= self.max_connections:
            self.refused_total += 1
            self._refused += 1
            now = time.monotonic()
            if now - self._refused_logged >= 1.0:
                log.warning("%s %s: refused: %d connections open (--max-connections %d); "
                            "%d refused since the last such line", conn.door.name, conn.peer, len(self.connections),
                            self.max_connections, self._refused)
                self._refused = 0
                self._refused_logged = now
            return False
        self.connections.add(conn)
        self._watch_idle()
        return True

    def forget(self, conn: Any) -> None:
        self.connections.discard(conn)

    def connections_of(self, door: str) -> set:
        return {c for c in self.connections if c.door.name == door}

    def _watch_idle(self) -> None:
        """Start the idle sweep (a no-op while one is scheduled): one timer for every
        door, every quarter of the timeout (at most 30 s). It stops while no
        connection is open."""
        if self.idle_timeout_ms <= 0 or self._idle_timer is not None or self.shutting_down:
            return
        loop = asyncio.get_running_loop()
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
            self._watch_idle()

    def partition_budget_error(self, new: int) -> str | None:
        """Why ``new`` more partitions would run the process out of file
        descriptors (a message for the client), or None when they fit.

        Every partition holds ``FDS_PER_PARTITION`` descriptors; the room the
        connection limit allows is kept free too. Without this one request for
        many partitions exhausted them, after which nothing (accept, rolls, a
        restart) worked.
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

    # --- shutdown ---------------------------------------------------------------------------------

    async def drain(self, doors: Iterable[Any], grace_s: float) -> None:
        """Stop every door accepting, answer held requests, wait up to ``grace_s``
        for in-flight ones, then close what is left."""
        self.shutting_down = True
        doors = list(doors)
        for d in doors:
            await d.drain()
        self.wake_all()
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(not c.idle for c in list(self.connections)):
            await asyncio.sleep(0.01)
        for d in doors:
            await d.close()
        for c in list(self.connections):
            c.close()
        await asyncio.sleep(0)

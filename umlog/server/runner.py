"""``umlog serve``: open the data dir, start every door on one hub and one loop, stop cleanly.

Lifecycle: open the broker (one writer process per data dir) -> make the hub
-> start each enabled door -> start the webhooks (``[[webhook]]`` and
``DATA/meta/webhooks.json``, see ``umlog.delivery.webhook``) -> start the
routes (``[[route]]``: one ``umlog.delivery.route.Router``, a thread of its
own) -> print one line ``umlog ready kafka=HOST:PORT ...``
on stdout (the ports actually bound, so ``127.0.0.1:0`` works for tests) ->
serve until SIGTERM/SIGINT (SIGHUP reloads every door's TLS certificates,
connections kept) -> the webhooks stop acquiring and their
deliveries in flight get ``SHUTDOWN_GRACE_S`` -> every door stops accepting, held requests are
answered (long polls wake, held group joins answer), in-flight requests get
at most ``SHUTDOWN_GRACE_S`` -> the router checkpoints and its thread ends
-> connections close -> the broker closes (flush,
fsync, write ``DATA/.clean``).

``--fsync always`` is the engine's own mode; the hub acknowledges each append
made on the loop after the engine's group commit covered it (``Hub.durable``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

from .settings import Settings

__all__ = ["serve", "serve_async", "raise_nofile_limit", "SHUTDOWN_GRACE_S"]

log = logging.getLogger("umlog.server")

SHUTDOWN_GRACE_S = 5.0


def raise_nofile_limit() -> int:
    """Raise this process's open-file limit to its hard limit (every partition
    holds descriptors, every connection one); returns the soft limit now, -1 if unknown."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        return soft
    except (ImportError, ValueError, OSError):
        return -1


async def serve_async(settings: Settings, stop: asyncio.Event | None = None, out: Any = None,
                      own_process: bool = False) -> None:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT when running in the main thread).

    ``own_process``: the server is the whole process (``umlog serve``), so it
    may tune the cyclic garbage collector for itself (``tune_gc``).
    """
    import umlog

    from .door import door_classes
    from .hub import Hub, default_max_connections
    from .shares import share_settings

    out = out if out is not None else sys.stdout
    loop = asyncio.get_running_loop()
    stop = stop if stop is not None else asyncio.Event()
    server = settings.table("server")
    from .tiered import tiered_options

    broker = umlog.open(server["data_dir"], fsync=server["fsync"], cleaner_interval_ms=server["cleaner_interval_ms"],
                        tiered=tiered_options(settings))
    hub = None
    security = None
    doors: list = []
    webhooks = None
    router = None
    mirrors: list = []
    try:
        if "security" in settings.given:  # the table's presence switches it on (README: Security)
            from .security import Security
            from .security.settings import check_security

            check_security(settings.table("security"))
            security = Security(broker, settings.table("security"))
        max_conn = server["max_connections"]
        hub = Hub(broker, max_connections=max_conn if max_conn is not None else default_max_connections(),
                  idle_timeout_ms=server["idle_timeout_ms"],
                  group_initial_rebalance_delay_ms=server["group_initial_rebalance_delay_ms"],
                  topic_defaults=settings.topic_defaults,
                  offsets_retention_minutes=server["offsets_retention_minutes"],
                  offsets_retention_check_interval_ms=server["offsets_retention_check_interval_ms"],
                  share_settings=share_settings(server), security=security)
        hub.bind(loop)
        hub.start_offsets_expiry()
        hub.start_security()
        bound = []
        hub.doors = doors
        for cls in door_classes():
            options = settings.table(cls.name)
            if not cls.enabled(options):
                continue
            door = cls(hub, options)
            address = await door.start()
            doors.append(door)
            # a door with several listeners (MQTT and MQTT over WebSocket) names each
            addresses = address if isinstance(address, dict) else {cls.name: address}
            bound += [f"{name}={a}" for name, a in addresses.items()]
        if not doors:
            raise ValueError("every door is off: give at least one listen address")
        from umlog.delivery.webhook import Webhooks

        from .webhooks import webhook_configs

        webhooks = Webhooks(broker, webhook_configs(settings), create_topic=hub.create_topic)
        hub.webhooks = webhooks
        await webhooks.start()
        from umlog.delivery.route import Router

        from .routes import route_specs

        routes = route_specs(settings)
        if routes:
            router = Router(broker, routes, create_topic=hub.create_topic,
                            source_partitions=settings.table("kafka").get("default_partitions") or 1)
            await asyncio.to_thread(router.start)  # opens every source partition's checkpoint
        from .mirrors import start_mirrors, stop_mirrors

        mirrors = start_mirrors(settings)  # [[mirror]]: a thread each (umlog/mirror.py)
        installed = []
        for sig, fn in ((signal.SIGTERM, stop.set), (signal.SIGINT, stop.set), (signal.SIGHUP, hub.tls.reload)):
            try:
                loop.add_signal_handler(sig, fn)
                installed.append(sig)
            except (RuntimeError, ValueError, NotImplementedError, AttributeError):  # not the main thread
                pass
        if own_process:
            tune_gc()
        print("umlog ready " + " ".join(bound), file=out, flush=True)
        log.info("serving %s (fsync=%s) with %s; max %s connections, idle timeout %d ms",
                 server["data_dir"], server["fsync"], ", ".join(bound),
                 hub.max_connections or "unlimited", hub.idle_timeout_ms)
        try:
            await stop.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            log.info("shutting down")
            await webhooks.stop(SHUTDOWN_GRACE_S)
            await hub.drain(doors, SHUTDOWN_GRACE_S)
    finally:
        if webhooks is not None and not webhooks.stopped:
            await webhooks.stop(0)
        if router is not None:
            await asyncio.to_thread(router.stop)  # checkpoints every route
        if mirrors:
            await asyncio.to_thread(stop_mirrors, mirrors)
        for door in doors:  # a door that failed to start leaves the others to close
            await door.close()
        if hub is not None:
            hub.close()
        broker.close()
        log.info("closed %s", server["data_dir"])


def tune_gc() -> None:
    """Keep the cyclic GC off what start-up made: every module, class and
    setting lives as long as the process, yet each full collection walked them
    all, about a third of the MQTT door's CPU under a steady stream
    (``perf``). ``gc.freeze`` moves them out of the collected generations; the
    youngest generation is collected every 10,000 allocations instead of 700,
    so a burst of messages sets off fewer passes. Cycles made from now on are
    collected as before."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def serve(settings: Settings) -> int:
    """Run ``serve_async`` on a fresh loop (uvloop when installed); the process exit code."""
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover - optional
        uvloop = None
    from umlog.errors import DataDirError, DataDirLockedError

    raise_nofile_limit()
    try:
        if uvloop is not None:
            uvloop.run(serve_async(settings, own_process=True))
        else:
            asyncio.run(serve_async(settings, own_process=True))
    except (DataDirLockedError, DataDirError) as e:
        log.error("%s", e)
        return 1
    except (OSError, ValueError) as e:
        log.error("cannot serve: %s", e)
        return 1
    return 0

"""``umlog serve``: open the data dir, run the doors on one asyncio loop, stop cleanly.

Lifecycle: open the broker (one writer process per data dir) -> listen -> print
``umlog ready kafka=HOST:PORT`` on stdout (the port actually bound, so
``--kafka 127.0.0.1:0`` works for tests) -> serve until SIGTERM/SIGINT -> stop
accepting, let in-flight requests finish (long polls are woken and answer at
once; at most ``SHUTDOWN_GRACE_S``), close the connections, close the broker
(flush, fsync, write ``DATA/.clean``).

``--fsync always`` is implemented by the door's group commit
(``kafka.door.GroupCommit``): the engine is opened with ``fsync="never"`` so an
append does not fdatasync on the event loop, and each produce is acknowledged
after a ``broker.sync()`` (in an executor thread) that started after its
append. ``interval`` and ``never`` are the engine's own modes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import sys
import time

__all__ = ["ServeConfig", "serve", "serve_async", "parse_hostport", "raise_nofile_limit"]

log = logging.getLogger("umlog.server")

SHUTDOWN_GRACE_S = 5.0


def parse_hostport(value: str, default_port: int = 9092) -> tuple[str, int]:
    """``HOST:PORT``, ``HOST``, ``:PORT`` or ``[v6]:PORT`` -> (host, port)."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, port = value.split(":")
    elif ":" in value:  # bare IPv6 address
        host, port = value, ""
    else:
        host, port = value, ""
    if not port:
        return host or "127.0.0.1", default_port
    p = int(port)
    if not 0 <= p <= 65535:
        raise ValueError(f"port {p} is out of range")
    return host or "127.0.0.1", p


@dataclasses.dataclass
class ServeConfig:
    data_dir: str = "./umlog-data"
    kafka: str = "127.0.0.1:9092"
    advertise: str | None = None
    fsync: str = "never"
    auto_create: bool = True
    default_partitions: int = 1
    max_request_size: int = 100 * 1024 * 1024
    group_initial_rebalance_delay_ms: int = 3000
    max_connections: int | None = None  # None: half the file descriptors left after opening the data dir
    idle_timeout_ms: int = 600_000  # Kafka's connections.max.idle.ms; 0: never
    fetch_max_bytes: int = 55 * 1024 * 1024  # Kafka's broker fetch.max.bytes


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


def default_max_connections() -> int | None:
    """Half the descriptors not yet open (the other half is for partitions)."""
    try:
        import os
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            return None
        return max(64, (soft - len(os.listdir("/proc/self/fd"))) // 2)
    except (ImportError, ValueError, OSError):
        return None


async def serve_async(cfg: ServeConfig, stop: asyncio.Event | None = None, out=None) -> None:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT when running in the main thread)."""
    import umlog

    from .kafka import KafkaDoor, start_kafka

    out = out if out is not None else sys.stdout
    loop = asyncio.get_running_loop()
    stop = stop if stop is not None else asyncio.Event()
    host, port = parse_hostport(cfg.kafka)
    engine_fsync = "never" if cfg.fsync == "always" else cfg.fsync
    broker = umlog.open(cfg.data_dir, fsync=engine_fsync)
    try:
        door = KafkaDoor(broker, auto_create=cfg.auto_create, default_partitions=cfg.default_partitions,
                         fsync=cfg.fsync, max_request_size=cfg.max_request_size,
                         group_initial_rebalance_delay_ms=cfg.group_initial_rebalance_delay_ms,
                         max_connections=cfg.max_connections if cfg.max_connections is not None
                         else default_max_connections(),
                         idle_timeout_ms=cfg.idle_timeout_ms, fetch_max_bytes=cfg.fetch_max_bytes)
        server = await start_kafka(door, host, port)
        bound = server.sockets[0].getsockname()
        bound_host, bound_port = bound[0], bound[1]
        if cfg.advertise:
            door.advertise_host, door.advertise_port = parse_hostport(cfg.advertise, bound_port)
        else:
            door.advertise_host = bound_host if bound_host not in ("0.0.0.0", "::") else "127.0.0.1"
            door.advertise_port = bound_port
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
            except (RuntimeError, ValueError, NotImplementedError):  # not the main thread
                pass
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        print(f"umlog ready kafka={shown}:{bound_port}", file=out, flush=True)
        log.info("serving %s (fsync=%s), advertising %s:%d; max %s connections, idle timeout %d ms",
                 cfg.data_dir, cfg.fsync, door.advertise_host, door.advertise_port,
                 door.max_connections or "unlimited", door.idle_timeout_ms)
        try:
            await stop.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            log.info("shutting down")
            server.close()
            door.shutting_down = True
            door.wake_all()
            deadline = time.monotonic() + SHUTDOWN_GRACE_S
            while time.monotonic() < deadline and any(not c.idle for c in list(door.connections)):
                await asyncio.sleep(0.01)
            for c in list(door.connections):
                c.close()
            await asyncio.sleep(0)
    finally:
        broker.close()
        log.info("closed %s", cfg.data_dir)


def serve(cfg: ServeConfig) -> int:
    """Run ``serve_async`` on a fresh loop (uvloop when installed); the process exit code."""
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover - optional
        uvloop = None
    from umlog.errors import DataDirError, DataDirLockedError

    raise_nofile_limit()
    try:
        if uvloop is not None:
            uvloop.run(serve_async(cfg))
        else:
            asyncio.run(serve_async(cfg))
    except (DataDirLockedError, DataDirError) as e:
        log.error("%s", e)
        return 1
    except OSError as e:
        log.error("cannot serve: %s", e)
        return 1
    return 0

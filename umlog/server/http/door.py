"""The HTTP door: REST, live streams, metrics and health over one aiohttp server.

Theory of operation
-------------------
One ``aiohttp.web.Application`` runs on the server's loop, beside the other
doors. Its routes come from three modules, each a thin layer over the hub and
the engine:

* ``rest``: Confluent's REST Proxy API v2 (topics, produce, consumer
  instances). Produce appends on the loop's thread and answers after the hub's
  durability gate (``hub.durable``), so an answered record is as durable as a
  record a Kafka producer had acknowledged. Consumer instances keep their
  positions in memory and commit to the same group offsets as every other door
  (``broker.offsets``).
* ``stream``: ``/topics/{t}/events`` (Server-Sent Events) and
  ``/topics/{t}/ws`` (WebSocket), woken by the hub's append waiters; a client
  whose unsent bytes pass ``stream_buffer_bytes`` is dropped.
* ``metrics``: ``/metrics`` in Prometheus' text format, read from the engine at
  scrape time by a custom collector (nothing is counted per record).
* ``api`` and ``console``: the JSON API under ``/api/`` and the web console
  at ``/`` (static files shipped in the package, served from memory).

``/healthz`` answers while the process runs; ``/readyz`` when every started
door listens and the data dir takes a write.

Connections are the hub's like any door's: a thin protocol wrapper around
aiohttp's admits each one (``hub.admit``: the server-wide connection limit),
forgets it when it closes, and marks it busy while a request (or a stream) is
being served, so the hub's idle sweep closes only idle keep-alive
connections. Every error a client can cause is answered as JSON
``{"error_code", "message"}`` with its status (REST Proxy's shape); an
exception in a handler is logged and answered 500, never fatal to the server.

``listen`` is one address or a list of ``http://`` and ``https://`` ones
(TLS: ``tls_cert``/``tls_key``, mTLS: ``tls_client_ca``). With security on
(``hub.security``) every request but ``/healthz`` and ``/readyz`` is
authenticated and authorized first (``auth``: 401/403).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any

from ..door import Door
from .settings import DEFAULT_HTTP_LISTEN, HTTP_SETTINGS

__all__ = ["HttpDoor", "RestError", "json_response"]

log = logging.getLogger("umlog.server.http")

JSON = "application/json"


class RestError(Exception):
    """An error answered as ``{"error_code": code, "message": message}`` with ``status``."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def json_response(body: Any, status: int = 200, content_type: str = JSON):
    from aiohttp import web

    return web.Response(body=json.dumps(body, separators=(",", ":")).encode(), status=status,
                        content_type=content_type)


def error_response(status: int, code: int, message: str, content_type: str = JSON):
    return json_response({"error_code": code, "message": message}, status, content_type)


class _Conn:
    """One HTTP connection as the hub counts it (see ``umlog/server/hub.py``)."""

    __slots__ = ("door", "peer", "transport", "busy", "last_active", "__weakref__")

    def __init__(self, door: HttpDoor, transport) -> None:
        self.door = door
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.busy = 0
        self.last_active = asyncio.get_running_loop().time()

    @property
    def idle(self) -> bool:
        return self.busy == 0

    def close_idle(self, seconds: float) -> None:
        log.info("http %s: closed after %.0f s idle", self.peer, seconds)
        self.transport.close()

    def close(self) -> None:
        self.transport.close()


class _Tracked(asyncio.Protocol):
    """aiohttp's request handler behind hub admission (every call is passed on)."""

    def __init__(self, door: HttpDoor, inner) -> None:
        self.door = door
        self.inner = inner
        self.conn: _Conn | None = None

    def connection_made(self, transport) -> None:
        conn = _Conn(self.door, transport)
        if self.door.hub.shutting_down or not self.door.hub.admit(conn):
            transport.abort()
            return
        self.conn = conn
        self.door.conns[transport] = conn
        self.inner.connection_made(transport)

    def connection_lost(self, exc) -> None:
        if self.conn is None:
            return
        self.door.hub.forget(self.conn)
        self.door.conns.pop(self.conn.transport, None)
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.conn is not None:
            self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received() if self.conn is not None else None

    def pause_writing(self) -> None:
        if self.conn is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.conn is not None:
            self.inner.resume_writing()


class HttpDoor(Door):
    """REST Proxy v2, SSE/WebSocket, Prometheus metrics and health (module docstring)."""

    name = "http"
    settings = HTTP_SETTINGS

    def __init__(self, hub: Any, options: dict[str, Any]) -> None:
        super().__init__(hub, options)
        self.broker = hub.broker
        self.max_body = options.get("max_body_bytes") or 16 * 1024 * 1024
        self.stream_buffer = options.get("stream_buffer_bytes") or 4 * 1024 * 1024
        self.heartbeat_s = (options.get("heartbeat_ms") or 15_000) / 1000
        self.instance_timeout_s = (options.get("consumer_instance_timeout_ms") or 300_000) / 1000
        self.conns: dict[Any, _Conn] = {}  # transport -> its connection
        self.streams: set[asyncio.Task] = set()  # SSE and WebSocket handlers running
        self.address = ""
        self._runner = None
        self._server: asyncio.base_events.Server | None = None
        self._servers: list = []
        self.rest = None
        self.api = None
        self.metrics = None

    # --- the Door interface ---------------------------------------------------------------

    async def start(self) -> str:
        from aiohttp import web

        from . import console, stream
        from .api import Api
        from .metrics import Metrics
        from .rest import Rest

        loop = asyncio.get_running_loop()
        self.hub.bind(loop)
        _quiet_bad_requests()
        self.metrics = Metrics(self)
        app = web.Application(middlewares=[self._middleware], client_max_size=self.max_body,
                              handler_args={"max_field_size": 65536})
        app.router.add_get("/", self._index)
        console.add_routes(app)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self.metrics.handle)
        stream.add_routes(app, self)
        self.rest = Rest(self)
        self.rest.add_routes(app)
        self.api = Api(self)
        self.api.add_routes(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        factory = self._runner.server
        from ..security.settings import HTTP_SCHEMES, parse_listeners

        bound: dict[str, str] = {}
        for i, spec in enumerate(parse_listeners(self.options.get("listen") or DEFAULT_HTTP_LISTEN, HTTP_SCHEMES,
                                                 8080)):
            ctx = self.hub.tls.server(self.options.get("tls_cert"), self.options.get("tls_key"),
                                      self.options.get("tls_client_ca"),
                                      f"[http] listen {spec.scheme}://{spec.host}:{spec.port}") if spec.tls else None
            server = await loop.create_server(lambda: _Tracked(self, factory()), spec.host, spec.port,
                                              reuse_address=True, ssl=ctx)
            self._servers.append(server)
            h, p = server.sockets[0].getsockname()[:2]
            address = f"[{h}]:{p}" if ":" in h else f"{h}:{p}"
            if i == 0:
                self._server, self.address = server, address
            name = "http" if i == 0 else f"http-{spec.scheme}"
            n = 2
            while name in bound:
                name, n = f"http-{spec.scheme}-{n}", n + 1
            bound[name] = address
        self.rest.start()
        return bound if len(bound) > 1 else self.address

    async def drain(self) -> None:
        for s in self._servers:
            s.close()
        for t in list(self.streams):  # streams never end on their own
            t.cancel()
        if self.rest is not None:
            self.rest.stop()
        if self.api is not None:
            self.api.stop()

    async def close(self) -> None:
        for s in self._servers:
            s.close()
        self._servers = []
        self._server = None
        if self.rest is not None:
            self.rest.stop()
        if self.api is not None:
            self.api.stop()
        for t in list(self.streams):
            t.cancel()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            try:
                await runner.cleanup()
            except Exception:  # closing: nothing left to answer
                log.debug("http: cleanup failed", exc_info=True)

    # --- every request ---------------------------------------------------------------------

    def _conn_of(self, request) -> _Conn | None:
        return self.conns.get(request.transport)

    async def _middleware_impl(self, request, handler):
        from aiohttp import web

        conn = self._conn_of(request)
        loop = asyncio.get_running_loop()
        if conn is not None:
            conn.busy += 1
            conn.last_active = loop.time()
        t0 = time.perf_counter()
        try:
            if self.hub.security is not None:
                from .auth import check, filter_listing

                refused = await check(self, request)
                if refused is not None:
                    return refused
                return filter_listing(self, request, await handler(request))
            return await handler(request)
        except RestError as e:
            return error_response(e.status, e.code, e.message)
        except web.HTTPRequestEntityTooLarge:
            return error_response(413, 413, f"request body is larger than {self.max_body} bytes")
        except web.HTTPException as e:
            if e.status < 400:
                raise
            return error_response(e.status, e.status, e.reason or str(e.status))
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as e:
            log.exception("http %s %s failed", request.method, request.path)
            return error_response(500, 50002, f"internal error: {type(e).__name__}: {e}")
        finally:
            if conn is not None:
                conn.busy -= 1
                conn.last_active = loop.time()
            if self.metrics is not None:
                self.metrics.observe_request(request, time.perf_counter() - t0)

    @property
    def _middleware(self):
        from aiohttp import web

        @web.middleware
        async def middleware(request, handler):
            return await self._middleware_impl(request, handler)

        return middleware

    # --- index and health ------------------------------------------------------------------

    async def _index(self, request):
        """The web console for a browser (it asks for text/html), this list for anyone else."""
        if "text/html" in request.headers.get("Accept", ""):
            from .console import page

            return page("index.html")
        return json_response({"umlog": "http", "endpoints": ENDPOINTS})

    async def _healthz(self, request):
        return json_response({"status": "ok"})

    async def _readyz(self, request):
        problems = []
        if self.hub.shutting_down:
            problems.append("shutting down")
        for d in self.hub.doors:
            if not d.listening():
                problems.append(f"door {d.name} is not listening")
        try:
            await asyncio.to_thread(_probe_write, self.broker.path)
        except OSError as e:
            problems.append(f"data dir is not writable: {e.strerror or e}")
        if problems:
            return json_response({"status": "not ready", "problems": problems}, 503)
        return json_response({"status": "ready", "doors": [d.name for d in self.hub.doors]})


class _BadRequestLines(logging.Filter):
    """aiohttp logs a request it cannot parse at ERROR with a traceback; that is the
    client's doing: one line at INFO instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            log.info("http: bad request refused (%s): %s", exc.code, str(exc).splitlines()[0][:200])
            return False
        return True


def _quiet_bad_requests() -> None:
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _BadRequestLines) for f in logger.filters):
        logger.addFilter(_BadRequestLines())


def _probe_write(path: str) -> None:
    name = os.path.join(path, "meta", f".readyz-{os.getpid()}")
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"ok")
    finally:
        os.close(fd)
        os.unlink(name)


ENDPOINTS = [
    "GET /topics", "GET /topics/{topic}", "GET /topics/{topic}/partitions",
    "GET /topics/{topic}/partitions/{partition}", "GET /topics/{topic}/partitions/{partition}/offsets",
    "POST /topics/{topic}", "POST /topics/{topic}/partitions/{partition}",
    "POST /consumers/{group}", "DELETE /consumers/{group}/instances/{instance}",
    "POST|GET|DELETE /consumers/{group}/instances/{instance}/subscription",
    "POST|GET /consumers/{group}/instances/{instance}/assignments",
    "POST /consumers/{group}/instances/{instance}/positions[/beginning|/end]",
    "GET /consumers/{group}/instances/{instance}/records",
    "POST|GET /consumers/{group}/instances/{instance}/offsets",
    "GET /topics/{topic}/events (Server-Sent Events)", "GET /topics/{topic}/ws (WebSocket)",
    "GET /metrics", "GET /healthz", "GET /readyz",
    "GET|POST /api/topics", "GET|PATCH|DELETE /api/topics/{topic}", "GET|POST /api/topics/{topic}/messages",
    "GET /api/topics/{topic}/search", "GET /api/groups[/{group}]", "POST /api/groups/{group}/reset",
    "GET /api/share-groups[/{group}]", "GET /api/dead-letters[/{topic}]", "POST /api/dead-letters/{topic}/redrive",
    "GET /api/webhooks", "GET /api/mqtt/sessions", "GET /api/throughput", "GET /api/overview",
    "GET / (the web console, for a browser)",
]

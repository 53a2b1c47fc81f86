"""A real HTTP receiver for the webhook tests: aiohttp on loopback port 0 that
checks every request's Standard Webhooks signature with ``standardwebhooks``
and answers as the test's ``policy`` says."""

from __future__ import annotations

import asyncio
import threading
import time

from aiohttp import web
from standardwebhooks import Webhook as Verifier

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

# a policy answers a Delivery with (status, headers) or "stall" (never answers: a timeout)
OK = (204, {})


class Delivery:
    __slots__ = ("id", "body", "headers", "at", "attempt", "status")

    def __init__(self, id_, body, headers, at, attempt):
        self.id, self.body, self.headers, self.at, self.attempt = id_, body, headers, at, attempt
        self.status = None

    @property
    def key(self):
        return self.headers.get("umlog-key")

    @property
    def offset(self) -> int:
        return int(self.id.rsplit("/", 1)[1])


class Receiver:
    """``await r.start()`` on a loop (or ``ThreadedReceiver`` from sync code);
    ``r.url``; ``r.deliveries`` (every request, in arrival order), ``r.ok_ids()``
    (ids answered 2xx, with repeats), ``r.errors`` (signature failures: must stay empty)."""

    def __init__(self, policy=None, secret=SECRET, work_s: float = 0.0) -> None:
        self.policy = policy or (lambda d: OK)
        self.work_s = work_s  # each answer takes this long (the scenario: an endpoint that works)
        self.verifier = Verifier(secret)
        self.deliveries: list[Delivery] = []
        self.errors: list[str] = []
        self.attempts: dict[str, int] = {}
        self.in_flight: dict = {}  # key -> requests of that key being answered now
        self.max_in_flight = 0
        self.max_per_key = 0
        self._now_in_flight = 0
        self.lock = threading.Lock()

    async def start(self) -> None:
        self._never = asyncio.Event()
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"

    async def close(self) -> None:
        self._never.set()
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            self.verifier.verify(body, headers, json_parse=False)
        except Exception as e:  # any failure to verify is the test's failure
            self.errors.append(f"{headers.get('webhook-id')}: {type(e).__name__}: {e}")
        with self.lock:
            n = self.attempts[headers.get("webhook-id")] = self.attempts.get(headers.get("webhook-id"), 0) + 1
            d = Delivery(headers.get("webhook-id"), body, headers, time.monotonic(), n)
            self.deliveries.append(d)
            k = d.key
            self.in_flight[k] = self.in_flight.get(k, 0) + 1
            self.max_per_key = max(self.max_per_key, self.in_flight[k]) if k is not None else self.max_per_key
            self._now_in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._now_in_flight)
        try:
            answer = self.policy(d)
            if self.work_s:
                await asyncio.sleep(self.work_s)
            if answer == "stall":
                await self._never.wait()
                answer = OK
            status, extra = answer
            d.status = status
            return web.Response(status=status, headers=extra)
        finally:
            with self.lock:
                self.in_flight[k] -= 1
                self._now_in_flight -= 1

    def ok_ids(self) -> list[str]:
        with self.lock:
            return [d.id for d in self.deliveries if d.status is not None and 200 <= d.status < 300]


class ThreadedReceiver(Receiver):
    """A Receiver on a loop of its own thread, for tests that are not on a loop."""

    def __enter__(self) -> ThreadedReceiver:
        self.loop = asyncio.new_event_loop()
        self._t = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._t.start()
        asyncio.run_coroutine_threadsafe(self.start(), self.loop).result(30)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._t.join(30)
        self.loop.close()

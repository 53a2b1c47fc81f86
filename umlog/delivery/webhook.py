"""Webhooks: push a topic to an HTTP endpoint, one signed POST per record, over a share group.

Theory of operation
-------------------
A webhook (``WebhookConfig``) is one share group, ``webhook.<name>``, over its
topic (created if missing). ``Webhook`` runs it on an asyncio loop: a pump
task acquires records and hands each to a delivery task, which POSTs the
record's value with aiohttp and settles it by the answer:

* 2xx: ``ack``; acks are gathered and written as one ``ack`` call right
  before the pump's next ``acquire``, or ``ACK_LINGER_S`` (5 ms) after the
  first of them, whichever is first (a crash in between delivers them again,
  as any unacked record);
* a timeout, a connection error, 408, 429 or 5xx: a retry after
  ``Retry-After`` (seconds or an HTTP date) when the answer has one, else
  after the exponential backoff ``min(max, min * 2**(n-1))`` with equal
  jitter (half fixed, half random), n the attempt number;
* anything else (other 4xx, 3xx: redirects are not followed, 1xx): ``reject``
  at once, the reason naming the status (``HTTP 400 Bad Request``);
* a retryable failure of attempt ``max_attempts`` is rejected too, its reason
  naming the last error and the attempt. Rejected records go to the
  dead-letter topic (``dead_letter``, default ``webhook.<name>.dlq``) with the
  share group's Spring Kafka DLT headers.

Blocking engine calls: the share-group calls are made on the loop, always
short: ``acquire(n, timeout=0)`` never waits (it reads what is there from the
page cache and writes the window), and ``ack``/``release``/``reject`` are one
state append. The pump waits on an ``asyncio.Event`` instead of inside
``acquire``: the engine's append listener sets it (directly on the loop's
thread, through ``call_soon_threadsafe`` once per wake-up from any other
thread) when the webhook's topic grows, a finished delivery sets it when
there is room for a batch, and a timer covers retries that come due
(``release`` delays) with a one-second ceiling for whatever else (a lock that
expired, a new partition).
No executor thread: at thousands of deliveries a second the hand-offs would
cost more than the calls.

Ordering:

* ``"none"``: at most ``concurrency`` POSTs in flight, and up to twice as
  many records held: the pump acquires ``concurrency`` records at a time
  once that much room is free, so each acquire and each ack is one state
  write per ``concurrency`` deliveries. Up to ``concurrency`` worker tasks
  send the acquired records one after another: a worker that finishes one
  takes the next at once, with no task or semaphore wait per record. A
  retry is a
  ``release(delay_ms=...)`` to the share group: the record leaves the process
  and comes back through ``acquire`` when due, its delivery count raised by
  the share group; ``max_attempts`` is that delivery count.
* ``"key"``: records of one key (and partition) are delivered one at a time
  in offset order. The webhook keeps a queue per key; a record acquired while
  an earlier one of its key is unsettled waits in it, holding its lock. A
  failed record is retried *in the process*, holding its lock (a release
  would let a later record of its key overtake it): the attempt number is
  the share group's delivery count plus the failed attempts of this
  acquisition. The group's ``lock_ms`` is made longer than every retry of a
  record could take, so a held lock never expires in a live process. After a
  crash (or a stop) every unsettled record is available again at once with
  its delivery count raised, and ``acquire`` hands them out in offset order,
  so order holds across restarts too; a restart counts as one attempt for the
  records it interrupted. Keyless records are not ordered. At most
  ``concurrency`` POSTs are in flight, and at most ``8 * concurrency + 64``
  records are held (in flight or waiting behind their key).

Stopping (SIGTERM): the pump stops acquiring; deliveries in flight get the
grace period to finish and settle; whatever is still unsettled after it is
left as is (as after a crash: available again on the next start, nothing
acked twice, nothing lost).

The request: ``POST url`` with the value as body (empty for a null value) and
the Standard Webhooks headers: ``webhook-id`` (``topic/partition/offset``,
the same on every retry), ``webhook-timestamp`` (epoch seconds of this
attempt) and ``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 of
``{id}.{timestamp}.{body}``). The key of the HMAC: a secret of the form
``whsec_<base64>`` is the base64-decoded bytes (as the standard says); any
other secret is its UTF-8 bytes (a receiver passes those bytes, not the
string, to its library). Also: ``content-type`` from the record's
``content-type`` header, else ``application/octet-stream``; ``umlog-key``
(the key), ``umlog-header-<name>`` (each record header), ``umlog-topic``,
``umlog-partition``, ``umlog-offset``, ``umlog-timestamp`` (ms) and
``umlog-delivery-count``. A key or header value that is not printable ASCII is
sent base64-encoded under the same name with ``-b64`` appended
(``umlog-key-b64``); header-name characters that HTTP does not allow in a
name are percent-encoded.

Management (``Webhooks``, the service ``umlog serve`` runs): webhooks come
from the config file (``[[webhook]]``) and from ``DATA/meta/webhooks.json``
(``umlog webhooks add|remove``, replaced atomically). The service looks at
that file's modification time every second and starts, stops or restarts
webhooks to match it; a name in both places is the config file's. Every
second in which something changed it writes ``DATA/meta/webhooks-status.json``
(atomically): per webhook its source, topic and URL, delivered (acked),
retried and dead-lettered counts (carried over from the previous file at
start, so they count across restarts; a crash loses at most the last
second), in flight, the last error and when, the last success. A removed
webhook's share group keeps its state: adding the name again resumes it.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import email.utils
import errno
import fcntl
import hashlib
import hmac
import logging
import os
import random
import re
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Any

from ..log.files import atomic_write_json, read_json

__all__ = ["WebhookConfig", "Webhook", "Webhooks", "DEFAULTS", "FILE_NAME", "STATUS_FILE_NAME", "secret_key", "sign",
           "retry_after_ms", "read_file", "update_file", "read_status", "group_name", "new_secret"]

log = logging.getLogger("umlog.delivery.webhook")

FILE_NAME = "webhooks.json"
STATUS_FILE_NAME = "webhooks-status.json"
GROUP_PREFIX = "webhook."
POLL_S = 1.0
ACK_LINGER_S = 0.005  # the longest an ack waits to be written with others (the pump writes them sooner)
RETRY_AFTER_MAX_MS = 24 * 3600 * 1000  # a Retry-After further away than a day is taken as a day

DEFAULTS: dict[str, Any] = {
    "max_attempts": 8,
    "backoff_ms": (1_000, 600_000),
    "dead_letter": None,
    # One request at a time per connection (HTTP/1.1, no pipelining): a webhook
    # delivers at most concurrency / round trip per second. 8 held a 2 ms
    # loopback round trip near 4,000/s and a 20 ms one over the internet to
    # 400/s; 32 is also what CockroachDB's changefeed webhook sink sends at once
    # by default. An endpoint that cannot take as many answers 429 or 503
    # (with Retry-After), and those records are retried later.
    "concurrency": 32,
    "ordering": "none",
    "timeout_ms": 10_000,
    "start": "latest",
}
ORDERINGS = ("none", "key")
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
_TOKEN = re.compile(r"[^A-Za-z0-9!#$&'*+.^_`|~-]")


def group_name(name: str) -> str:
    return GROUP_PREFIX + name


def new_secret() -> str:
    """A fresh ``whsec_`` secret (24 random bytes)."""
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of ``secret``: ``whsec_<base64>`` decoded, else its UTF-8 bytes."""
    if not isinstance(secret, str) or not secret:
        raise ValueError("secret must be a non-empty string")
    if secret.startswith("whsec_"):
        try:
            key = base64.b64decode(secret[6:] + "==", validate=False)
        except ValueError as e:
            raise ValueError(f"secret whsec_...: not base64 ({e})") from None
        if not key:
            raise ValueError("secret whsec_... holds no bytes")
        return key
    return secret.encode()


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def retry_after_ms(value: str | None, now: float | None = None) -> int | None:
    """``Retry-After`` as ms from now (seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(int(value) * 1000, RETRY_AFTER_MAX_MS)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0, min(int((when.timestamp() - now) * 1000), RETRY_AFTER_MAX_MS))


@dataclasses.dataclass(frozen=True)
class WebhookConfig:
    """One webhook (see the module docstring and README's Webhooks section)."""

    name: str
    topic: str
    url: str
    secret: str
    max_attempts: int = DEFAULTS["max_attempts"]
    backoff_ms: tuple[int, int] = DEFAULTS["backoff_ms"]
    dead_letter: str | None = DEFAULTS["dead_letter"]
    concurrency: int = DEFAULTS["concurrency"]
    ordering: str = DEFAULTS["ordering"]
    timeout_ms: int = DEFAULTS["timeout_ms"]
    start: str = DEFAULTS["start"]
    source: str = "api"  # "config" (umlog.toml), "cli" (DATA/meta/webhooks.json) or "api"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"webhook name must be 1-200 of A-Z a-z 0-9 . _ -, not {self.name!r}")
        if not isinstance(self.topic, str) or not self.topic:
            raise ValueError(f"webhook {self.name}: topic must be a topic name, not {self.topic!r}")
        if not isinstance(self.url, str) or not re.match(r"^https?://[^/\s]+", self.url):
            raise ValueError(f"webhook {self.name}: url must be an http:// or https:// URL, not {self.url!r}")
        secret_key(self.secret)
        for what, v, low in (("max_attempts", self.max_attempts, 1), ("concurrency", self.concurrency, 1),
                             ("timeout_ms", self.timeout_ms, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"webhook {self.name}: {what} must be an integer >= {low}, not {v!r}")
        lo, hi = self.backoff_ms
        if not 0 <= lo <= hi:
            raise ValueError(f"webhook {self.name}: backoff_ms must be [min, max] with 0 <= min <= max")
        object.__setattr__(self, "backoff_ms", (int(lo), int(hi)))
        if self.ordering not in ORDERINGS:
            raise ValueError(f"webhook {self.name}: ordering must be key or none, not {self.ordering!r}")
        if self.start not in ("latest", "earliest"):
            raise ValueError(f"webhook {self.name}: start must be latest or earliest, not {self.start!r}")

    @classmethod
    def from_dict(cls, d: dict, source: str = "api") -> WebhookConfig:
        known = {f.name for f in dataclasses.fields(cls)} - {"source"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"webhook: unknown keys {', '.join(sorted(unknown))}")
        missing = {"name", "topic", "url", "secret"} - set(d)
        if missing:
            raise ValueError(f"webhook: missing {', '.join(sorted(missing))}")
        values = {k: v for k, v in d.items() if v is not None or k == "dead_letter"}
        if "backoff_ms" in values:
            values["backoff_ms"] = tuple(values["backoff_ms"])
        return cls(**values, source=source)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source")
        d["backoff_ms"] = list(self.backoff_ms)
        return d

    @property
    def group(self) -> str:
        return group_name(self.name)

    @property
    def dead_letter_topic(self) -> str:
        return self.dead_letter or f"webhook.{self.name}.dlq"

    @property
    def lock_ms(self) -> int:
        """Longer than every attempt of one record could take (ordering "key" holds
        a record's lock through its retries), and a minute for the rest."""
        per_attempt = self.timeout_ms + self.backoff_ms[1] + 1_000
        return min(2**31 - 1, self.max_attempts * per_attempt + 60_000)


# -- the data dir's files ------------------------------------------------------------------


def _meta(data_dir: str, name: str) -> str:
    return os.path.join(data_dir, "meta", name)


@contextmanager
def _file_lock(data_dir: str):
    """Serialise read-modify-write of webhooks.json between CLI runs."""
    fd = os.open(_meta(data_dir, FILE_NAME + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_file(data_dir: str) -> list[dict]:
    """The webhooks added by the CLI (``DATA/meta/webhooks.json``), as stored."""
    try:
        data = read_json(_meta(data_dir, FILE_NAME))
    except FileNotFoundError:
        return []
    hooks = data.get("webhooks", []) if isinstance(data, dict) else []
    return [h for h in hooks if isinstance(h, dict)]


def update_file(data_dir: str, change) -> list[dict]:
    """Replace webhooks.json with ``change(entries)`` (a new list), atomically and
    under a lock; returns the new list. ``change`` may raise to leave it as is."""
    if not os.path.isfile(_meta(data_dir, "cluster.json")):
        raise FileNotFoundError(errno.ENOENT, "not a umlog data dir (no meta/cluster.json)", data_dir)
    with _file_lock(data_dir):
        entries = change(read_file(data_dir))
        atomic_write_json(_meta(data_dir, FILE_NAME), {"webhooks": entries})
    return entries


def read_status(data_dir: str) -> dict:
    """What the server last wrote to webhooks-status.json ({} if nothing)."""
    try:
        data = read_json(_meta(data_dir, STATUS_FILE_NAME))
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# -- one webhook -----------------------------------------------------------------------------


def _printable(b: bytes) -> bool:
    return all(0x20 <= c < 0x7F for c in b)


def _put(headers: dict, name: str, value: bytes | None) -> None:
    if value is None:
        value = b""
    value = bytes(value)
    if _printable(value):
        headers[name] = value.decode("ascii")
    else:
        headers[name + "-b64"] = base64.b64encode(value).decode()


def _header_name(name: str) -> str:
    return _TOKEN.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), name.lower())


class Stats:
    __slots__ = ("delivered", "retried", "dead_lettered", "last_error", "last_error_at_ms", "last_success_at_ms")

    def __init__(self, saved: dict | None = None) -> None:
        saved = saved or {}
        self.delivered = int(saved.get("delivered", 0))
        self.retried = int(saved.get("retried", 0))
        self.dead_lettered = int(saved.get("dead_lettered", 0))
        self.last_error = saved.get("last_error")
        self.last_error_at_ms = saved.get("last_error_at_ms")
        self.last_success_at_ms = saved.get("last_success_at_ms")

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}


class _Retry(Exception):
    def __init__(self, error: str, delay_ms: int | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.delay_ms = delay_ms


class _Reject(Exception):
    pass


class Webhook:
    """One webhook's pump and deliveries on the running loop (module docstring)."""

    def __init__(self, broker: Any, config: WebhookConfig, *, create_topic=None, stats: Stats | None = None,
                 rng: random.Random | None = None, session_factory=None) -> None:
        self.broker = broker
        self.config = config
        self.stats = stats or Stats()
        self._create_topic = create_topic or (lambda name, n: broker.create_topic(name, n))
        self._rng = rng or random.Random()
        self._session_factory = session_factory
        self._key = secret_key(config.secret)
        self._group = None
        self._session = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wake = asyncio.Event()
        self._wake_pending = False
        self._wake_lock = threading.Lock()
        self._stopping = False
        self._pump_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._sending = 0
        self._held = 0  # records acquired and not settled (in flight or waiting)
        self._keys: dict[tuple, deque] = {}
        self._ready: deque = deque()  # ordering "none": acquired, not yet sent
        self._workers = 0  # ordering "none": tasks sending them, at most concurrency
        self._sem = asyncio.Semaphore(config.concurrency)
        self._acks: list = []
        self._acks_timer: asyncio.TimerHandle | None = None
        self._url = None  # the parsed URL, once (aiohttp would parse the string per request)
        self._due: float | None = None  # loop time when a released record comes back
        self.idle_s = POLL_S  # the longest the pump waits without a wake-up
        self.changed = True  # stats changed since the status file was written

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def in_flight(self) -> int:
        return self._held

    # -- life ---------------------------------------------------------------------------------

    async def start(self) -> None:
        import aiohttp
        import yarl

        from ..errors import TopicExistsError, UnknownTopicError

        c = self.config
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        try:
            self.broker.topic(c.topic)
        except UnknownTopicError:
            try:
                self._create_topic(c.topic, 1)
            except TopicExistsError:
                pass
        self._group = self.broker.share_group(c.group, topics=[c.topic], max_attempts=c.max_attempts,
                                              lock_ms=c.lock_ms, backoff_ms=c.backoff_ms,
                                              dead_letter=c.dead_letter_topic, start=c.start)
        self._url = yarl.URL(c.url)
        if self._session_factory is not None:
            self._session = self._session_factory(c)
        else:
            # One session for the webhook's life: its connector keeps up to
            # ``concurrency`` keep-alive connections to the endpoint. No cookie
            # jar: a webhook sender has no cookies to keep, and the jar's
            # filtering costs a little on every request.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=c.concurrency, limit_per_host=c.concurrency),
                timeout=aiohttp.ClientTimeout(total=c.timeout_ms / 1000), auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar())
        self.broker.add_append_listener(self._on_append)
        self._pump_task = asyncio.get_running_loop().create_task(self._pump(), name=f"webhook {c.name}")
        log.info("webhook %s: %s -> %s (ordering %s, concurrency %d)", c.name, c.topic, c.url, c.ordering,
                 c.concurrency)

    async def stop(self, grace_s: float) -> None:
        """Stop acquiring; deliveries in flight get ``grace_s`` to settle; the rest
        stay unsettled (available again at the next start)."""
        self._stopping = True
        self.broker.remove_append_listener(self._on_append)
        self._wake.set()
        if self._pump_task is not None:
            await asyncio.gather(self._pump_task, return_exceptions=True)
        # Deliveries waiting (behind a key, or in a backoff) will not send again.
        for t in list(self._tasks):
            if getattr(t, "waiting", False):
                t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace_s)
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._flush_acks()
        if self._session is not None:
            await self._session.close()
        log.info("webhook %s stopped", self.name)

    # -- wake-ups -----------------------------------------------------------------------------

    def _on_append(self, p) -> None:
        # The engine's append listener: quick, never raising, any thread.
        if p.topic != self.config.topic:
            return
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
            return
        with self._wake_lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            self._loop.call_soon_threadsafe(self._wake_from_thread)
        except RuntimeError:  # the loop closed
            pass

    def _wake_from_thread(self) -> None:
        with self._wake_lock:
            self._wake_pending = False
        self._wake.set()

    # -- the pump ----------------------------------------------------------------------------

    def _room(self) -> int:
        c = self.config
        if c.ordering == "none":
            return 2 * c.concurrency - self._held
        if self._sending >= c.concurrency:
            return 0
        return min(c.concurrency * 8 + 64 - self._held, 500)

    def _batch(self) -> int:
        """The least room worth an acquire while deliveries are in flight: each
        acquire (and the ack before it) is a state write."""
        c = self.config
        return c.concurrency if c.ordering == "none" else max(1, c.concurrency // 4)

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            self._wake.clear()
            got = []
            room = self._room()
            if room > 0 and (self._held == 0 or room >= self._batch()):
                self._flush_acks()  # the acks gathered since the last acquire: one write
                try:
                    got = self._group.acquire(room, timeout=0)
                except Exception as e:  # a failing disk: say so, try again later
                    log.exception("webhook %s: acquire failed", self.name)
                    self._error(f"acquire failed: {e}")
                    got = []
            if got:
                for r in got:
                    self._held += 1
                    self._dispatch(r)
                await asyncio.sleep(0)
                continue
            timeout = self.idle_s
            if self._due is not None:
                timeout = min(timeout, max(0.0, self._due - loop.time()) + 0.005)
                if self._due <= loop.time():
                    self._due = None
            # A timer that sets the event: cheaper than wait_for (a task per wait).
            timer = loop.call_later(timeout, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()

    def _dispatch(self, r) -> None:
        if self.config.ordering == "key" and r.key is not None:
            k = (r.partition, bytes(r.key))
            q = self._keys.get(k)
            if q is not None:
                q.append(r)  # its key's task delivers it after the earlier ones
                return
            self._keys[k] = deque([r])
            self._spawn(self._deliver_key(k))
        elif self.config.ordering == "key":
            self._spawn(self._deliver_held(r))
        else:
            self._ready.append(r)
            if self._workers < self.config.concurrency:
                self._workers += 1
                self._spawn(self._deliver_ready())

    def _spawn(self, coro) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def _settled(self) -> None:
        self._held -= 1
        if self._held == 0 or self._room() >= self._batch():  # the pump would acquire: wake it
            self._wake.set()

    # -- deliveries ----------------------------------------------------------------------------

    async def _deliver_ready(self) -> None:
        """ordering "none": one of at most ``concurrency`` workers, each sending the
        acquired records one after another (no task, no semaphore wait per record)."""
        try:
            while self._ready and not self._stopping:
                await self._deliver_released(self._ready.popleft())
        finally:
            self._workers -= 1

    async def _deliver_released(self, r) -> None:
        """ordering "none": one attempt; a retry goes back to the share group."""
        try:
            await self._attempt(r)
        except _Retry as e:
            if r.delivery_count >= self.config.max_attempts:
                self._reject(r, f"{e.error} (attempt {r.delivery_count} of max_attempts {self.config.max_attempts})")
            else:
                delay = e.delay_ms if e.delay_ms is not None else self._backoff_ms(r.delivery_count)
                self._release(r, delay)
        except _Reject as e:
            self._reject(r, str(e))
        else:
            self._ack(r)
        finally:
            self._settled()

    async def _deliver_key(self, k: tuple) -> None:
        """ordering "key": the records of one key, in order, each until settled."""
        q = self._keys[k]
        try:
            while q and not self._stopping:
                await self._deliver_one_held(q[0])
                q.popleft()
                self._settled()
        finally:
            self._keys.pop(k, None)

    async def _deliver_held(self, r) -> None:
        try:
            await self._deliver_one_held(r)
        finally:
            self._settled()

    async def _deliver_one_held(self, r) -> None:
        """Attempts while holding the lock, retried in the process (module docstring)."""
        failed = 0
        task = asyncio.current_task()
        while True:
            try:
                await self._attempt(r)
            except _Retry as e:
                failed += 1
                n = r.delivery_count + failed - 1
                if n >= self.config.max_attempts:
                    self._reject(r, f"{e.error} (attempt {n} of max_attempts {self.config.max_attempts})")
                    return
                delay = e.delay_ms if e.delay_ms is not None else self._backoff_ms(n)
                self.stats.retried += 1
                if self._stopping:
                    return  # left unsettled: available again at the next start
                task.waiting = True
                try:
                    await asyncio.sleep(delay / 1000)
                finally:
                    task.waiting = False
                continue
            except _Reject as e:
                self._reject(r, str(e))
                return
            self._ack(r)
            return

    def _backoff_ms(self, n: int) -> int:
        lo, hi = self.config.backoff_ms
        d = min(hi, lo * (1 << min(max(n - 1, 0), 62)))
        return d // 2 + int(self._rng.random() * (d - d // 2))

    def headers(self, r, now: int | None = None) -> dict[str, str]:
        """The request headers of one attempt at ``r`` (module docstring)."""
        now = int(time.time()) if now is None else now
        msg_id = f"{r.topic}/{r.partition}/{r.offset}"
        body = b"" if r.value is None else bytes(r.value)
        h = {"webhook-id": msg_id, "webhook-timestamp": str(now),
             "webhook-signature": sign(self._key, msg_id, now, body),
             "content-type": "application/octet-stream",
             "umlog-topic": r.topic, "umlog-partition": str(r.partition), "umlog-offset": str(r.offset),
             "umlog-timestamp": str(r.timestamp), "umlog-delivery-count": str(r.delivery_count)}
        if r.key is not None:
            _put(h, "umlog-key", r.key)
        for name, value in r.headers:
            if name.lower() == "content-type" and value is not None and _printable(bytes(value)):
                h["content-type"] = bytes(value).decode("ascii")
            _put(h, "umlog-header-" + _header_name(name), value)
        return h

    async def _attempt(self, r) -> None:
        """One POST; returns on 2xx, raises _Retry or _Reject."""
        c = self.config
        body = b"" if r.value is None else bytes(r.value)
        async with self._sem:
            self._sending += 1
            try:
                async with self._session.post(self._url, data=body, headers=self.headers(r),
                                              allow_redirects=False) as resp:
                    await resp.read()
                    status, reason = resp.status, resp.reason or ""
                    after = resp.headers.get("Retry-After")
            except TimeoutError:
                raise self._failed(_Retry(f"timed out after {c.timeout_ms} ms")) from None
            except Exception as e:  # aiohttp.ClientError, OSError: the endpoint is not there (yet)
                import aiohttp

                if isinstance(e, (aiohttp.ClientError, OSError)):
                    raise self._failed(_Retry(f"connection error: {type(e).__name__}: {e}")) from None
                raise
            finally:
                self._sending -= 1
        if 200 <= status < 300:
            return
        what = f"HTTP {status} {reason}".strip()
        if status in (408, 429) or status >= 500:
            raise self._failed(_Retry(what, retry_after_ms(after)))
        raise self._failed(_Reject(what))

    def _failed(self, e: Exception) -> Exception:
        self._error(str(e))
        return e

    def _error(self, message: str) -> None:
        self.stats.last_error = message
        self.stats.last_error_at_ms = int(time.time() * 1000)
        self.changed = True

    # -- settling (on the loop: one short state write each; acks batched per loop turn) ------------

    def _ack(self, r) -> None:
        self.stats.delivered += 1
        self.stats.last_success_at_ms = int(time.time() * 1000)
        self.changed = True
        self._acks.append(r)
        if self._acks_timer is None:
            self._acks_timer = asyncio.get_running_loop().call_later(ACK_LINGER_S, self._flush_acks)

    def _flush_acks(self) -> None:
        if self._acks_timer is not None:
            self._acks_timer.cancel()
            self._acks_timer = None
        acks, self._acks = self._acks, []
        if not acks:
            return
        from .group import InvalidRecordStateError

        try:
            self._group.ack(acks)
        except InvalidRecordStateError:  # one bad record fails the call: ack the others one by one
            for r in acks:
                self._settle("ack", r)
        except Exception as e:
            log.exception("webhook %s: ack failed", self.name)
            self._error(f"ack failed: {e}")

    def _release(self, r, delay_ms: int) -> None:
        self.stats.retried += 1
        self.changed = True
        if self._settle("release", r, delay_ms=delay_ms):
            due = asyncio.get_running_loop().time() + delay_ms / 1000
            self._due = due if self._due is None else min(self._due, due)

    def _reject(self, r, reason: str) -> None:
        self.stats.dead_lettered += 1
        self.changed = True
        self._settle("reject", r, reason=reason)

    def _settle(self, how: str, r, **kw) -> bool:
        from .group import InvalidRecordStateError

        try:
            getattr(self._group, how)(r, **kw)
            return True
        except InvalidRecordStateError as e:  # its lock expired: it comes back through acquire
            log.warning("webhook %s: %s of %s-%d@%d refused: %s", self.name, how, r.topic, r.partition, r.offset, e)
        except Exception as e:
            log.exception("webhook %s: %s failed", self.name, how)
            self._error(f"{how} failed: {e}")
        return False

    def status(self) -> dict:
        c = self.config
        return {"name": c.name, "source": c.source, "topic": c.topic, "url": c.url, "group": c.group,
                "dead_letter": c.dead_letter_topic, "ordering": c.ordering, "concurrency": c.concurrency,
                "max_attempts": c.max_attempts, "running": not self._stopping, "in_flight": self._held,
                **self.stats.as_dict()}


# -- the service ----------------------------------------------------------------------------------


class Webhooks:
    """Every webhook of a server: the config file's and the data dir's (module docstring)."""

    def __init__(self, broker: Any, configs: list[WebhookConfig], *, create_topic=None,
                 poll_s: float = POLL_S) -> None:
        self.broker = broker
        self.data_dir = broker.path
        self.configured = {c.name: c for c in configs}
        self.create_topic = create_topic
        self.poll_s = poll_s
        self.running: dict[str, Webhook] = {}
        self._file_sig = None
        self._saved = read_status(self.data_dir).get("webhooks", {})
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._status_dirty = True

    async def start(self) -> None:
        await self._sync()
        self._write_status()
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="webhooks")

    def _file_configs(self) -> dict[str, WebhookConfig]:
        out = {}
        for d in read_file(self.data_dir):
            try:
                c = WebhookConfig.from_dict(d, source="cli")
            except (TypeError, ValueError) as e:
                log.error("%s: skipping a webhook: %s", _meta(self.data_dir, FILE_NAME), e)
                continue
            if c.name in self.configured:
                log.warning("webhook %s is in the config file and in %s: the config file's runs",
                            c.name, FILE_NAME)
                continue
            out[c.name] = c
        return out

    def _signature(self):
        try:
            st = os.stat(_meta(self.data_dir, FILE_NAME))
            return (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            return None

    async def _sync(self) -> None:
        """Start, stop or restart webhooks to match the config and webhooks.json."""
        self._file_sig = self._signature()
        wanted = {**self._file_configs(), **self.configured}
        for name in [n for n, w in self.running.items() if wanted.get(n) != w.config]:
            w = self.running.pop(name)
            await w.stop(1.0)
            self._status_dirty = True
        for name, c in wanted.items():
            if name in self.running:
                continue
            w = Webhook(self.broker, c, create_topic=self.create_topic, stats=Stats(self._saved.get(name)))
            try:
                await w.start()
            except Exception as e:
                log.error("webhook %s cannot start: %s", name, e)
                continue
            self.running[name] = w
            self._status_dirty = True

    async def _watch(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.poll_s)
            try:
                if self._signature() != self._file_sig:
                    await self._sync()
                self._write_status()
            except Exception:
                log.exception("webhooks: reloading %s failed", FILE_NAME)

    def _write_status(self, force: bool = False) -> None:
        changed = any(w.changed for w in self.running.values())
        if not (changed or self._status_dirty or force):
            return
        hooks = {}
        for name, w in self.running.items():
            w.changed = False
            hooks[name] = w.status()
            self._saved[name] = w.stats.as_dict()
        for name, saved in self._saved.items():  # counts of webhooks not running now are kept
            if name not in hooks:
                hooks[name] = {**saved, "name": name, "running": False, "in_flight": 0}
        self._status_dirty = False
        atomic_write_json(_meta(self.data_dir, STATUS_FILE_NAME),
                          {"pid": os.getpid(), "written_at_ms": int(time.time() * 1000), "webhooks": hooks})

    @property
    def stopped(self) -> bool:
        return self._stopping

    async def stop(self, grace_s: float) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*(w.stop(grace_s) for w in self.running.values()), return_exceptions=True)
        try:
            self._write_status(force=True)
        except OSError:
            log.exception("webhooks: writing %s failed", STATUS_FILE_NAME)

"""Routing rules: records of one topic that match a condition, copied to another
topic exactly once.

A route reads every partition of its source topic (``from``), evaluates its
condition (``when``, a JMESPath expression; none: every record matches) and
appends the records that match to its target topic (``to``) with their key,
value, headers and timestamp. ``Router`` runs any number of routes::

    from umlog.delivery.route import Route, Router
    with Router(b, [Route("orders", "orders-eu", when="value.region == 'eu'", name="eu-orders")]):
        ...                                        # routes run in the router's thread

``umlog serve`` starts one ``Router`` with the ``[[route]]`` tables of its
config file (``umlog/server/routing.py``) and stops it at shutdown.

Conditions
----------
The expression is evaluated over one document per record::

    {"key": str | null, "value": <the value parsed as JSON> | null,
     "headers": {name: str | null}, "topic": str, "partition": int,
     "offset": int, "timestamp": int}

``key`` and header values are the bytes decoded as UTF-8, null when they are
not UTF-8 (or absent); a header given twice shows its last value. ``value`` is
the value parsed as JSON, null when it is not JSON (or not UTF-8, or a
tombstone): ``value.region == 'eu'`` is then false, and ``value == null``
matches every record whose value is not JSON. A record matches when the
result is true in JMESPath's sense: not null, false, an empty string, list or
object (``0`` is true). An expression that fails on a record (a function given
the wrong type) does not match it; the failure is logged.

JMESPath literals: ``'eu'`` is a raw string; JSON values go in backticks::

    value.region == 'eu'                    # a string field
    value.n > `5`                           # a number: `5`, not '5' (a string: no match, an error logged)
    value.tags[?@ == 'vip'] | length(@) > `0`
    headers.type == 'order' && key != null
    starts_with(key, 'customer-')
    partition == `0` || value.priority == `true`

Target partition: the source's partition number when the target has at least
as many partitions as the source; else the key's murmur2 hash modulo the
target's partitions (as the engine's ``Topic.append``), and for a keyless
record the source partition modulo the target's partitions. Partition counts
are read when the router starts: a topic that grows meanwhile is mapped anew
at the next start (and, growing within the records read again after a crash,
breaks the once-only guarantee for those). A missing target is created with
the source's partition count; a missing source is created too (see
``Router``).

Theory of operation
-------------------
Each route keeps one ``ForwardStream`` (``forward.py``) per source partition,
in group ``service_group("route", name)``: the stream's checkpoint is the next
source offset and the count of records appended to each target; after a crash
the route reads again from the checkpoint, derives the same records (the
condition and the partition mapping are deterministic) and the stream skips
those the target already holds. So every match is on the target once, whatever
kills the process. A new route (no checkpoint) starts at the source's end
(``start="latest"``, remembered by a first checkpoint at once) or at its
start (``start="earliest"``).

A stream is checkpointed once it has read ``checkpoint_records`` records, or
``checkpoint_ms`` after its first unremembered read, and at ``stop()``. The
checkpoint bounds only how much is read again after a crash.

The router runs in **one thread of its own**, not on the server's event loop.
Every engine call it makes blocks: reads, appends, and under ``fsync`` other
than ``never`` the target's fdatasync before each checkpoint; on the loop they
would stall every door, and an executor would add a hand-over per wake-up for
nothing (the router needs no asyncio). The same thread serves an embedded
``Router`` and the server's. It sleeps on a condition variable until an append
listener (``Broker.add_append_listener``, called by the engine on whichever
thread appended, door or embedded) reports an append to one of its sources, so
a record is routed as soon as it is readable, with no polling; the wait's
timeout is the next checkpoint due. The listener only bumps a counter under
the condition's own small lock (it runs with the appending partition's lock
held and must not wait for anything the router holds while reading).
Appends of the Kafka door are readable at once; per-record embedded appends
(``Topic.append``) become readable when their open batch is written
(``linger_ms``, a full batch, ``flush()``), and are routed then.

An error while routing a partition (a target deleted under the route, a full
disk) is logged; that partition's stream is rebuilt from its checkpoint (as a
restart would, so nothing is appended twice) and retried after a pause.

Loops: a route from a topic to itself is refused, and so is a set of routes
whose topics form a cycle (``check_routes``), since a record could travel it
forever.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import threading
import time
from collections.abc import Iterable

import jmespath
import jmespath.exceptions
import jmespath.functions
import jmespath.visitor

from .._native.core import partition_for_key
from ..errors import OffsetOutOfRangeError, TopicExistsError, UnknownTopicError
from .forward import Derived, ForwardStream, service_group

__all__ = ["Route", "Router", "Condition", "RouteError", "check_routes", "default_route_name"]

log = logging.getLogger("umlog.delivery.route")

READ_BATCH = 1000  # records read from one source partition per step
RETRY_S = 1.0  # pause before a partition that failed is tried again


class RouteError(ValueError):
    """A route that cannot be: a bad condition, a loop, a duplicate name."""


def default_route_name(source: str, target: str) -> str:
    """The name of a route not given one (``>`` is never in a topic name, so it is unique per pair)."""
    return f"{source}->{target}"


def _text(b) -> str | None:
    if b is None:
        return None
    try:
        return bytes(b).decode("utf-8")
    except UnicodeDecodeError:
        return None


def _truthy(v) -> bool:
    """JMESPath's truth: null, false, "", [] and {} are false; everything else (0 too) is true."""
    if v is None or v is False:
        return False
    if isinstance(v, (str, list, dict)):
        return bool(v)
    return True


def _uses_value(node: dict) -> bool:
    """Whether an expression can reach the record's ``value`` (parsed only then): a
    field named ``value`` anywhere, ``@`` or a ``*`` over the whole document."""
    if node.get("type") in ("current", "value_projection") or (
            node.get("type") == "field" and node.get("value") == "value"):
        return True
    return any(_uses_value(c) for c in node.get("children", ()) if isinstance(c, dict))


def _check_functions(node: dict, table: dict) -> None:
    """Unknown functions and wrong argument counts, found now rather than on every record."""
    if node.get("type") == "function_expression":
        name = node.get("value")
        f = table.get(name)
        if f is None:
            raise RouteError(f"unknown function {name}()")
        sig, n = f["signature"], len(node.get("children", ()))
        variadic = bool(sig) and sig[-1].get("variadic")
        if n < len(sig) - (1 if variadic else 0) or (not variadic and n != len(sig)):
            raise RouteError(f"{name}() takes {len(sig)}{' or more' if variadic else ''} arguments, not {n}")
    for c in node.get("children", ()):
        if isinstance(c, dict):
            _check_functions(c, table)


class Condition:
    """A compiled ``when`` expression (see the module docstring); ``None`` matches every record."""

    def __init__(self, expression: str | None) -> None:
        self.expression = expression
        self._compiled = None
        self._needs_value = False
        self._errors = 0
        if expression is not None:
            if not isinstance(expression, str) or not expression.strip():
                raise RouteError(f"condition must be a non-empty JMESPath expression, not {expression!r}")
            try:
                self._compiled = jmespath.compile(expression)
            except jmespath.exceptions.JMESPathError as e:
                raise RouteError(f"bad condition {expression!r}: {' '.join(str(e).split())}") from None
            try:
                _check_functions(self._compiled.parsed, jmespath.functions.Functions().FUNCTION_TABLE)
            except RouteError as e:
                raise RouteError(f"bad condition {expression!r}: {e}") from None
            self._needs_value = _uses_value(self._compiled.parsed)
            # One interpreter, kept: ParsedResult.search makes one per call (half its cost).
            self._visit = functools.partial(jmespath.visitor.TreeInterpreter(jmespath.visitor.Options()).visit,
                                            self._compiled.parsed)

    def document(self, r, topic: str, partition: int) -> dict:
        value = None
        if self._needs_value and r.value is not None:
            try:
                value = json.loads(r.value)
            except ValueError:  # not JSON, not UTF-8
                value = None
        return {"key": _text(r.key), "value": value, "headers": {k: _text(v) for k, v in r.headers},
                "topic": topic, "partition": partition, "offset": r.offset, "timestamp": r.timestamp}

    def matches(self, r, topic: str, partition: int) -> bool:
        if self._compiled is None:
            return True
        try:
            return _truthy(self._visit(self.document(r, topic, partition)))
        except Exception as e:  # JMESPathError, and TypeError from jmespath comparing a number with a string
            self._errors += 1
            if self._errors <= 10 or self._errors % 10_000 == 0:
                log.warning("condition %r failed on %s-%d@%d (%d failures so far; not routed): %s",
                            self.expression, topic, partition, r.offset, self._errors, e)
            return False


@dataclasses.dataclass(frozen=True)
class Route:
    """One routing rule. ``name`` defaults to ``"<source>-><target>"``; it names the
    checkpoint group (``umlog.route.<name>``), so renaming a route starts it anew."""

    source: str
    target: str
    when: str | None = None
    name: str | None = None
    start: str = "latest"
    checkpoint_records: int = 1000
    checkpoint_ms: int = 100

    def __post_init__(self) -> None:
        for what in ("source", "target"):
            v = getattr(self, what)
            if not isinstance(v, str) or not v:
                raise RouteError(f"route {what} must be a topic name, not {v!r}")
        if self.name is None:
            object.__setattr__(self, "name", default_route_name(self.source, self.target))
        elif not isinstance(self.name, str) or not self.name:
            raise RouteError(f"route name must be a non-empty string, not {self.name!r}")
        if self.source == self.target:
            raise RouteError(f"route {self.name!r} goes from {self.source!r} to itself: it would never end")
        if self.start not in ("latest", "earliest"):
            raise RouteError(f"route {self.name!r}: start must be 'latest' or 'earliest', not {self.start!r}")
        for what in ("checkpoint_records", "checkpoint_ms"):
            v = getattr(self, what)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise RouteError(f"route {self.name!r}: {what} must be an int >= 1, not {v!r}")
        Condition(self.when)  # RouteError now rather than when started

    @property
    def group(self) -> str:
        return service_group("route", self.name)


def check_routes(routes: Iterable[Route]) -> list[Route]:
    """Refuse duplicate names and routes whose topics form a cycle (a -> b -> a)."""
    routes = list(routes)
    names: set[str] = set()
    for r in routes:
        if r.name in names:
            raise RouteError(f"two routes are named {r.name!r} (give each a name of its own)")
        names.add(r.name)
    edges: dict[str, set[str]] = {}
    for r in routes:
        edges.setdefault(r.source, set()).add(r.target)
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(t: str, path: list[str]) -> None:
        state[t] = 1
        for n in sorted(edges.get(t, ())):
            if state.get(n) == 1:
                cycle = " -> ".join([*path[path.index(n):], n]) if n in path else f"{t} -> {n}"
                raise RouteError(f"routes form a cycle ({cycle}): a record could travel it forever")
            if n not in state:
                visit(n, [*path, n])
        state[t] = 2

    for t in sorted(edges):
        if t not in state:
            visit(t, [t])
    return routes


class _Source:
    """One source partition of one route: its ForwardStream and checkpoint pace."""

    def __init__(self, router: Router, route: Route, cond: Condition, index: int, src_n: int, tgt_n: int) -> None:
        self.router = router
        self.route = route
        self.cond = cond
        self.index = index
        self.src_n = src_n
        self.tgt_n = tgt_n
        self.stream: ForwardStream | None = None
        self.unsaved = 0  # records read since the last checkpoint
        self.unsaved_since = 0.0
        self.failed_at = 0.0
        self.read = self.routed = 0

    def open(self) -> ForwardStream:
        b = self.router.broker
        s = ForwardStream(b, self.route.group, self.route.source, self.index)
        if s.position is None:
            p = b.topic(self.route.source).partition(self.index)
            s.position = p.start_offset if self.route.start == "earliest" else p.end_offset
            s.checkpoint()  # "latest" means the end now, also after a restart
        self.stream = s
        self.unsaved = 0
        return s

    def target_partition(self, r) -> int:
        if self.tgt_n >= self.src_n:
            return self.index
        if r.key is not None:
            return partition_for_key(r.key, self.tgt_n)
        return self.index % self.tgt_n

    def step(self, max_records: int) -> int:
        """Route what the partition holds past the stream's position (at most
        ``max_records`` records); returns how many records were read."""
        s = self.stream or self.open()
        route = self.route
        p = self.router.broker.topic(route.source).partition(self.index)
        if s.position >= p.end_offset:
            return 0
        try:
            recs = list(p.read(s.position, max_records=max_records))
        except OffsetOutOfRangeError:
            if s.position >= p.start_offset:
                raise
            log.warning("route %s: %s-%d offsets %d..%d were deleted by retention before they were routed",
                        route.name, route.source, self.index, s.position, p.start_offset - 1)
            s.position = p.start_offset
            recs = list(p.read(s.position, max_records=max_records))
        if not recs:
            return 0
        src, idx, tgt, matches = route.source, self.index, route.target, self.cond.matches
        out = [Derived(tgt, self.target_partition(r), r.value, r.key, r.headers, r.timestamp)
               for r in recs if matches(r, src, idx)]
        s.send(out, recs[-1].offset + 1)
        if not self.unsaved:
            self.unsaved_since = time.monotonic()
        self.unsaved += len(recs)
        self.read += len(recs)
        self.routed += len(out)
        return len(recs)

    def due(self, now: float) -> float | None:
        """Seconds until this stream's checkpoint is due (0: now), None: nothing to save."""
        if not self.unsaved:
            return None
        if self.unsaved >= self.route.checkpoint_records:
            return 0.0
        return max(0.0, self.unsaved_since + self.route.checkpoint_ms / 1000 - now)

    def checkpoint(self) -> None:
        if self.stream is not None and self.unsaved:
            self.stream.checkpoint()
            self.unsaved = 0


class Router:
    """Runs routes (see the module docstring): ``start()`` starts its thread,
    ``stop()`` checkpoints and ends it; ``pump()`` routes what is there now on the
    calling thread instead (a router that is not started).

    ``create_topic(name, partitions)`` makes missing topics (default: the
    broker's; the server passes its hub's, which applies ``[topics.defaults]``):
    a target with the source's partition count, a source with
    ``source_partitions`` (the server passes the Kafka door's
    ``default_partitions``, as if a client had asked for it first).
    """

    def __init__(self, broker, routes: Iterable[Route] = (), *, create_topic=None, source_partitions: int = 1) -> None:
        self.broker = broker
        self.routes = check_routes(routes)
        self._create_topic = create_topic or broker.create_topic
        self.source_partitions = source_partitions
        self._sources: list[_Source] = []
        self._source_topics: frozenset[str] = frozenset()
        self._opened = False
        self._thread: threading.Thread | None = None
        self._wake = threading.Condition(threading.Lock())
        self._seq = 0
        self._stopping = False

    def __repr__(self) -> str:
        return f"<Router {', '.join(r.name for r in self.routes)}>"

    # -- set up -------------------------------------------------------------------

    def _ensure(self, route: Route, topic: str, partitions: int):
        try:
            return self.broker.topic(topic)
        except UnknownTopicError:
            try:
                t = self._create_topic(topic, partitions)
                log.info("route %s: created %s with %d partitions", route.name, topic, partitions)
                return t
            except TopicExistsError:
                return self.broker.topic(topic)

    def _ensure_target(self, route: Route, src_n: int):
        return self._ensure(route, route.target, src_n)

    def _open(self) -> None:
        if self._opened:
            return
        sources = []
        for route in self.routes:
            cond = Condition(route.when)
            src_n = self._ensure(route, route.source, self.source_partitions).num_partitions
            tgt_n = self._ensure_target(route, src_n).num_partitions
            for i in range(src_n):
                s = _Source(self, route, cond, i, src_n, tgt_n)
                s.open()
                sources.append(s)
        self._sources = sources
        self._source_topics = frozenset(r.source for r in self.routes)
        self._opened = True

    # -- running --------------------------------------------------------------------

    def _on_append(self, p) -> None:
        # The engine's append listener: any thread, maybe with p's lock held.
        if p.topic in self._source_topics:
            with self._wake:
                self._seq += 1
                self._wake.notify()

    def _step_all(self, max_records: int | None = None) -> int:
        """One pass over every source partition; returns the records read."""
        total = 0
        now = time.monotonic()
        for s in self._sources:
            if s.failed_at and now - s.failed_at < RETRY_S:
                continue
            try:
                n = s.step(READ_BATCH if max_records is None else min(READ_BATCH, max_records - total))
                total += n
                if s.due(time.monotonic()) == 0.0:
                    s.checkpoint()
                s.failed_at = 0.0
            except Exception:
                if self._thread is None:
                    raise  # pump(): the caller sees it
                log.exception("route %s: routing %s-%d failed; retrying from its checkpoint",
                              s.route.name, s.route.source, s.index)
                s.stream = None  # rebuilt from the checkpoint: the target's producer state says what to skip
                s.unsaved = 0
                s.failed_at = time.monotonic()
                try:
                    self._ensure_target(s.route, s.src_n)
                except Exception:
                    log.debug("route %s: target %s not ready", s.route.name, s.route.target, exc_info=True)
            if max_records is not None and total >= max_records:
                break
        return total

    def _checkpoint_due(self, force: bool = False) -> float | None:
        """Write the checkpoints that are due; seconds until the next one (None: none pending)."""
        now = time.monotonic()
        nxt = None
        for s in self._sources:
            d = s.due(now)
            if d is None:
                continue
            if force or d == 0.0:
                try:
                    s.checkpoint()
                except Exception:
                    if self._thread is None:
                        raise
                    log.exception("route %s: checkpoint of %s-%d failed", s.route.name, s.route.source, s.index)
                    s.stream, s.unsaved, s.failed_at = None, 0, now
            else:
                nxt = d if nxt is None else min(nxt, d)
        if any(s.failed_at for s in self._sources):
            nxt = RETRY_S if nxt is None else min(nxt, RETRY_S)
        return nxt

    def pump(self, max_records: int | None = None) -> int:
        """Route what the sources hold now, on this thread (a router not started);
        checkpoints only as they fall due. Returns the records read."""
        if self._thread is not None:
            raise RuntimeError("the router runs in its own thread; pump() is for a router not started")
        self._open()
        total = 0
        while max_records is None or total < max_records:
            n = self._step_all(None if max_records is None else max_records - total)
            if not n:
                break
            total += n
        self._checkpoint_due()
        return total

    def checkpoint(self) -> None:
        """Checkpoint every stream now (a router not started; ``stop()`` does it for a started one)."""
        self._checkpoint_due(force=True)

    def _run(self) -> None:
        while True:
            with self._wake:
                seq = self._seq
                if self._stopping:
                    break
            read = self._step_all()
            wait = self._checkpoint_due()
            if read:
                continue
            with self._wake:
                if self._seq == seq and not self._stopping:
                    self._wake.wait(wait)
        try:
            self._checkpoint_due(force=True)
        except Exception:  # logged per stream; the process goes on closing
            log.exception("final route checkpoints failed")

    def start(self) -> Router:
        """Open every route (create missing targets, first checkpoints) and start the thread."""
        if self._thread is not None:
            return self
        self._open()
        self._stopping = False
        self.broker.add_append_listener(self._on_append)
        self._thread = threading.Thread(target=self._run, name="umlog-router", daemon=True)
        self._thread.start()
        for r in self.routes:
            log.info("route %s: %s -> %s%s", r.name, r.source, r.target, f" when {r.when}" if r.when else "")
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Finish the current step, checkpoint every stream, end the thread."""
        t = self._thread
        if t is None:
            return
        with self._wake:
            self._stopping = True
            self._wake.notify()
        t.join(timeout)
        self.broker.remove_append_listener(self._on_append)
        self._thread = None

    def __enter__(self) -> Router:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stats(self) -> list[dict]:
        """Per route: records read, records routed, and the lag (records not read yet)."""
        out = {}
        for s in self._sources:
            row = out.setdefault(s.route.name, {"route": s.route.name, "from": s.route.source,
                                                "to": s.route.target, "read": 0, "routed": 0, "lag": 0})
            row["read"] += s.read
            row["routed"] += s.routed
            try:
                p = self.broker.topic(s.route.source).partition(s.index)
                pos = s.stream.position if s.stream is not None else None
                row["lag"] += 0 if pos is None else max(0, p.end_offset - pos)
            except (UnknownTopicError, IndexError):
                pass
        return list(out.values())

"""``/metrics``: Prometheus' text format, read from the engine at scrape time.

One custom collector walks the topics, the group offsets and the services
when Prometheus scrapes; nothing is counted per record in Python. Names:

* kafka_exporter's: ``kafka_topic_partitions{topic}``,
  ``kafka_topic_partition_current_offset{topic,partition}`` (the end offset),
  ``kafka_topic_partition_oldest_offset{topic,partition}`` (the start offset),
  ``kafka_consumergroup_current_offset{consumergroup,topic,partition}``,
  ``kafka_consumergroup_lag{consumergroup,topic,partition}``,
  ``kafka_consumergroup_members{consumergroup}`` (Kafka members plus REST
  consumer instances), and ``kafka_consumergroup_lag_seconds{consumergroup,
  topic,partition}``: now minus the timestamp of the first record not
  consumed (0 without lag).
* umlog's: ``umlog_connections{door}``, ``umlog_data_dir_bytes`` (the bytes of
  every partition), ``umlog_disk_free_bytes`` / ``umlog_disk_total_bytes`` (the
  data dir's file system), ``umlog_share_group_in_flight{group}``,
  ``umlog_share_group_unacked{group}``, ``umlog_share_group_archived{group}``
  (records dead-lettered or dropped still inside the group's window: the
  window forgets done records, so this is not a running total),
  ``umlog_dead_letter_records{topic}`` (records of topics named ``*.dlq``,
  ``*-dlt``, ``*.DLT``), ``umlog_delayed_pending``,
  ``umlog_delayed_next_due_timestamp_seconds``,
  ``umlog_webhook_delivered_total{webhook}``, ``umlog_webhook_retried_total``,
  ``umlog_webhook_dead_lettered_total``, ``umlog_webhook_in_flight``,
  ``umlog_http_stream_drops_total``, ``umlog_http_consumer_instances``;
* histograms observed as things happen (one observation per fdatasync and per
  HTTP request, never per record): ``umlog_fsync_seconds`` (each fdatasync of
  the hub's durability gate) and ``umlog_request_seconds{door,route}``.

Lag seconds read the timestamp of one record per lagging partition; the
answers are cached by (group, topic, partition, committed offset), so a scrape
reads only what moved since the last one.
"""

from __future__ import annotations

import logging
import os
import shutil
import time

from umlog import errors

__all__ = ["Metrics"]

log = logging.getLogger("umlog.server.http")

_DLQ_SUFFIXES = (".dlq", "-dlt", ".DLT", "-dlq", ".dlt")


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


class _Family:
    """One metric family, rendered straight to Prometheus' text format.

    prometheus_client's own rendering costs about 10 us a sample (label checks
    and escapes per sample): 300 ms for 10,000 group partitions. Label sets
    here are built once per family row from names that are already valid, so
    a scrape of that size takes a few tens of ms. prometheus_client still
    renders the histograms, and its parser reads the result (the tests)."""

    __slots__ = ("name", "help", "type", "labels", "rows")

    def __init__(self, name: str, help: str, labels=(), value=None, type: str = "gauge") -> None:
        self.name = name
        self.help = help
        self.type = type
        self.labels = tuple(labels)
        self.rows: list[str] = []
        if value is not None:
            self.add_metric([], value)

    def add_metric(self, values, value) -> None:
        if values:
            inner = ",".join(f'{k}="{_esc(v)}"' for k, v in zip(self.labels, values))
            self.rows.append(f"{self.name}{self.suffix}{{{inner}}} {_num(value)}\n")
        else:
            self.rows.append(f"{self.name}{self.suffix} {_num(value)}\n")

    def add_raw(self, labels: str, value) -> None:
        """``labels``: the inside of the braces, already escaped."""
        self.rows.append(f"{self.name}{self.suffix}{{{labels}}} {_num(value)}\n")

    @property
    def suffix(self) -> str:
        return "_total" if self.type == "counter" else ""

    def text(self) -> str:
        return (f"# HELP {self.name}{self.suffix} {self.help}\n# TYPE {self.name}{self.suffix} {self.type}\n"
                + "".join(self.rows))


def _num(v) -> str:
    if isinstance(v, int):
        return str(v)
    return repr(float(v))


def GaugeMetricFamily(name, help, labels=(), value=None):
    return _Family(name, help, labels, value)


def CounterMetricFamily(name, help, labels=(), value=None):
    return _Family(name, help, labels, value, type="counter")


g = GaugeMetricFamily
c = CounterMetricFamily


class _Collector:
    def __init__(self, door) -> None:
        self.door = door
        self._ts_cache: dict[tuple, int | None] = {}

    def describe(self):
        return []

    def collect(self):
        door = self.door
        hub = door.hub
        broker = door.broker
        parts = g("kafka_topic_partitions", "Number of partitions of this topic", labels=["topic"])
        cur = g("kafka_topic_partition_current_offset", "Current (end) offset of a partition",
                labels=["topic", "partition"])
        old = g("kafka_topic_partition_oldest_offset", "Oldest (start) offset of a partition",
                labels=["topic", "partition"])
        dlq = g("umlog_dead_letter_records", "Records in a dead-letter topic (by name)", labels=["topic"])
        ends: dict[tuple[str, int], tuple] = {}  # -> (partition, its labels)
        for name in broker.topics():
            t = broker.topic(name)
            parts.add_metric([name], len(t.partitions))
            n = 0
            for i, p in enumerate(t.partitions):
                end, start = p.end_offset, p.start_offset
                labels = f'topic="{_esc(name)}",partition="{i}"'
                ends[(name, i)] = (p, labels)
                cur.add_raw(labels, end)
                old.add_raw(labels, start)
                n += max(0, end - start)
            if name.endswith(_DLQ_SUFFIXES):
                dlq.add_metric([name], n)
        yield parts
        yield cur
        yield old
        yield dlq
        yield from self._groups(ends)
        yield from self._server(hub, broker)
        yield from self._share_groups(broker)
        yield from self._delayed(broker)
        yield from self._webhooks(hub)
        drops = CounterMetricFamily("umlog_http_stream_drops", "SSE/WebSocket clients dropped for falling behind")
        drops.add_metric([], door.stream_drops)
        yield drops

    def _groups(self, ends):
        from umlog.groups.offsets import OFFSETS_TOPIC

        broker = self.door.broker
        off = g("kafka_consumergroup_current_offset", "Committed offset of a consumer group in a partition",
                labels=["consumergroup", "topic", "partition"])
        lag = g("kafka_consumergroup_lag", "End offset minus committed offset",
                labels=["consumergroup", "topic", "partition"])
        lag_s = g("kafka_consumergroup_lag_seconds", "Age of the oldest record the group has not consumed",
                  labels=["consumergroup", "topic", "partition"])
        members = g("kafka_consumergroup_members", "Members of a consumer group (Kafka members and REST "
                    "consumer instances)", labels=["consumergroup"])
        counts: dict[str, int] = {}
        coord = getattr(self.door.hub, "_coordinator", None)
        if coord is not None:
            for name, grp in coord.groups.items():
                counts[name] = len(grp.members)
        rest = self.door.rest
        if rest is not None:
            for (name, _), _inst in rest.instances.items():
                counts[name] = counts.get(name, 0) + 1
        now = time.time() * 1000
        cache, used = self._ts_cache, {}
        if OFFSETS_TOPIC in broker.topics(internal=True):
            store = broker.offsets
            for group in store.groups():
                counts.setdefault(group, 0)
                gl = f'consumergroup="{_esc(group)}",'
                for (topic, i), v in store.group_offsets(group).items():
                    found = ends.get((topic, i))
                    if found is None:
                        continue
                    p, labels = found
                    labels = gl + labels
                    off.add_raw(labels, v.offset)
                    behind = max(0, p.end_offset - v.offset)
                    lag.add_raw(labels, behind)
                    age = 0.0
                    if behind:
                        key = (topic, i, max(v.offset, p.start_offset))
                        ts = cache[key] if key in cache else self._timestamp(p, key[2])
                        used[key] = ts
                        if ts is not None and ts >= 0:
                            age = max(0.0, (now - ts) / 1000)
                    lag_s.add_raw(labels, age)
        self._ts_cache = used
        for name, n in counts.items():
            members.add_metric([name], n)
        yield off
        yield lag
        yield lag_s
        yield members

    @staticmethod
    def _timestamp(p, offset: int) -> int | None:
        try:
            for r in p.read(offset, max_records=1):
                return r.timestamp
        except errors.UmlogError:
            return None
        return None

    def _server(self, hub, broker):
        conns = g("umlog_connections", "Open connections per door", labels=["door"])
        counts = {d.name: 0 for d in hub.doors}
        for c in list(hub.connections):
            counts[c.door.name] = counts.get(c.door.name, 0) + 1
        for name, n in counts.items():
            conns.add_metric([name], n)
        yield conns
        used = 0
        for name in broker.topics(internal=True):
            for p in broker.topic(name).partitions:
                try:
                    used += p.size_in_bytes()
                except OSError:
                    pass
        yield g("umlog_data_dir_bytes", "Bytes of every partition's segments in the data dir", value=used)
        try:
            du = shutil.disk_usage(broker.path)
            yield g("umlog_disk_free_bytes", "Free bytes of the data dir's file system", value=du.free)
            yield g("umlog_disk_total_bytes", "Size of the data dir's file system", value=du.total)
        except OSError:
            pass
        rest = self.door.rest
        yield g("umlog_http_consumer_instances", "REST consumer instances",
                value=0 if rest is None else len(rest.instances))

    def _share_groups(self, broker):
        in_flight = g("umlog_share_group_in_flight", "Records acquired and not settled", labels=["group"])
        unacked = g("umlog_share_group_unacked", "Records neither acked nor archived", labels=["group"])
        archived = g("umlog_share_group_archived", "Records dead-lettered or dropped, still in the window",
                     labels=["group"])
        oldest = g("umlog_share_group_oldest_unacked_age_seconds", "Age of the oldest unacked record",
                   labels=["group"])
        if "__share_group_state" in broker.topics(internal=True):
            from umlog.delivery.describe import _store, describe_group

            try:
                names = _store(broker).groups()
            except Exception:
                log.debug("share groups unreadable", exc_info=True)
                names = []
            for name in names:
                try:
                    d = describe_group(broker, name)
                except Exception:
                    log.debug("share group %s unreadable", name, exc_info=True)
                    continue
                if d is None:
                    continue
                in_flight.add_metric([name], d["in_flight"])
                unacked.add_metric([name], d["unacked"])
                archived.add_metric([name], sum(r["archived"] for r in d["partitions"]))
                age = d["oldest_unacked_age_ms"]
                oldest.add_metric([name], 0 if age is None else age / 1000)
        yield in_flight
        yield unacked
        yield archived
        yield oldest

    def _delayed(self, broker):
        if not os.path.exists(os.path.join(broker.path, "meta", "delayed.sqlite3")):
            yield g("umlog_delayed_pending", "Delayed records not yet due", value=0)
            return
        from umlog.delivery.delay import delayed_stats

        try:
            st = delayed_stats(broker)
        except Exception:
            log.debug("delayed stats unreadable", exc_info=True)
            return
        yield g("umlog_delayed_pending", "Delayed records not yet due", value=st["pending"] + st["not_indexed"])
        if st["next_due_ms"] is not None:
            yield g("umlog_delayed_next_due_timestamp_seconds", "When the next delayed record is due",
                    value=st["next_due_ms"] / 1000)

    def _webhooks(self, hub):
        delivered = c("umlog_webhook_delivered", "Records a webhook delivered (2xx)", labels=["webhook"])
        retried = c("umlog_webhook_retried", "Failed attempts retried", labels=["webhook"])
        dead = c("umlog_webhook_dead_lettered", "Records a webhook dead-lettered", labels=["webhook"])
        in_flight = g("umlog_webhook_in_flight", "Deliveries in flight", labels=["webhook"])
        running = getattr(hub.webhooks, "running", None) or {}
        for name, w in list(running.items()):
            s = w.stats
            delivered.add_metric([name], s.delivered)
            retried.add_metric([name], s.retried)
            dead.add_metric([name], s.dead_lettered)
            in_flight.add_metric([name], w.in_flight)
        yield delivered
        yield retried
        yield dead
        yield in_flight


class Metrics:
    """The HTTP door's metrics: the collector (rendered by ``_Family``) and the two
    histograms (a prometheus_client registry)."""

    def __init__(self, door) -> None:
        from prometheus_client import CollectorRegistry, Histogram

        self.door = door
        door.stream_drops = 0
        self.collector = _Collector(door)
        self.registry = CollectorRegistry(auto_describe=False)  # the histograms
        self.fsync = Histogram("umlog_fsync_seconds", "fdatasync of the durability gate (--fsync always)",
                               registry=self.registry,
                               buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
        self.requests = Histogram("umlog_request_seconds", "Requests answered, per door and route",
                                  ["door", "route"], registry=self.registry,
                                  buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        door.hub.sync_observers.append(self.fsync.observe)
        self._children: dict[str, object] = {}

    def observe_request(self, request, seconds: float) -> None:
        route = "other"
        info = request.match_info
        if info is not None and info.route is not None and info.route.resource is not None:
            route = info.route.resource.canonical
        if route.endswith(("/events", "/ws")):
            return  # streams last as long as the client stays: not a latency
        child = self._children.get(route)
        if child is None:
            child = self._children[route] = self.requests.labels("http", route)
        child.observe(seconds)

    async def handle(self, request):
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        t0 = time.perf_counter()
        body = "".join(f.text() for f in self.collector.collect()).encode() + generate_latest(self.registry)
        log.debug("metrics scrape: %.1f ms", (time.perf_counter() - t0) * 1000)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

"""``umlog mirror``: continuous replication of topics (and consumer-group
offsets) from one Kafka-protocol cluster into another, as MirrorMaker 2 does.

Theory of operation
-------------------
A pull replicator: a consumer on the source (``assign``, never a group, no
commits on the source), an idempotent producer on the target
(``enable.idempotence``, ``acks=all``). Topics whose name matches the
``topics`` regex (internal ones never) are created on the target under the
same name with the source's partition count and its non-default configs
(DescribeConfigs), then every record is copied to the same partition with its
key, value, headers and timestamp, plus one header, ``umlog.mirror.offset``:
the record's offset in the source partition (ASCII digits).

Exactly once across restarts: the idempotent producer rules out duplicates
from retries within one run, not across a restart (a new producer id knows
nothing of the old one's sequence numbers). So the position of the mirror is
stored *in the target itself, atomically with the data*: at start, for each
target partition, the mirror reads the last records below its high watermark
and takes the ``umlog.mirror.offset`` header of the newest one; the source is
read from that offset + 1. Whatever the previous run had in flight either
reached the target (and is found there) or did not (and is sent again): no
duplicate, no gap, without a transaction. The method needs the mirror to be the
only writer of its target topics (the records of another writer carry no
header and are skipped over when looking back, up to ``TAIL_SCAN`` records).

MirrorMaker 2's bookkeeping is kept so that tools that know it work:

- offset syncs, ``mm2-offset-syncs.<target alias>.internal`` on the source
  (compacted; key: topic string + partition int32, value: upstream offset
  int64 + downstream offset int64, Kafka's Struct layout): the newest
  (source offset, target offset) pair of each partition, at most every
  ``sync_interval_s``;
- checkpoints, ``<source alias>.checkpoints.internal`` on the target (key: group,
  topic, partition; value: version int16 0, upstream offset, downstream
  offset, metadata): for each group matching ``groups``, its committed source
  offset translated to the target, every ``checkpoint_interval_s``. The
  translation is exact, where MirrorMaker 2's (from its sparse offset syncs)
  may go back: a committed offset U becomes the target offset of the first
  mirrored record whose source offset is U or more, found by a binary search
  over the target partition's headers (a few single-record fetches, cached),
  once the mirror has copied up to U. The translated offset is
  also committed for the group on the target while the group has no member
  there (MirrorMaker 2's ``sync.group.offsets``), never moving it backwards,
  so a consumer moved to the target resumes where it stopped.

Lag: per partition, records (source high watermark minus the next source
offset to copy) and seconds (the age of the oldest source record not yet
copied; 0 when none), in ``status()`` and ``umlog mirror status``.
"""

from __future__ import annotations

import logging
import re
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Mirror", "MirrorSpec", "mirror_status", "OFFSET_HEADER", "encode_offset_sync", "encode_checkpoint",
           "decode_checkpoint"]

log = logging.getLogger("umlog.mirror")

OFFSET_HEADER = "umlog.mirror.offset"
TAIL_SCAN = 100  # records read back from a target partition's end to find the newest mirrored one


def _kstring(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def encode_offset_sync(topic: str, partition: int, upstream: int, downstream: int) -> tuple[bytes, bytes]:
    """(key, value) of an MM2 OffsetSync record."""
    return _kstring(topic) + struct.pack(">i", partition), struct.pack(">qq", upstream, downstream)


def encode_checkpoint(group: str, topic: str, partition: int, upstream: int, downstream: int,
                      metadata: str = "") -> tuple[bytes, bytes]:
    """(key, value) of an MM2 Checkpoint record (value version 0)."""
    key = _kstring(group) + _kstring(topic) + struct.pack(">i", partition)
    return key, struct.pack(">hqq", 0, upstream, downstream) + _kstring(metadata)


def _read_string(buf: bytes, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from(">h", buf, pos)
    return buf[pos + 2:pos + 2 + n].decode(), pos + 2 + n


def decode_checkpoint(key: bytes, value: bytes) -> tuple[str, str, int, int, int]:
    """(group, topic, partition, upstream, downstream) of a checkpoint record."""
    group, pos = _read_string(key, 0)
    topic, pos = _read_string(key, pos)
    (partition,) = struct.unpack_from(">i", key, pos)
    _, up, down = struct.unpack_from(">hqq", value, 0)
    return group, topic, partition, up, down


@dataclass
class MirrorSpec:
    """One mirror: a ``[[mirror]]`` entry or the flags of ``umlog mirror``."""

    source: str
    target: str
    topics: str
    groups: str | None = None
    name: str = "mirror"
    source_alias: str = "source"
    target_alias: str = "target"
    sync_interval_s: float = 1.0
    checkpoint_interval_s: float = 5.0
    refresh_interval_s: float = 10.0
    source_config: dict = field(default_factory=dict)
    target_config: dict = field(default_factory=dict)

    @property
    def offset_syncs_topic(self) -> str:
        return f"mm2-offset-syncs.{self.target_alias}.internal"

    @property
    def checkpoints_topic(self) -> str:
        return f"{self.source_alias}.checkpoints.internal"


def _internal(name: str) -> bool:
    return name.startswith("__") or name.startswith("mm2-") or name.endswith(".internal")


class _Part:
    __slots__ = ("next", "synced", "delivered", "history", "caught_up_ms", "source_end")

    def __init__(self) -> None:
        self.next = 0  # next source offset to copy
        self.delivered: tuple[int, int] | None = None  # newest (source offset, target offset) acknowledged
        self.synced: tuple[int, int] | None = None  # newest written to the offset-syncs topic
        self.history: deque = deque(maxlen=4096)  # (source, target) pairs of the syncs, ascending
        self.caught_up_ms = int(time.time() * 1000)
        self.source_end: int | None = None


class Mirror:
    """Runs one ``MirrorSpec`` until ``stop()`` (``run`` blocks; ``start`` runs it in a thread)."""

    def __init__(self, spec: MirrorSpec) -> None:
        self.spec = spec
        self._topics_re = re.compile(spec.topics)
        self._groups_re = re.compile(spec.groups) if spec.groups else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.parts: dict[tuple[str, int], _Part] = {}
        self.error: str | None = None
        self.records = 0  # copied since start
        self._probe = None  # a target consumer translating group offsets
        self._translated: dict = {}
        self._lock = threading.Lock()

    # -- clients ----------------------------------------------------------------------

    def _conf(self, bootstrap: str, extra: dict) -> dict:
        return {"bootstrap.servers": bootstrap, **extra}

    def _admin(self, side: str):
        from confluent_kafka.admin import AdminClient

        s = self.spec
        return AdminClient(self._conf(s.source if side == "source" else s.target,
                                      s.source_config if side == "source" else s.target_config))

    # -- topics -----------------------------------------------------------------------

    def discover(self, src_admin, dst_admin) -> dict[str, int]:
        """Source topics to mirror {name: partitions}; created (or grown) on the target."""
        from confluent_kafka.admin import ConfigResource, NewPartitions, NewTopic

        md = src_admin.list_topics(timeout=10)
        wanted = {n: len(t.partitions) for n, t in md.topics.items()
                  if not _internal(n) and self._topics_re.fullmatch(n) and t.error is None}
        have = dst_admin.list_topics(timeout=10).topics
        new = []
        for name, n in sorted(wanted.items()):
            if name in have:
                if len(have[name].partitions) < n:
                    for f in dst_admin.create_partitions([NewPartitions(name, n)]).values():
                        f.result()
                continue
            configs = {}
            try:
                res = ConfigResource(ConfigResource.Type.TOPIC, name)
                entries = src_admin.describe_configs([res])[res].result(timeout=10)
                configs = {k: e.value for k, e in entries.items()
                           if not e.is_default and not e.is_read_only and e.value is not None}
            except Exception as e:  # a source without DescribeConfigs: defaults
                log.warning("mirror %s: configs of %s not read: %s", self.spec.name, name, e)
            new.append(NewTopic(name, n, replication_factor=1, config=configs))
        self._create(dst_admin, new)
        return wanted

    @staticmethod
    def _create(admin, topics: list) -> None:
        from confluent_kafka import KafkaError

        if not topics:
            return
        for name, f in admin.create_topics(topics).items():
            try:
                f.result()
            except Exception as e:
                err = e.args[0] if e.args else None
                if getattr(err, "code", lambda: None)() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
            log.info("mirror: created %s", name)

    def _ensure_internal(self, src_admin, dst_admin) -> None:
        from confluent_kafka.admin import NewTopic

        compact = {"cleanup.policy": "compact"}
        if self.spec.offset_syncs_topic not in src_admin.list_topics(timeout=10).topics:
            self._create(src_admin, [NewTopic(self.spec.offset_syncs_topic, 1, replication_factor=1, config=compact)])
        if self.spec.checkpoints_topic not in dst_admin.list_topics(timeout=10).topics:
            self._create(dst_admin, [NewTopic(self.spec.checkpoints_topic, 1, replication_factor=1, config=compact)])

    # -- where to start -------------------------------------------------------------------

    def resume_positions(self, topics: dict[str, int]) -> dict[tuple[str, int], tuple[int, int] | None]:
        """For each partition, (last mirrored source offset, its target offset) from the
        target's tail, or None when the target partition holds no mirrored record."""
        return target_positions(self.spec.target, self.spec.target_config, topics)

    # -- the loop ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run_logged, name=f"umlog-mirror-{self.spec.name}", daemon=True)
        self._thread.start()

    def _run_logged(self) -> None:
        try:
            self.run()
        except Exception as e:
            self.error = str(e)
            log.exception("mirror %s stopped", self.spec.name)

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

        s = self.spec
        src_admin, dst_admin = self._admin("source"), self._admin("target")
        self._ensure_internal(src_admin, dst_admin)
        topics = self.discover(src_admin, dst_admin)
        consumer = Consumer(self._conf(s.source, {
            "group.id": f"umlog-mirror-{s.name}", "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "enable.partition.eof": False, **s.source_config}))
        producer = Producer(self._conf(s.target, {
            "enable.idempotence": True, "acks": "all", "linger.ms": 5, **s.target_config}))
        syncs = Producer(self._conf(s.source, {"enable.idempotence": True, "acks": "all", **s.source_config}))
        failed: list = []

        def assign(names: dict[str, int]) -> None:
            pos = self.resume_positions(names)
            tps = []
            for (t, i), last in sorted(pos.items()):
                part = self.parts.setdefault((t, i), _Part())
                if last is not None:
                    part.next = last[0] + 1
                    part.delivered = last
                    part.history.append(last)
                    tps.append(TopicPartition(t, i, last[0] + 1))
                else:
                    tps.append(TopicPartition(t, i, -2))  # OFFSET_BEGINNING
            if tps:
                consumer.incremental_assign(tps)
            log.info("mirror %s: %d partition(s) of %s from %s", s.name, len(tps), ", ".join(sorted(names)),
                     {f"{t}-{i}": (v[0] + 1 if v else "earliest") for (t, i), v in sorted(pos.items())})

        def delivered(err, msg, src: int) -> None:
            if err is not None:
                failed.append(err)
                return
            with self._lock:
                part = self.parts[(msg.topic(), msg.partition())]
                part.delivered = (src, msg.offset())
                self.records += 1

        assign(topics)
        last_sync = last_ckpt = last_refresh = time.monotonic()
        try:
            while not self._stop.is_set():
                if failed:
                    raise KafkaException(failed[0])  # stop: a restart resumes from the target's tail
                msgs = consumer.consume(1000, 0.2)
                for m in msgs:
                    if m.error() is not None:
                        log.warning("mirror %s: %s", s.name, m.error())
                        continue
                    headers = list(m.headers() or [])
                    headers.append((OFFSET_HEADER, str(m.offset()).encode()))
                    ts_type, ts = m.timestamp()
                    kw = {"timestamp": ts} if ts_type and ts >= 0 else {}
                    while True:
                        try:
                            producer.produce(m.topic(), m.value(), m.key(), partition=m.partition(),
                                             headers=headers, **kw,
                                             on_delivery=lambda err, msg, src=m.offset(): delivered(err, msg, src))
                            break
                        except BufferError:
                            producer.poll(0.1)
                    self.parts[(m.topic(), m.partition())].next = m.offset() + 1
                producer.poll(0)
                now = time.monotonic()
                if now - last_sync >= s.sync_interval_s:
                    last_sync = now
                    producer.flush(30)
                    self._write_syncs(syncs)
                    self._note_lag(consumer)
                if self._groups_re is not None and now - last_ckpt >= s.checkpoint_interval_s:
                    last_ckpt = now
                    self.checkpoint(src_admin, dst_admin, producer)
                if now - last_refresh >= s.refresh_interval_s:
                    last_refresh = now
                    fresh = self.discover(src_admin, dst_admin)
                    added = {t: n for t, n in fresh.items() if t not in topics}
                    grown = {t: n for t, n in fresh.items() if t in topics and n > topics[t]}
                    if added:
                        assign(added)
                    for t, n in grown.items():
                        consumer.incremental_assign([TopicPartition(t, i, -2) for i in range(topics[t], n)])
                    topics = fresh
        finally:
            producer.flush(30)
            if not failed:
                self._write_syncs(syncs)
            syncs.flush(10)
            consumer.close()
            if self._probe is not None:
                self._probe.close()

    def _write_syncs(self, syncs) -> None:
        with self._lock:
            todo = [(tp, p.delivered) for tp, p in self.parts.items()
                    if p.delivered is not None and p.delivered != p.synced]
        for (t, i), d in todo:
            k, v = encode_offset_sync(t, i, d[0], d[1])
            syncs.produce(self.spec.offset_syncs_topic, v, k, partition=0)
            part = self.parts[(t, i)]
            part.synced = d
            part.history.append(d)
        syncs.poll(0)

    def _note_lag(self, consumer) -> None:
        from confluent_kafka import TopicPartition

        now = int(time.time() * 1000)
        for (t, i), part in list(self.parts.items()):
            try:
                _, hw = consumer.get_watermark_offsets(TopicPartition(t, i), timeout=5, cached=True)
            except Exception:
                continue
            part.source_end = hw
            if part.delivered is not None and part.delivered[0] + 1 >= hw:
                part.caught_up_ms = now

    # -- groups ----------------------------------------------------------------------------

    def translate(self, topic: str, partition: int, upstream: int) -> int | None:
        """The target offset for a group committed at ``upstream``: the first target
        record whose source offset is ``upstream`` or more (the end when none), found
        by a binary search over the target partition's ``umlog.mirror.offset``
        headers; exact, gaps included. None while the mirror has not copied up to
        ``upstream`` yet."""
        from confluent_kafka import Consumer, TopicPartition

        part = self.parts.get((topic, partition))
        if part is None or part.delivered is None or part.delivered[0] < upstream - 1:
            return None
        key = (topic, partition, upstream)
        if key in self._translated:
            return self._translated[key]
        if self._probe is None:
            self._probe = Consumer(self._conf(self.spec.target, {
                "group.id": f"umlog-mirror-{self.spec.name}-probe", "enable.auto.commit": False,
                **self.spec.target_config}))
        c = self._probe
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        a, b = lo, hi
        while a < b:
            mid = (a + b) // 2
            c.assign([TopicPartition(topic, partition, mid)])
            src = None
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                m = c.poll(1.0)
                if m is not None and m.error() is None:
                    h = dict(m.headers() or [])
                    src = int(h[OFFSET_HEADER]) if OFFSET_HEADER in h else -1
                    break
            if src is None:
                return None
            if src < upstream:
                a = mid + 1
            else:
                b = mid
        c.unassign()
        if len(self._translated) > 100_000:
            self._translated.clear()
        self._translated[key] = a
        return a

    def checkpoint(self, src_admin, dst_admin, producer) -> int:
        """Checkpoint every matching group; returns how many offsets were translated."""
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

        groups = [g.group_id for g in src_admin.list_consumer_groups().result(timeout=10).valid
                  if self._groups_re.fullmatch(g.group_id) and not g.group_id.startswith("umlog-mirror-")]
        n = 0
        for g in groups:
            try:
                res = src_admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(g)])[g].result(timeout=10)
            except Exception as e:
                log.warning("mirror %s: offsets of group %s not read: %s", self.spec.name, g, e)
                continue
            out = []
            for tp in res.topic_partitions:
                if tp.offset < 0 or (tp.topic, tp.partition) not in self.parts:
                    continue
                d = self.translate(tp.topic, tp.partition, tp.offset)
                if d is None:
                    continue
                k, v = encode_checkpoint(g, tp.topic, tp.partition, tp.offset, d)
                producer.produce(self.spec.checkpoints_topic, v, k, partition=0)
                out.append(TopicPartition(tp.topic, tp.partition, d))
            if out:
                n += len(out)
                self._sync_group(dst_admin, g, out)
        producer.poll(0)
        return n

    def _sync_group(self, dst_admin, group: str, offsets: list) -> None:
        """Commit the translated offsets for ``group`` on the target while it has no
        member there, never moving one backwards."""
        from confluent_kafka import ConsumerGroupTopicPartitions

        try:
            desc = dst_admin.describe_consumer_groups([group])[group].result(timeout=10)
            if desc.members:
                return
        except Exception:
            pass  # unknown on the target: nothing to disturb
        try:
            cur = dst_admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(
                timeout=10)
            now = {(tp.topic, tp.partition): tp.offset for tp in cur.topic_partitions}
        except Exception:
            now = {}
        ahead = [tp for tp in offsets if tp.offset > now.get((tp.topic, tp.partition), -1)]
        if ahead:
            dst_admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, ahead)])[group].result(
                timeout=10)

    # -- status -----------------------------------------------------------------------------

    def status(self) -> list[dict]:
        """Per partition: the next source offset to copy and the lag (records, seconds)."""
        now = int(time.time() * 1000)
        out = []
        for (t, i), p in sorted(self.parts.items()):
            done = p.delivered[0] + 1 if p.delivered is not None else p.next
            lag = max(0, p.source_end - done) if p.source_end is not None else None
            out.append({"topic": t, "partition": i, "next": done,
                        "lag_records": lag,
                        "lag_seconds": 0.0 if not lag else round((now - p.caught_up_ms) / 1000, 3)})
        return out


def target_positions(target: str, target_config: dict, topics: dict[str, int]) -> dict:
    """{(topic, partition): (source offset, target offset) of the newest mirrored record, or None}."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": target, "group.id": "umlog-mirror-tail", "enable.auto.commit": False,
                  **target_config})
    out: dict = {}
    try:
        for t, n in sorted(topics.items()):
            for i in range(n):
                out[(t, i)] = None
                try:
                    lo, hi = c.get_watermark_offsets(TopicPartition(t, i), timeout=10)
                except Exception:
                    continue
                if hi <= lo:
                    continue
                c.assign([TopicPartition(t, i, max(lo, hi - TAIL_SCAN))])
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    msgs = c.consume(TAIL_SCAN, 1.0)
                    for m in msgs:
                        if m.error() is not None:
                            continue
                        h = dict(m.headers() or [])
                        if OFFSET_HEADER in h:
                            out[(t, i)] = (int(h[OFFSET_HEADER]), m.offset())
                    if msgs and msgs[-1].error() is None and msgs[-1].offset() >= hi - 1:
                        break
                c.unassign()
    finally:
        c.close()
    return out


def mirror_status(spec: MirrorSpec) -> list[dict]:
    """Lag of a mirror from the outside (no state of its own): per partition, the
    next source offset (from the target's tail), the source's end, the lag in
    records and the age in seconds of the oldest record not yet copied."""
    from confluent_kafka import Consumer, TopicPartition

    src_admin = Mirror(spec)._admin("source")
    md = src_admin.list_topics(timeout=10)
    re_t = re.compile(spec.topics)
    topics = {n: len(t.partitions) for n, t in md.topics.items() if not _internal(n) and re_t.fullmatch(n)}
    pos = target_positions(spec.target, spec.target_config, topics)
    c = Consumer({"bootstrap.servers": spec.source, "group.id": "umlog-mirror-status", "enable.auto.commit": False,
                  **spec.source_config})
    now = int(time.time() * 1000)
    out = []
    try:
        for (t, i), last in sorted(pos.items()):
            lo, hi = c.get_watermark_offsets(TopicPartition(t, i), timeout=10)
            nxt = last[0] + 1 if last else lo
            lag = max(0, hi - nxt)
            age = 0.0
            if lag:
                c.assign([TopicPartition(t, i, nxt)])
                m = c.poll(10)
                if m is not None and m.error() is None:
                    age = max(0.0, (now - m.timestamp()[1]) / 1000)
                c.unassign()
            out.append({"topic": t, "partition": i, "source_end": hi, "next": nxt, "target_offset":
                        last[1] if last else None, "lag_records": lag, "lag_seconds": round(age, 3)})
    finally:
        c.close()
    return out


def spec_from_options(o: dict[str, Any]) -> MirrorSpec:
    return MirrorSpec(source=o["from"], target=o["to"], topics=o["topics"], groups=o.get("groups"),
                      name=o.get("name") or "mirror", source_alias=o.get("source_alias") or "source",
                      target_alias=o.get("target_alias") or "target",
                      sync_interval_s=(o.get("sync_interval_ms") or 1000) / 1000,
                      checkpoint_interval_s=(o.get("checkpoint_interval_ms") or 5000) / 1000,
                      refresh_interval_s=(o.get("refresh_interval_ms") or 10_000) / 1000)

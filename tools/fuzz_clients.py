"""Fuzz ``umlog serve`` through real Kafka clients (confluent-kafka), not raw frames.

``fuzz_kafka.py`` sends frames no client would; this drives librdkafka into the
states clients really meet and checks what they do there. A seeded RNG picks one
action a step:

* ``produce``: a burst of 1-200 records from one of two producers (acks=all,
  not idempotent: the topics are deleted under them; a compression codec each);
* ``assign``: one of several consumers (``auto.offset.reset`` drawn among
  earliest / latest / error, again whenever it is replaced) is assigned an
  offset: past the end, below the start (once retention moved it), in range,
  OFFSET_BEGINNING or OFFSET_END;
* ``retention``: a topic's retention.bytes / retention.ms altered through the
  admin API (IncrementalAlterConfigs), or set back to the defaults; the topics
  have small segments and the server's cleaner runs every second
  (``--cleaner-interval-ms``), so start offsets move while clients read;
* ``delete`` / ``create``: a topic deleted and later created again, while
  consumers stay assigned to it and producers go on producing to it;
* ``replace``: a consumer closed and a new one made with another reset policy.

Between actions every client is polled. Invariants, checked all along and at
the end (the first broken one stops the run with a ``Violation``):

* no librdkafka log (every client's, through confluent-kafka's ``logger`` with
  protocol debugging on) has a PROTOERR or "parse failure" line;
* the server is alive and its log has no Traceback, "internal error" or ERROR;
* every consumer recovers: the first record after an assignment is where Kafka
  puts it (the start offset after an out-of-range reset to earliest or
  OFFSET_BEGINNING; at or past the old end for latest; the offset asked for
  when in range), an out-of-range error is reported only under ``error``, and
  no consumer stays without progress (a record, or the error it asked for) for
  ``--stuck`` seconds while its topic exists: a consumer waiting at the end is
  sent a probe record every few seconds, so "no progress" is never "nothing
  came to read";
* every record a consumer reads carries its own topic's name;
* at the end (after every consumer made progress once more, and the server
  stopped with SIGTERM and exit code 0): the data dir is whole
  (``harness.check_data_dir``), and, read with the embedded API read-only,
  every record acknowledged in a topic's last incarnation (produced and
  acknowledged with no deletion of the topic since) is at its acknowledged
  offset unless retention removed it (offset below the start), and every
  record a consumer read from that incarnation is the one stored there.

Usage::

    python tools/fuzz_clients.py --seconds 600 --seed 7
    python tools/fuzz_clients.py --seconds 60 --data-dir /var/tmp/fc   # keep the data dir and server log

It prints one line of JSON (counts, ``ok``, the violation if any) and exits 1
when an invariant broke.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import confluent_kafka as ck
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)
from harness import Server, check_data_dir, read_all

import umlog

TOPICS = ("fc0", "fc1", "fc2")
SEGMENT_BYTES = 16_384  # small: retention has whole segments to delete
RESETS = ("earliest", "latest", "error")
CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
PROTOCOL_ERROR = re.compile(r"PROTOERR|parse failure", re.IGNORECASE)
SERVER_FAILURE = re.compile(r"Traceback|internal error| ERROR ")
PAST_END = 1_000_000  # far enough that no burst can bring the end up to it meanwhile
# Of an action a step. A topic is deleted about every 15 s (while one is gone,
# "create" brings it back in about a second); consumers are moved only once they
# made progress, so every assignment is checked (see Fuzz.act_assign).
STEP_S = 0.05  # a step's least duration: about 20 actions a second
WEIGHTS = {"produce": 20, "assign": 8, "retention": 3, "delete": 0.2, "create": 0, "replace": 1, "idle": 8}


class Violation(AssertionError):
    """An invariant broke; the message says which and where."""


class ClientLog(logging.Handler):
    """One client's librdkafka log: lines counted, protocol errors kept (not
    every line: protocol debugging is a flood on a long run)."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.DEBUG)
        self.name = name
        self.logger = logging.getLogger(f"fuzz_clients.{name}")
        self.logger.addHandler(self)
        self.logger.setLevel(logging.DEBUG)
        self.logger.propagate = False
        self.lines = 0
        self.errors: list[str] = []
        self.recent: collections.deque[str] = collections.deque(maxlen=400)  # shown with a violation

    def emit(self, record: logging.LogRecord) -> None:
        self.lines += 1
        try:
            msg = record.getMessage()
        except Exception:  # a line that cannot be formatted is still checked
            msg = repr(record.msg)
        self.recent.append(msg)
        if PROTOCOL_ERROR.search(msg):
            self.errors.append(msg)

    def close(self) -> None:
        self.logger.removeHandler(self)
        super().close()


def value(topic: str, gen: int, seq: int, rnd: random.Random) -> bytes:
    """``topic|incarnation|seq|`` and padding: a record tells where it was meant to go."""
    head = f"{topic}|{gen}|{seq}|".encode()
    return head + b"x" * rnd.randrange(0, 400)


def parse(v: bytes) -> tuple[str, int, int]:
    topic, gen, seq, _ = v.split(b"|", 3)
    return topic.decode(), int(gen), int(seq)


class Topic:
    """What the fuzzer knows of one topic: its incarnation (``gen``, one more per
    creation), whether it exists, and when it was last created."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.gen = 0
        self.exists = False
        self.created_at = 0.0


class Consumer:
    """One confluent-kafka consumer, assigned one partition at a time."""

    def __init__(self, fz: Fuzz, index: int, reset: str) -> None:
        self.fz = fz
        self.name = f"c{index}.{fz.counters['consumers']}"
        fz.counters["consumers"] += 1
        self.reset = reset
        self.log = ClientLog(self.name)
        fz.logs.append(self.log)
        self.c = ck.Consumer({
            "bootstrap.servers": fz.server.bootstrap, "group.id": f"fuzz-{self.name}",
            "enable.auto.commit": False, "auto.offset.reset": reset, "logger": self.log.logger,
            # protocol: parse failures in full; the rest is the log tail a violation shows.
            "debug": "protocol,fetch,topic,consumer", "fetch.wait.max.ms": 100,
            "topic.metadata.refresh.interval.ms": 1000,
            "socket.timeout.ms": int(fz.scale * 30_000), "session.timeout.ms": int(fz.scale * 30_000),
        })
        self.topic: Topic | None = None
        self.gen = -1  # the topic's incarnation when assigned
        self.since = time.monotonic()  # the start of the current wait for progress
        self.last_probe = 0.0
        self.expect: dict | None = None  # where the first record after an assignment must be
        self.needs_recovery = False  # reported out of range, not yet moved back in range
        self.seen: dict[str, int] = {}  # topic -> the first incarnation this consumer was assigned

    def assign(self, topic: Topic, offset: int, kind: str, low: int, high: int) -> None:
        self.c.assign([ck.TopicPartition(topic.name, 0, offset)])
        self.topic, self.gen = topic, topic.gen
        self.seen.setdefault(topic.name, topic.gen)
        self.since = time.monotonic()
        self.expect = {"kind": kind, "offset": offset, "low": low, "high": high, "gen": topic.gen}

    def progress(self) -> None:
        self.since = time.monotonic()

    def close(self) -> None:
        self.c.close()


class Fuzz:
    def __init__(self, server: Server, rnd: random.Random, scale: float, stuck_s: float) -> None:
        self.server = server
        self.rnd = rnd
        self.scale = scale
        self.stuck_s = stuck_s * scale
        self.probe_s = 3 * scale
        self.counters: Counter = Counter()
        self.logs: list[ClientLog] = []
        self.topics = {n: Topic(n) for n in TOPICS}
        self.seq = 0
        # seq -> (topic, gen at produce); acknowledged: (topic, gen, offset, value) checked at the end
        self.pending: dict[int, tuple[str, int]] = {}
        self.acked: list[tuple[str, int, int, bytes]] = []
        self.consumed: dict[str, dict[int, bytes]] = {n: {} for n in TOPICS}  # records read, by value's gen
        self.consumed_gen: dict[str, dict[int, int]] = {n: {} for n in TOPICS}
        admin_log = ClientLog("admin")
        self.logs.append(admin_log)
        self.admin = AdminClient({"bootstrap.servers": server.bootstrap, "logger": admin_log.logger,
                                  "debug": "protocol"})
        self.producers = []
        for i, codec in enumerate(rnd.sample(CODECS, 2)):
            plog = ClientLog(f"p{i}")
            self.logs.append(plog)
            self.producers.append(ck.Producer({
                "bootstrap.servers": server.bootstrap, "logger": plog.logger, "debug": "protocol",
                "acks": "all", "enable.idempotence": False, "compression.type": codec,
                # A batch must fit a segment (RECORD_LIST_TOO_LARGE otherwise).
                "batch.size": SEGMENT_BYTES // 2,
                "linger.ms": rnd.choice([0, 5, 50]), "message.timeout.ms": int(scale * 20_000),
                "topic.metadata.refresh.interval.ms": 1000, "topic.metadata.propagation.max.ms": 1000,
            }))
        self.consumers = [Consumer(self, i, rnd.choice(RESETS)) for i in range(4)]
        self.log_checked = 0
        self.weights = dict(WEIGHTS)
        self.last_pump = self.t0 = time.monotonic()
        self.trail: collections.deque[str] = collections.deque(maxlen=300)  # shown with a violation

    def note(self, *what) -> None:
        self.trail.append(f"{time.monotonic() - self.t0:8.2f} " + " ".join(map(str, what)))

    # --- helpers, every one bounded in time ---------------------------------------------------

    def result(self, futures: dict, what: str) -> bool:
        """Wait for an admin call; False if the server refused it (a race the fuzzer made)."""
        ok = True
        for f in futures.values():
            try:
                f.result(timeout=30 * self.scale)
            except ck.KafkaException as e:
                self.counters[f"admin_refused:{e.args[0].name()}"] += 1
                ok = False
        return ok

    def watermarks(self, c: Consumer, topic: Topic) -> tuple[int, int] | None:
        try:
            return c.c.get_watermark_offsets(ck.TopicPartition(topic.name, 0), timeout=10 * self.scale)
        except ck.KafkaException as e:
            self.counters[f"watermarks_failed:{e.args[0].name()}"] += 1
            return None

    def produce(self, topic: Topic, n: int, producer=None) -> None:
        p = producer or self.rnd.choice(self.producers)
        for _ in range(n):
            self.seq += 1
            seq = self.seq
            gen = topic.gen
            try:
                p.produce(topic.name, value(topic.name, gen, seq, self.rnd), partition=0,
                          on_delivery=lambda err, msg, seq=seq: self.delivered(err, msg, seq))
            except BufferError:
                self.counters["produce_queue_full"] += 1
                p.poll(0.1)
                continue
            except ck.KafkaException as e:  # the producer knows the topic is gone
                self.counters[f"produce_refused:{e.args[0].name()}"] += 1
                return
            self.pending[seq] = (topic.name, gen)
            self.counters["produced"] += 1

    def delivered(self, err, msg, seq: int) -> None:
        name, gen = self.pending.pop(seq)
        if err is not None:
            self.counters[f"delivery_failed:{err.name()}"] += 1
            return
        self.counters["acked"] += 1
        t = self.topics[name]
        if t.exists and t.gen == gen:  # produced and acknowledged in one incarnation
            self.acked.append((name, gen, msg.offset(), msg.value()))

    # --- actions ------------------------------------------------------------------------------

    def act_produce(self) -> None:
        t = self.topics[self.rnd.choice(TOPICS)]
        self.produce(t, self.rnd.choice([1, 5, 20, 100, 200]))

    def act_assign(self) -> None:
        # Only a consumer that has shown progress since its last assignment is
        # moved: every assignment stays until its first record (or error) is
        # checked, and one that never comes is a stuck consumer, not a lost case.
        c = self.rnd.choice(self.consumers)
        if c.expect is not None or c.needs_recovery:
            return
        t = self.topics[self.rnd.choice(TOPICS)]
        if not t.exists:
            return
        wm = self.watermarks(c, t)
        if wm is None:
            return
        low, high = wm
        kinds = ["past_end", "in_range", "beginning", "end"] + (["below_start"] if low > 0 else [])
        kind = self.rnd.choice(kinds)
        offset = {"past_end": high + PAST_END + self.rnd.randrange(1000),
                  "below_start": self.rnd.randrange(low) if low > 0 else 0,
                  "in_range": self.rnd.randint(low, high), "beginning": ck.OFFSET_BEGINNING,
                  "end": ck.OFFSET_END}[kind]
        c.assign(t, offset, kind, low, high)
        self.note(c.name, c.reset, "assigned", t.name, t.gen, kind, offset, "watermarks", low, high)
        self.counters[f"assign:{kind}"] += 1

    def act_retention(self) -> None:
        t = self.topics[self.rnd.choice(TOPICS)]
        if not t.exists:
            return
        choice = self.rnd.choice(["bytes", "ms", "off"])
        if choice == "bytes":
            ops = [ConfigEntry("retention.bytes", str(self.rnd.randrange(2 * SEGMENT_BYTES, 8 * SEGMENT_BYTES)),
                               incremental_operation=AlterConfigOpType.SET)]
        elif choice == "ms":
            ops = [ConfigEntry("retention.ms", str(self.rnd.randrange(500, 5000)),
                               incremental_operation=AlterConfigOpType.SET)]
        else:
            ops = [ConfigEntry(k, None, incremental_operation=AlterConfigOpType.DELETE)
                   for k in ("retention.bytes", "retention.ms")]
        res = ConfigResource(ResourceType.TOPIC, t.name, incremental_configs=ops)
        self.note("retention", t.name, [(o.name, o.value) for o in ops])
        if self.result(self.admin.incremental_alter_configs([res]), f"retention of {t.name}"):
            self.counters[f"retention:{choice}"] += 1

    def act_delete(self) -> None:
        t = self.topics[self.rnd.choice(TOPICS)]
        if not t.exists:
            return
        t.exists = False  # before the call: a delivery report in between is not of this incarnation
        if not self.result(self.admin.delete_topics([t.name], operation_timeout=30 * self.scale),
                           f"delete {t.name}"):
            t.exists = True
            return
        self.counters["deleted"] += 1
        self.note("deleted", t.name, t.gen)
        self.weights["create"] = 3

    def act_create(self) -> None:
        gone = [t for t in self.topics.values() if not t.exists]
        if not gone:
            self.weights["create"] = 0
            return
        self.create(self.rnd.choice(gone))

    def create(self, t: Topic) -> None:
        nt = NewTopic(t.name, num_partitions=1, replication_factor=1, config={"segment.bytes": str(SEGMENT_BYTES)})
        if not self.result(self.admin.create_topics([nt], operation_timeout=30 * self.scale), f"create {t.name}"):
            return
        t.gen += 1
        t.exists = True
        t.created_at = time.monotonic()
        self.note("created", t.name, t.gen)
        self.counters["created"] += 1

    def act_replace(self) -> None:
        i = self.rnd.randrange(len(self.consumers))
        if self.consumers[i].expect is not None or self.consumers[i].needs_recovery:
            return
        self.consumers[i].close()
        self.consumers[i] = Consumer(self, i, self.rnd.choice(RESETS))
        self.counters["replaced"] += 1

    def act_idle(self) -> None:
        self.pump(0.2)

    # --- polling and the invariants -------------------------------------------------------------

    def pump(self, pace: float = STEP_S) -> None:
        """Poll every client once, check the invariants, and let ``pace`` seconds pass
        since the last pump (the clients work in their own threads meanwhile)."""
        for p in self.producers:
            p.poll(0)
        self.admin.poll(0)  # serves its log lines
        for c in self.consumers:
            for m in c.c.consume(500, 0):
                self.received(c, m)
        self.check_stuck()
        self.check_logs()
        rest = self.last_pump + pace - time.monotonic()
        if rest > 0:  # pacing, not synchronisation: the actions' rate stays what WEIGHTS says
            time.sleep(rest)
        self.last_pump = time.monotonic()

    def received(self, c: Consumer, m) -> None:
        err = m.error()
        if err is not None:
            if err.code() == ck.KafkaError._AUTO_OFFSET_RESET:
                if c.reset != "error":
                    raise Violation(f"{c.name} (reset={c.reset}) reported {err.str()}")
                self.counters["out_of_range_reported"] += 1
                c.progress()
                c.expect = None
                c.needs_recovery = True
                self.recover(c)
            else:
                self.counters[f"consumer_error:{err.name()}"] += 1
            return
        topic, gen, _ = parse(m.value())
        if topic != m.topic():
            raise Violation(f"{c.name} read a record of {topic} from {m.topic()} at {m.offset()}")
        self.counters["consumed"] += 1
        self.consumed[topic][m.offset()] = m.value()
        self.consumed_gen[topic][m.offset()] = gen
        c.progress()
        if c.expect is not None:
            self.check_first(c, m)
            c.expect = None

    def check_first(self, c: Consumer, m) -> None:
        """The first record after an assignment is where Kafka's rules put it. Skipped
        when the topic was created again meanwhile (the offsets are another log's)."""
        e, t = c.expect, c.topic
        if t is None or not t.exists or t.gen != e["gen"] or m.topic() != t.name:
            return
        wm = self.watermarks(c, t)
        if wm is None:
            return
        low_now = wm[0]
        o, kind = m.offset(), e["kind"]
        out_of_range = kind in ("past_end", "below_start")
        if kind == "beginning" or out_of_range and c.reset == "earliest":
            # librdkafka resolves BEGINNING to the log start offset of the last Fetch
            # answer it had for the partition, when it has one (rd_kafka_offset_reset:
            # "cached BEGINNING offset"). Within one incarnation that is at most the
            # start: a record at the start when the reset ran (between the start at
            # assignment and now), or, once retention passed it, OFFSET_OUT_OF_RANGE
            # and the reset policy again (under latest: the end). Of a topic created
            # again that cache can be any offset of the old log: not checked.
            if c.seen.get(t.name, t.gen) != t.gen:
                self.counters[f"first_unchecked_stale_start:{kind}"] += 1
                return
            ok = e["low"] <= o <= low_now or c.reset == "latest" and o >= e["high"]
        elif kind == "end" or out_of_range and c.reset == "latest":
            ok = o >= e["high"]
        elif kind == "in_range":
            ok = o == e["offset"] or (low_now > e["offset"] and o >= e["low"])  # retention passed it
        else:  # out of range under "error": the error comes first, never a record
            ok = False
        self.counters[f"first_checked:{kind}"] += 1
        if not ok:
            tail = "\n".join(c.log.recent)
            raise Violation(f"{c.name} (reset={c.reset}) assigned {kind} {e} of {t.name}: first record at {o}, "
                            f"start now {low_now}; its log:\n{tail}")

    def recover(self, c: Consumer) -> None:
        """After the out-of-range error a consumer under ``error`` is moved back in range."""
        t = c.topic
        if t is None or not t.exists:
            return
        wm = self.watermarks(c, t)
        if wm is not None:
            c.assign(t, wm[0], "in_range", wm[0], wm[1])
            c.needs_recovery = False
            self.counters["recovered"] += 1

    def check_stuck(self) -> None:
        now = time.monotonic()
        for c in self.consumers:
            t = c.topic
            if t is None or not t.exists:
                continue
            if c.needs_recovery:  # the watermarks could not be read: again
                self.recover(c)
            since = max(c.since, t.created_at)
            if now - since > self.stuck_s:
                raise Violation(f"{c.name} (reset={c.reset}, expect={c.expect}) made no progress on {t.name} "
                                f"for {now - since:.1f} s")
            if now - since > self.probe_s and now - c.last_probe > self.probe_s:
                c.last_probe = now
                self.produce(t, 1)
                self.counters["probes"] += 1

    def check_logs(self, force: bool = False) -> None:
        for lg in self.logs:
            if lg.errors:
                raise Violation(f"{lg.name} logged a protocol error: {lg.errors[:3]}")
        self.counters["steps"] += 1
        if not force and self.counters["steps"] % 50:
            return
        if not self.server.alive():
            raise Violation(f"the server died:\n{self.server.log_text()[-3000:]}")
        text = self.server.log_text()
        bad = [ln for ln in text[self.log_checked:].splitlines() if SERVER_FAILURE.search(ln)]
        if bad:
            raise Violation(f"the server logged a failure: {bad[:5]}\n{text[-3000:]}")
        self.log_checked = len(text)

    # --- the run ----------------------------------------------------------------------------------

    def step(self) -> None:
        names = list(self.weights)
        action = self.rnd.choices(names, [self.weights[n] for n in names])[0]
        self.counters[f"action:{action}"] += 1
        self.note(action)
        getattr(self, f"act_{action}")()
        self.pump()

    def settle(self) -> None:
        """The end: every topic exists, and every consumer makes progress once more."""
        for t in self.topics.values():
            if not t.exists:
                self.create(t)
        if not all(t.exists for t in self.topics.values()):
            raise Violation("a topic could not be created again at the end")
        start = time.monotonic()
        for c in self.consumers:
            if c.topic is None:
                t = self.topics[self.rnd.choice(TOPICS)]
                c.assign(t, ck.OFFSET_BEGINNING, "beginning", 0, 0)
            c.since = c.last_probe = start
        waiting = list(self.consumers)
        while waiting:  # check_stuck raises after stuck_s without progress
            self.pump(0.05)
            waiting = [c for c in waiting if c.since == start]

    def close(self) -> None:
        for p in self.producers:
            left = p.flush(30 * self.scale)
            if left:
                self.counters["unflushed"] += left
        for c in self.consumers:
            c.close()
        self.check_logs(force=True)
        for lg in self.logs:
            lg.close()


def verify(data: str, fz: Fuzz) -> dict:
    """The data dir after the server stopped: whole, and holding every record acknowledged
    (and every record read) in each topic's last incarnation at or above its start offset."""
    scanned = check_data_dir(data)
    checked = retained_away = consumed_checked = 0
    stored = {name: read_all(data, name)[0] for name in TOPICS}
    b = umlog.open(data, readonly=True)
    try:
        ranges = {name: (b.topic(name).partition(0).start_offset, b.topic(name).partition(0).end_offset)
                  for name in TOPICS}
    finally:
        b.close()
    for name, gen, offset, v in fz.acked:
        if gen != fz.topics[name].gen:
            continue
        start, end = ranges[name]
        if offset < start:
            retained_away += 1
            continue
        got = stored[name].get(offset)
        if got != v:
            raise Violation(f"acknowledged {name}@{offset} ({v[:40]!r}) lost: stored {(got or b'')[:40]!r}, "
                            f"partition [{start}, {end})")
        checked += 1
    for name, records in fz.consumed.items():
        s, gen = stored[name], fz.topics[name].gen
        for offset, v in records.items():
            if fz.consumed_gen[name][offset] != gen or offset < ranges[name][0]:
                continue
            if s.get(offset) != v:
                raise Violation(f"a consumer read {name}@{offset} = {v[:40]!r}, stored {s.get(offset, b'')[:40]!r}")
            consumed_checked += 1
    return {"acked_checked": checked, "acked_retained_away": retained_away, "consumed_checked": consumed_checked,
            "batches_scanned": scanned["batches"], "end_offsets": [ranges[n][1] for n in TOPICS]}


def run(work: str, *, seconds: float = 60.0, seed: int | None = None, scale: float = 1.0, stuck: float = 20.0,
        log=print) -> dict:
    """Fuzz a fresh server in ``work`` for ``seconds``; returns counts, raises Violation
    (with the counts so far as its ``summary``)."""
    seed = seed if seed is not None else random.randrange(1 << 32)
    rnd = random.Random(seed)
    data = os.path.join(work, "data")
    # --no-auto-create: a deleted topic comes back only when the fuzzer creates it.
    server = Server(data, "--no-auto-create", "--cleaner-interval-ms", "1000")
    summary: dict = {"seed": seed}
    t0 = time.monotonic()
    fz = None
    try:
        server.start(timeout=120 * scale)
        try:
            log(f"fuzz_clients: seed {seed}, server on {server.bootstrap}, data in {data}")
            fz = Fuzz(server, rnd, scale, stuck)
            for t in fz.topics.values():
                fz.create(t)
            deadline = t0 + seconds
            while time.monotonic() < deadline:
                fz.step()
            fz.settle()
            fz.close()
            summary["rss_mb"] = round(server.rss_kb() / 1024, 1)
        finally:
            rc = server.stop(30 * scale)
            if fz is not None:
                summary.update(sorted(fz.counters.items()))
                summary["librdkafka_lines"] = sum(lg.lines for lg in fz.logs)
                summary["protocol_errors"] = sum(len(lg.errors) for lg in fz.logs)
            summary["seconds"] = round(time.monotonic() - t0, 1)
        if rc != 0:
            raise Violation(f"server exit code {rc}:\n{server.log_text()[-3000:]}")
        bad = [ln for ln in server.log_text().splitlines() if SERVER_FAILURE.search(ln)]
        if bad:
            raise Violation(f"the server logged a failure: {bad[:5]}")
        summary.update(verify(data, fz))
    except Violation as e:
        e.summary = summary
        if fz is not None:
            e.args = (f"{e.args[0]}\n--- the fuzzer's last actions:\n" + "\n".join(fz.trail),)
        raise
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="of random actions (the end's checks come after)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--data-dir", default=None,
                    help="work here (data dir DIR/data, server log DIR/data.server.log) and keep it")
    ap.add_argument("--stuck", type=float, default=20.0, help="seconds without progress that fail a consumer")
    ap.add_argument("--time-scale", type=float,
                    default=float(os.environ.get("UMLOG_TEST_TIME_SCALE", "3" if os.environ.get("CI") else "1")),
                    help="multiplies every deadline (as the test suite's UMLOG_TEST_TIME_SCALE)")
    a = ap.parse_args()
    work = a.data_dir or tempfile.mkdtemp(prefix="umlog-fuzz-clients-")
    os.makedirs(work, exist_ok=True)
    seed = a.seed if a.seed is not None else random.randrange(1 << 32)
    summary: dict = {"seed": seed}
    ok = False
    try:
        summary = run(work, seconds=a.seconds, seed=seed, scale=a.time_scale, stuck=a.stuck,
                      log=lambda *x: print(*x, file=sys.stderr))
        ok = True
    except Violation as e:
        summary = getattr(e, "summary", summary)
        text = str(e)
        summary["violation"] = text.splitlines()[0][:1000]
        with open(os.path.join(work, "violation.txt"), "w") as f:  # with the client's log tail
            f.write(text + "\n")
    finally:
        summary["ok"] = ok
        if not ok or a.data_dir:
            summary["work_dir"] = work
        else:
            shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(summary))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

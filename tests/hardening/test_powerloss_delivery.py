"""Power loss under delayed delivery and share groups, over a file system that forgets everything not
fsync'd (tools/powerloss_fs.py; see test_powerloss.py for the mount and its rules). All with
``fsync="always"``: what a call acknowledged is durable when it returns.

Delayed delivery. A writer process (``fsync="always"``) appends records with
``umlog-deliver-at`` (due at once, within a second or two, or a few seconds
later), one at a time and in mixed batches with plain records, and reports
each acknowledgement the moment the call returns, while its scheduler thread
delivers what comes due. The power is cut after a seeded number of
acknowledgements (records pending, records being delivered), the writer
killed, the file system mounted again with the durable state only. Then a
second process opens the data dir and its scheduler delivers the backlog,
and the power is cut again after a seeded pause (while it delivers). After
the cycles the data dir is opened and left to deliver everything due:

* every acknowledged delayed record is delivered exactly once (no loss, no
  duplicate), every acknowledged plain record is there once;
* none was delivered before its time: the target topic is ``LogAppendTime``,
  so a delivered record's timestamp is when it was appended, which must not
  be before the due time its value carries;
* the index holds nothing once everything is due.

With ``fsync="interval"`` (100 ms) the same, except that what was
acknowledged in the last interval (plus a slack for a busy machine) before a
cut may be lost; whatever is delivered, is delivered once and not early.

The same through ``umlog serve --fsync always`` and a confluent-kafka
idempotent producer (``-m slow``: a server takes 10 s or more to start on
the mount).

Share groups. A topic of 600 records; a process appends a record, acquires
up to 20, acknowledges most, releases some (at once) and rejects a few to the
dead-letter topic, reporting each call when it returns, in a loop; the power
is cut after a seeded number of acknowledgements, several times. Then:

* no acknowledged record is handed out again, in a later cycle or when the
  rest of the queue is drained after the last cut;
* every rejected record is dead-lettered once, none twice, none both
  acknowledged and dead-lettered;
* every record of the topic was acknowledged, dead-lettered or is handed out
  in the final drain (nothing is lost).

A mutation check (not kept): with the share state's appends not synced, the
share test fails at once (acknowledged records handed out again); with the
forward stream's skip of records already appended disabled, the delay test
finds duplicates.
"""

from __future__ import annotations

import collections
import os
import random
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from helpers import scaled, subprocess_env, wait_until

import umlog
from hardening.test_powerloss import Writer, disk, interval_slack  # noqa: F401  (disk is a fixture)

DELAY_CHILD = textwrap.dedent("""
    import os, random, sys, time
    import umlog

    def say(line):
        os.write(1, (line + "\\n").encode())  # one write: a line is whole or absent

    data, seed, start, mode, fsync = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    b = umlog.open(data, fsync=fsync, interval_ms=100, cleaner_interval_ms=None)
    if "t" not in b.topics():
        b.create_topic("t", 2, config={"message.timestamp.type": "LogAppendTime", "segment.bytes": 8192})
    say("O")
    if mode == "idle":  # only the scheduler works: the backlog is delivered
        sys.stdin.read()
        sys.exit(0)
    rnd = random.Random(seed)
    t = b.topic("t")
    i = start
    while True:
        now = int(time.time() * 1000)
        n = rnd.choice((1, 1, 3))
        values, headers, delayed = [], [], []
        for _ in range(n):
            if n > 1 and rnd.random() < 0.3:
                values.append(b"p%d" % i)
                headers.append(None)
            else:
                due = now + rnd.choice((0, rnd.randint(0, 1500), rnd.randint(2000, 5000)))
                values.append(b"d%d %d" % (i, due))
                headers.append([("umlog-deliver-at", b"%d" % due), ("n", b"%d" % i)])
                delayed.append((i, due))
            i += 1
        if n == 1:
            t.append(values[0], headers=headers[0], partition=i % 2)
        else:
            t.append_many(values, headers=headers, partition=i % 2)
        t_ack = time.monotonic()
        for v in values:
            say(f"A {v.decode()} {t_ack}")
""")


class Child(Writer):
    """A ``python -c SCRIPT ARGS`` child whose lines are collected as the power-loss writer's are."""

    def __init__(self, log_path: str, script: str, *args: str) -> None:
        self.lines: list[str] = []
        self.done = False
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", script, *args], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=log, env=subprocess_env(),
                                         cwd=os.path.dirname(log_path))
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()


def _delay_child(tmp_path, data: str, name: str, seed: int, start: int, mode: str, fsync: str) -> Child:
    return Child(str(tmp_path / f"{name}.log"), DELAY_CHILD, data, str(seed), str(start), mode, fsync)


class DelayLedger:
    """What the writers had acknowledged: delayed values by number with their due time, plain values.

    ``add(lines, lost_ok_after)``: acknowledgements at or after that monotonic time (the last
    ``interval_ms`` before a cut under ``fsync="interval"``) may be lost, and are not counted."""

    def __init__(self) -> None:
        self.delayed: dict[int, int] = {}
        self.plain: set[bytes] = set()
        self.may_be_lost = 0

    def add(self, lines: list[str], lost_ok_after: float | None = None) -> None:
        for line in lines:
            f = line.split(" ")
            if f[0] != "A":
                continue
            t_ack = float(f[-1]) if len(f) > 2 + f[1].startswith("d") else None
            if lost_ok_after is not None and t_ack is not None and t_ack >= lost_ok_after:
                self.may_be_lost += 1
            elif f[1].startswith("d"):
                self.delayed[int(f[1][1:])] = int(f[2])
            else:
                self.plain.add(f[1].encode())


def _delivered(b) -> tuple[collections.Counter, list[tuple[int, int, int]], collections.Counter]:
    """Delayed numbers delivered (counted), (number, due, append time) of each, plain values (counted)."""
    got, times, plain = collections.Counter(), [], collections.Counter()
    for p in b.topic("t").partitions:
        for r in p.read(p.start_offset):
            if r.value.startswith(b"d"):
                n, due = (int(x) for x in r.value[1:].split(b" "))
                got[n] += 1
                times.append((n, due, r.timestamp))
            else:
                plain[r.value] += 1
    return got, times, plain


def check_delayed(data: str, ledger: DelayLedger) -> dict:
    """Open the data dir, let its scheduler deliver everything due, and check the ledger against the target."""
    last_due = max(ledger.delayed.values(), default=0)
    b = umlog.open(data, fsync="always", cleaner_interval_ms=None)
    try:
        s = b.hooks.delay.scheduler
        assert s is not None, "the scheduler did not start on a data dir with __delayed"
        wait_until(lambda: time.time() * 1000 > last_due + 50, 30, "the last due time")

        def settled():
            got = _delivered(b)[0]
            return s.pending() == 0 and set(ledger.delayed) <= set(got)
        wait_until(settled, scaled(60), "every acknowledged delayed record delivered", interval=0.05)
        time.sleep(0.3)  # a duplicate would come in the next rounds
        got, times, plain = _delivered(b)
    finally:
        b.close()
    lost = sorted(set(ledger.delayed) - set(got))
    dup = sorted(n for n, c in got.items() if c > 1)
    early = [(n, due, ts) for n, due, ts in times if ts < due]
    plain_lost = sorted(ledger.plain - set(plain))
    plain_dup = sorted(v for v, c in plain.items() if c > 1)
    assert not lost, f"{len(lost)} acknowledged delayed records never delivered: {lost[:20]}"
    assert not dup, f"{len(dup)} delayed records delivered more than once: {dup[:20]}"
    assert not early, f"{len(early)} delivered before their time (number, due, appended): {early[:10]}"
    assert not plain_lost, f"acknowledged plain records lost: {plain_lost[:20]}"
    assert not plain_dup, f"plain records stored twice: {plain_dup[:20]}"
    return {"delayed": len(ledger.delayed), "delivered": sum(got.values()), "plain": len(ledger.plain),
            "may_be_lost": ledger.may_be_lost}


def run_delay_cycles(disk, tmp_path, *, seed: int, cycles: int, min_acks: int, max_acks: int,  # noqa: F811
                     max_idle_s: float, fsync: str = "always") -> dict:
    rnd = random.Random(seed)
    data = os.path.join(disk.mountpoint, "data")
    ledger = DelayLedger()
    cuts = []
    for cycle in range(cycles):
        target = rnd.randint(min_acks, max_acks)
        w = _delay_child(tmp_path, data, f"writer-{cycle}", seed * 100 + cycle, cycle * 1_000_000, "write", fsync)
        lost_ok_after = None
        try:
            wait_until(lambda w=w, n=target: w.progress(n), scaled(120), f"{target} acknowledgements",
                       interval=0.005)
            if fsync == "interval":  # the flusher syncs every 100 ms; a loaded machine delays it
                horizon = 0.1 + interval_slack()
                t_first = float(next(x for x in w.lines if x.startswith("A ")).split(" ")[-1])
                wait_until(lambda t=t_first + horizon + 0.5: time.monotonic() > t, horizon + 60,
                           "records older than the flush interval")
                lost_ok_after = time.monotonic() - horizon
            cuts.append(("writing", target, disk.cut()))
        finally:
            ledger.add(w.kill(), lost_ok_after)
        disk.remount()
        # The backlog: a fresh process delivers it, and the power goes again while it does.
        r = _delay_child(tmp_path, data, f"recover-{cycle}", 0, 0, "idle", fsync)
        try:
            wait_until(lambda r=r: "O" in r.lines or r.proc.poll() is not None, scaled(60), "the data dir open")
            assert "O" in r.lines, r.log_tail()
            pause = rnd.uniform(0, max_idle_s)
            time.sleep(pause)
            cuts.append(("delivering", round(pause, 2), disk.cut()))
        finally:
            r.kill()
        disk.remount()
    res = check_delayed(data, ledger)
    res["cuts"] = [(what, at, len(rep["files"])) for what, at, rep in cuts]
    return res


def test_delayed_delivery_survives_power_loss(disk, tmp_path):  # noqa: F811
    r = run_delay_cycles(disk, tmp_path, seed=1, cycles=2, min_acks=40, max_acks=150, max_idle_s=1.5)
    print(r)
    assert r["delayed"] >= 60


def test_delayed_delivery_fsync_interval_loses_at_most_the_interval(disk, tmp_path):  # noqa: F811
    r = run_delay_cycles(disk, tmp_path, seed=2, cycles=1, min_acks=100, max_acks=300, max_idle_s=1.5,
                         fsync="interval")
    print(r)
    assert r["delayed"] >= 30


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("fsync", ["always", "interval"])
def test_delayed_delivery_power_loss_long(disk, tmp_path, seed, fsync):  # noqa: F811
    r = run_delay_cycles(disk, tmp_path, seed=10 + seed, cycles=6, min_acks=5, max_acks=600, max_idle_s=4.0,
                         fsync=fsync)
    print(r)


class DelayProducer(threading.Thread):
    """A confluent-kafka idempotent producer (acks=all) of delayed and plain records to ``t``; every delivery
    report that came back without an error is an acknowledgement line (``A d<n> <due>`` or ``A p<n>``)."""

    def __init__(self, bootstrap: str, seed: int, start: int, rate: int = 400) -> None:
        super().__init__(daemon=True)
        from confluent_kafka import Producer

        self.rnd = random.Random(seed)
        self.n = start
        self.rate = rate
        self.lines: list[str] = []
        self.stop_event = threading.Event()
        self.p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                           "linger.ms": 5, "message.timeout.ms": 120_000, "retry.backoff.ms": 50,
                           "reconnect.backoff.ms": 50, "reconnect.backoff.max.ms": 500, "log_level": 2})

    def _report(self, err, msg) -> None:
        if err is None:
            v = msg.value().decode()
            self.lines.append("A " + v)

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop_event.is_set():
            n = self.n
            self.n += 1
            if self.rnd.random() < 0.2:
                self.p.produce("t", b"p%d" % n, partition=n % 2, on_delivery=self._report)
            else:
                due = int(time.time() * 1000) + self.rnd.choice((0, self.rnd.randint(0, 1500),
                                                                  self.rnd.randint(2000, 5000)))
                self.p.produce("t", b"d%d %d" % (n, due), partition=n % 2, on_delivery=self._report,
                               headers=[("umlog-deliver-at", b"%d" % due)])
            self.p.poll(0)
            ahead = (self.n - self.start_n) / self.rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)

    def start(self) -> None:
        self.start_n = self.n
        super().start()

    def close(self) -> None:
        self.stop_event.set()
        self.join(scaled(30))
        self.p.purge()
        self.p.poll(0)


@pytest.mark.clients
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_serve_delayed_delivery_survives_power_loss(disk, tmp_path):  # noqa: F811
    """The same through ``umlog serve --fsync always``: the Kafka door syncs the intents on its loop before
    the batch that claims them, and answers once the batch is synced. Slow: a server starts in 10 s or
    more on the FUSE mount, and each cycle starts two."""
    pytest.importorskip("confluent_kafka")
    from confluent_kafka.admin import AdminClient, NewTopic
    from harness import Server

    rnd = random.Random(7)
    data = os.path.join(disk.mountpoint, "data")
    ledger = DelayLedger()
    for cycle in range(3):
        server = Server(data, "--fsync", "always", port=0, log_path=str(tmp_path / f"server-{cycle}.log"))
        producer = None
        try:
            server.start(timeout=scaled(60))
            if cycle == 0:
                admin = AdminClient({"bootstrap.servers": server.bootstrap, "log_level": 2})
                admin.create_topics([NewTopic("t", num_partitions=2, replication_factor=1,
                                              config={"message.timestamp.type": "LogAppendTime"})])["t"].result(
                    scaled(30))
            producer = DelayProducer(server.bootstrap, seed=cycle, start=cycle * 1_000_000)
            producer.start()
            target = rnd.randint(100, 400)
            wait_until(lambda p=producer, n=target: len(p.lines) >= n, scaled(120), f"{target} deliveries")
            disk.cut()
            server.kill()  # no delivery report can come after this
        finally:
            server.kill()
            if producer is not None:
                producer.close()
                ledger.add(producer.lines)
        disk.remount()
        # The backlog, delivered by a server that loses the power again while at it.
        server = Server(data, "--fsync", "always", port=0, log_path=str(tmp_path / f"server-{cycle}b.log"))
        try:
            server.start(timeout=scaled(60))
            time.sleep(rnd.uniform(0, 1.5))
            disk.cut()
        finally:
            server.kill()
        disk.remount()
    r = check_delayed(data, ledger)
    print(r)
    assert r["delayed"] >= 100

# -- share groups ---------------------------------------------------------------------------------------

SHARE_SETTINGS = {"start": "earliest", "dead_letter": "q.dlq", "max_attempts": 1000, "backoff_ms": (0, 20)}
SHARE_CHILD = textwrap.dedent("""
    import os, random, sys
    import umlog

    def say(line):
        os.write(1, (line + "\\n").encode())  # one write: a line is whole or absent

    data, seed, settings = sys.argv[1], int(sys.argv[2]), eval(sys.argv[3])
    b = umlog.open(data, fsync="always", cleaner_interval_ms=None)
    t = b.topic("q")
    g = b.share_group("g", ["q"], **settings)
    rnd = random.Random(seed)
    i = 0
    while True:
        md = t.append(b"n%d_%d" % (seed, i), partition=i % 2)
        say(f"P {md.partition} {md.offset}")
        i += 1
        got = g.acquire(rnd.randint(1, 20), timeout=0.05)
        for r in got:
            say(f"G {r.partition} {r.offset}")
        acks, releases, rejects = [], [], []
        for r in got:
            x = rnd.random()
            (acks if x < 0.7 else releases if x < 0.9 else rejects).append(r)
        if acks:  # what is being acknowledged: whether it was, if the power goes now, is not known
            os.write(1, "".join(f"a {r.partition} {r.offset}\\n" for r in acks).encode())
            g.ack(acks)
            for r in acks:
                say(f"A {r.partition} {r.offset}")
        if releases:
            g.release(releases, delay_ms=0)
            for r in releases:
                say(f"L {r.partition} {r.offset}")
        if rejects:
            g.reject(rejects, "power-loss test")
            for r in rejects:
                say(f"J {r.partition} {r.offset}")
""")


def _dead_letters(b) -> collections.Counter:
    """(partition, offset) of each dead letter of q, counted."""
    from delivery.share_helpers import dead_letters

    if "q.dlq" not in b.topics():
        return collections.Counter()
    return collections.Counter((d["partition"], d["offset"]) for d in dead_letters(b, "q.dlq"))


def run_share_cycles(disk, tmp_path, *, seed: int, cycles: int, min_acks: int, max_acks: int) -> dict:  # noqa: F811
    rnd = random.Random(seed)
    data = os.path.join(disk.mountpoint, "data")
    with umlog.open(data, fsync="always", cleaner_interval_ms=None) as b:
        t = b.create_topic("q", 2)
        for p in range(2):
            t.append_many([b"q%d_%d" % (p, i) for i in range(300)], partition=p)
    runs: list[list[str]] = []
    cuts = []
    for cycle in range(cycles):
        target = rnd.randint(min_acks, max_acks)
        w = Child(str(tmp_path / f"share-{cycle}.log"), SHARE_CHILD, data, str(seed * 100 + cycle),
                  repr(SHARE_SETTINGS))
        try:
            wait_until(lambda w=w, n=target: w.progress(n), scaled(120), f"{target} acks", interval=0.005)
            cuts.append((target, len(disk.cut()["files"])))
        finally:
            runs.append(w.kill())
        disk.remount()
    # What the children were told, in order: an ack that returned is final. An
    # ack under way at a cut may or may not have been made durable.
    acked: set[tuple[int, int]] = set()
    maybe_acked: set[tuple[int, int]] = set()
    again = []
    produced, rejected = set(), set()
    for lines in runs:
        acking = set()
        for line in lines:
            f = line.split(" ")
            rec = (int(f[1]), int(f[2])) if len(f) == 3 else None
            if f[0] == "G" and rec in acked:
                again.append(rec)
            elif f[0] == "a":
                acking.add(rec)
            elif f[0] == "A":
                acked.add(rec)
                acking.discard(rec)
            elif f[0] == "P":
                produced.add(rec)
            elif f[0] == "J":
                rejected.add(rec)
        maybe_acked |= acking
    assert not again, f"acknowledged records handed out again after a power cut: {again[:20]}"
    # The rest of the queue, drained after the last cut.
    b = umlog.open(data, fsync="always", cleaner_interval_ms=None)
    try:
        g = b.share_group("g", ["q"], **SHARE_SETTINGS)
        drained: list[tuple[int, int]] = []
        while True:
            got = g.acquire(500, timeout=0.2)
            if not got:
                break
            drained += [(r.partition, r.offset) for r in got]
            g.ack(got)
        stored = {(p.index, r.offset) for p in b.topic("q").partitions for r in p.read(p.start_offset)}
        dead = _dead_letters(b)
    finally:
        b.close()
    assert produced <= stored, f"acknowledged appends lost: {sorted(produced - stored)[:20]}"
    twice = sorted(r for r, c in collections.Counter(drained).items() if c > 1)
    assert not twice, f"handed out twice in one drain: {twice[:20]}"
    assert not acked & set(drained), f"acknowledged, then handed out again: {sorted(acked & set(drained))[:20]}"
    dead_twice = sorted(r for r, c in dead.items() if c > 1)
    assert not dead_twice, f"dead-lettered twice: {dead_twice[:20]}"
    assert rejected <= set(dead), f"rejected, not dead-lettered: {sorted(rejected - set(dead))[:20]}"
    assert not set(dead) & acked, f"both acknowledged and dead-lettered: {sorted(set(dead) & acked)[:20]}"
    unsettled = stored - acked - set(drained) - set(dead) - maybe_acked
    assert not unsettled, f"{len(unsettled)} records never delivered: {sorted(unsettled)[:20]}"
    return {"acked": len(acked), "rejected": len(rejected), "drained": len(drained), "stored": len(stored),
            "acks_under_way_at_cuts": len(maybe_acked), "cuts": cuts}


def test_share_group_survives_power_loss(disk, tmp_path):  # noqa: F811
    r = run_share_cycles(disk, tmp_path, seed=3, cycles=3, min_acks=30, max_acks=200)
    print(r)
    assert r["acked"] >= 90


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("seed", range(4))
def test_share_group_power_loss_long(disk, tmp_path, seed):  # noqa: F811
    r = run_share_cycles(disk, tmp_path, seed=30 + seed, cycles=8, min_acks=5, max_acks=1500)
    print(r)

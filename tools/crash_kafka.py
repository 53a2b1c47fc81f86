"""Crash loop: librdkafka producers stream into ``umlog serve`` while it is SIGKILLed and restarted.

Every record a producer's delivery report acknowledged is remembered as
(partition, offset, value). After the last cycle the server is killed once
more, restarted (so the final read is served by a server that recovered from
an unclean stop), and every partition is read back through the Kafka door
(confluent-kafka consumer, ``check.crcs=true``); then the server is stopped
and every segment on disk is scanned with CRC checks. It checks:

* every acknowledged record is at the offset it was acknowledged at (a loss
  or a move is a failure);
* every stored batch is whole and CRC-valid, offsets dense (recovery never
  serves or keeps a corrupt batch). To give recovery work, after each kill
  some partitions get a torn write appended to their active segment (a batch
  cut short, a batch with a bad CRC, junk: ``tear_tails``), which must be cut
  off; ``--no-tear`` skips that;
* and it counts duplicates (a value stored at more than one offset: a batch
  written but not yet acknowledged when the server died, sent again by the
  producer after the restart). With the idempotent producer there must be
  none: each partition keeps its producers' last batches (snapshots at rolls,
  the batches after the newest one replayed after a crash), so a retry is
  answered with its original offsets; ``--segment-bytes`` small makes the
  retries straddle rolls. It also counts records stored but never
  acknowledged (acks lost with the connection).

Modes: ``--fsync always`` with ``acks=all`` and idempotence (the durable
contract), or ``--fsync never`` with ``acks=1`` (what reached the page cache
survives a process kill). A SIGKILL does not lose the page cache, so this
checks the order "write, then acknowledge" and the recovery of torn tails;
power loss is not simulated.

Usage::

    python tools/crash_kafka.py --cycles 20                       # fsync always, acks=all
    python tools/crash_kafka.py --cycles 20 --fsync never --acks 1
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Server, check_data_dir

TOPIC = "crash"


def _value(producer: int, seq: int, size: int) -> bytes:
    head = b"%d:%d:" % (producer, seq)
    return head + b"x" * max(0, size - len(head))


def _parse(value: bytes) -> tuple[int, int]:
    a, b, _ = value.split(b":", 2)
    return int(a), int(b)


class ProducerThread(threading.Thread):
    """One confluent-kafka producer in a thread; remembers acknowledged (partition, offset, seq)."""

    def __init__(self, index: int, bootstrap: str, partitions: int, acks: str, idempotent: bool,
                 size: int, rate: int) -> None:
        super().__init__(name=f"producer-{index}", daemon=True)
        from confluent_kafka import Producer

        self.index = index
        self.partitions = partitions
        self.size = size
        self.rate = rate  # records/s, 0 = as fast as possible
        self.acked: list[tuple[int, int, int]] = []
        self.failed = 0
        self.errors: dict[str, int] = {}
        self.sent = 0
        self.stop_event = threading.Event()
        self.fatal: str | None = None
        self.p = Producer({
            "bootstrap.servers": bootstrap,
            "acks": acks,
            "enable.idempotence": idempotent,
            "linger.ms": 5,
            "message.timeout.ms": 120_000,
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 500,
            "retry.backoff.ms": 50,
            "socket.connection.setup.timeout.ms": 5000,
            "queue.buffering.max.messages": 200_000,
            "log_level": 2,  # librdkafka logs every refused connection otherwise
            "error_cb": self._on_error,
        })

    def _on_error(self, err) -> None:
        if err.fatal():
            self.fatal = str(err)
        name = err.name()
        self.errors[name] = self.errors.get(name, 0) + 1

    def _report(self, err, msg) -> None:
        if err is not None:
            self.failed += 1
            self.errors[err.name()] = self.errors.get(err.name(), 0) + 1
            return
        _, seq = _parse(msg.value())
        self.acked.append((msg.partition(), msg.offset(), seq))

    def run(self) -> None:
        seq = 0
        t0 = time.monotonic()
        produce, poll = self.p.produce, self.p.poll
        while not self.stop_event.is_set() and self.fatal is None:
            if self.rate:
                ahead = seq / self.rate - (time.monotonic() - t0)
                if ahead > 0:
                    poll(min(ahead, 0.05))
                    continue
            try:
                produce(TOPIC, _value(self.index, seq, self.size), partition=seq % self.partitions,
                        on_delivery=self._report)
            except BufferError:
                poll(0.01)
                continue
            seq += 1
            if seq % 64 == 0:
                poll(0)
        self.sent = seq

    def finish(self, timeout: float) -> int:
        """Stop producing, wait for every delivery report; returns the messages still pending."""
        self.stop_event.set()
        self.join()
        return self.p.flush(timeout)


def tear_tails(data_dir: str, rnd: random.Random) -> int:
    """Simulate writes torn by a crash: append to some partitions' active
    segment a batch cut short, a whole batch with a bad CRC (next offset, so
    only the CRC gives it away), or junk. None of it was acknowledged (the
    server is dead), all of it must be cut off by recovery and never served.
    Returns how many partitions were torn."""
    torn = 0
    for entry in sorted(os.listdir(data_dir)):
        d = os.path.join(data_dir, entry)
        if not entry.startswith(TOPIC + "-") or not os.path.isdir(d) or rnd.random() < 0.5:
            continue
        logs = sorted(n for n in os.listdir(d) if n.endswith(".log"))
        if not logs:
            continue
        path = os.path.join(d, logs[-1])
        with open(path, "rb") as f:
            data = f.read()
        last = _last_batch(data)
        kind = rnd.choice(("cut", "crc", "junk"))
        if last is None or kind == "junk":
            tail = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 300)))
        else:
            batch = bytearray(last)
            next_offset = int.from_bytes(batch[0:8], "big") + int.from_bytes(batch[23:27], "big") + 1
            batch[0:8] = next_offset.to_bytes(8, "big")
            if kind == "cut":
                tail = bytes(batch[: rnd.randint(1, len(batch) - 1)])
            else:
                batch[rnd.randint(61, len(batch) - 1) if len(batch) > 61 else 60] ^= 0x5A
                tail = bytes(batch)
        with open(path, "ab") as f:
            f.write(tail)
        torn += 1
    return torn


def _last_batch(data: bytes) -> bytes | None:
    pos, last = 0, None
    while pos + 61 <= len(data):
        size = 12 + int.from_bytes(data[pos + 8:pos + 12], "big", signed=True)
        if size < 61 or pos + size > len(data):
            break
        last = data[pos:pos + size]
        pos += size
    return last


def consume_all(bootstrap: str, partitions: int, ends: list[int], timeout: float = 120.0) -> list[dict[int, bytes]]:
    """Every record of every partition up to ``ends`` through the Kafka door, CRCs checked."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "crash-check", "enable.auto.commit": False,
                  "check.crcs": True, "fetch.queue.backoff.ms": 5, "log_level": 2})
    c.assign([TopicPartition(TOPIC, p, 0) for p in range(partitions)])
    got: list[dict[int, bytes]] = [{} for _ in range(partitions)]
    need = sum(ends)
    have = 0
    deadline = time.monotonic() + timeout
    try:
        while have < need and time.monotonic() < deadline:
            for m in c.consume(10_000, 0.5):
                if m.error():
                    raise AssertionError(f"consumer error: {m.error()}")
                d = got[m.partition()]
                if m.offset() not in d:
                    have += 1
                d[m.offset()] = m.value()
    finally:
        c.close()
    if have < need:
        raise AssertionError(f"read back only {have} of {need} records through the door")
    return got


def watermarks(bootstrap: str, partitions: int) -> list[int]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "crash-check", "log_level": 2})
    try:
        return [c.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=30)[1] for p in range(partitions)]
    finally:
        c.close()


def run(workdir: str, *, cycles: int = 3, fsync: str = "always", acks: str = "all", partitions: int = 4,
        producers: int = 2, size: int = 100, rate: int = 0, min_up: float = 0.5, max_up: float = 1.5,
        down: float = 0.2, tear: bool = True, seed: int | None = None, segment_bytes: int | None = None,
        log=print) -> dict:
    """Run ``cycles`` kill/restart cycles; returns the counts (raises AssertionError on a violation)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    rnd = random.Random(seed)
    data = os.path.join(workdir, "data")
    server = Server(data, "--fsync", fsync)
    server.start()
    threads: list[ProducerThread] = []
    startups = []
    torn = 0
    try:
        admin = AdminClient({"bootstrap.servers": server.bootstrap, "log_level": 2})
        config = {"segment.bytes": str(segment_bytes)} if segment_bytes else {}
        admin.create_topics([NewTopic(TOPIC, num_partitions=partitions, replication_factor=1,
                                      config=config)])[TOPIC].result(30)
        idempotent = acks == "all"
        threads = [ProducerThread(i, server.bootstrap, partitions, acks, idempotent, size, rate)
                   for i in range(producers)]
        for t in threads:
            t.start()
        for cycle in range(cycles):
            time.sleep(rnd.uniform(min_up, max_up))
            acked_before = sum(len(t.acked) for t in threads)
            server.kill()
            n = tear_tails(data, rnd) if tear else 0
            torn += n
            time.sleep(down)
            server.start()
            startups.append(server.startup_s)
            log(f"cycle {cycle + 1}/{cycles}: killed after {acked_before} acks, {n} tails torn, "
                f"restarted in {server.startup_s:.2f} s")
        time.sleep(min_up)  # the producers catch up on the restarted server
        pending = [t.finish(120) for t in threads]
        fatal = [t.fatal for t in threads if t.fatal]
        assert not fatal, f"producer fatal error: {fatal}"
        assert not any(pending), f"{sum(pending)} messages never got a delivery report"
        # One last unclean stop, so the read-back below is served after recovery.
        server.kill()
        torn += tear_tails(data, rnd) if tear else 0
        server.start()
        startups.append(server.startup_s)
        ends = watermarks(server.bootstrap, partitions)
        stored = consume_all(server.bootstrap, partitions, ends)
        assert server.alive()
    finally:
        for t in threads:
            t.stop_event.set()
        rc = server.stop()
    assert rc == 0, f"server exited with {rc}:\n{server.log_text()[-3000:]}"
    scanned = check_data_dir(data)

    acked = lost = moved = 0
    for t in threads:
        for part, off, seq in t.acked:
            acked += 1
            want = _value(t.index, seq, size)
            got = stored[part].get(off)
            if got != want:
                if got is None:
                    lost += 1
                else:
                    moved += 1
    copies: dict[bytes, int] = {}
    for d in stored:
        for v in d.values():
            copies[v] = copies.get(v, 0) + 1
    duplicates = sum(n - 1 for n in copies.values() if n > 1)
    unacked_stored = len(copies) - acked
    tb = "Traceback" in server.log_text()
    bumps = server.log_text().count("asks for a new epoch")
    result = {
        "fsync": fsync, "acks": acks, "cycles": cycles, "tails_torn": torn,
        "acked": acked, "lost": lost, "moved": moved,
        "stored": sum(len(d) for d in stored), "duplicates": duplicates, "unacked_stored": unacked_stored,
        "failed_deliveries": sum(t.failed for t in threads), "sent": sum(t.sent for t in threads),
        "batches_scanned": scanned["batches"], "bytes_scanned": scanned["bytes"],
        "startup_s_max": max(startups) if startups else 0.0, "traceback_in_log": tb,
        "epoch_bumps": bumps,
        "client_errors": {k: v for t in threads for k, v in t.errors.items()},
    }
    assert lost == 0 and moved == 0, f"acknowledged records lost={lost} moved={moved}: {result}"
    assert not tb, server.log_text()[-3000:]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--fsync", choices=["never", "interval", "always"], default="always")
    ap.add_argument("--acks", choices=["all", "1"], default=None, help="default: all with fsync always, else 1")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--producers", type=int, default=2)
    ap.add_argument("--size", type=int, default=100, help="record value size in bytes")
    ap.add_argument("--rate", type=int, default=0, help="records/s per producer (0: as fast as it goes)")
    ap.add_argument("--min-up", type=float, default=0.5, help="least seconds between restart and kill")
    ap.add_argument("--max-up", type=float, default=2.0)
    ap.add_argument("--no-tear", action="store_true", help="do not append torn/corrupt batches after each kill")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--segment-bytes", type=int, default=None,
                    help="the topic's segment.bytes (more than librdkafka's 1 MB batch.size)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    a = ap.parse_args()
    acks = a.acks or ("all" if a.fsync == "always" else "1")
    work = tempfile.mkdtemp(prefix="umlog-crash-")
    try:
        r = run(work, cycles=a.cycles, fsync=a.fsync, acks=acks, partitions=a.partitions, producers=a.producers,
                size=a.size, rate=a.rate, min_up=a.min_up, max_up=a.max_up, tear=not a.no_tear, seed=a.seed,
                segment_bytes=a.segment_bytes)
        print(" ".join(f"{k}={v}" for k, v in r.items()))
        print("OK: every acknowledged record is at its acknowledged offset")
    finally:
        if a.keep:
            print("kept", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

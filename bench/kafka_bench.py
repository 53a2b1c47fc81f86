"""Kafka door throughput, CPU and latency, with librdkafka (confluent-kafka) over loopback.

Starts ``python -m umlog serve`` on a fresh data dir and a free port, then:

1. produce N records of S bytes (linger.ms=5, batch.size=1 MiB, acks=1, no
   compression) to a 1-partition topic and wait for every delivery report;
2. consume them back with an assign()-ed consumer from offset 0;
3. (unless --no-latency) produce-to-consume latency at a paced rate
   (default 10,000 records/s for 3 s, linger.ms=0, consumer polling).

For 1 and 2 it reads the server's utime+stime from /proc/<pid>/stat before and
after, and prints records/s, MB/s and server CPU seconds per million records.
Client and server share the machine, so the figures are for the pair.

Usage::

    python bench/kafka_bench.py                 # 1,000,000 x 100 B
    python bench/kafka_bench.py -n 200000 --fsync always
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def server_cpu(pid: int) -> float:
    """utime + stime of pid in seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def start_server(data_dir: str, fsync: str) -> tuple[subprocess.Popen, str]:
    sys.path.insert(0, ROOT)  # prefer the source tree (after build_ext --inplace)
    import umlog

    parent = os.path.dirname(os.path.dirname(os.path.abspath(umlog.__file__)))
    env = dict(os.environ, PYTHONPATH=parent + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "umlog", "serve", "--data-dir", data_dir,
                             "--kafka", "127.0.0.1:0", "--fsync", fsync],
                            stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(data_dir), env=env)
    line = proc.stdout.readline()
    m = re.search(r"kafka=(\S+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, m.group(1)


def produce(bootstrap: str, topic: str, n: int, size: int) -> float:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.size": 1 << 20,
                  "acks": 1, "compression.type": "none", "queue.buffering.max.messages": 2_000_000,
                  "queue.buffering.max.kbytes": 1 << 21})
    value = b"x" * size
    failed = []

    def report(err, msg):
        if err is not None:
            failed.append(err)

    t0 = time.perf_counter()
    for _ in range(n):
        while True:
            try:
                p.produce(topic, value, partition=0, on_delivery=report)
                break
            except BufferError:
                p.poll(0.001)
    left = p.flush(120)
    dt = time.perf_counter() - t0
    if left or failed:
        raise SystemExit(f"produce: {left} undelivered, {len(failed)} failed ({failed[:1]})")
    return dt


def consume(bootstrap: str, topic: str, n: int) -> float:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench", "enable.auto.commit": False,
                  "fetch.max.bytes": 50 << 20, "max.partition.fetch.bytes": 8 << 20,
                  # librdkafka stops prefetching when its queue holds 64 MiB and then
                  # waits fetch.queue.backoff.ms (1 s by default) before fetching again;
                  # with 1 s a 1M-record run reads ~150k records/s whatever the server does.
                  "fetch.queue.backoff.ms": 5})
    c.assign([TopicPartition(topic, 0, 0)])
    got = 0
    t0 = time.perf_counter()
    deadline = t0 + 300
    while got < n and time.perf_counter() < deadline:
        for m in c.consume(10_000, 1.0):
            if not m.error():
                got += 1
    dt = time.perf_counter() - t0
    c.close()
    if got < n:
        raise SystemExit(f"consume: only {got} of {n}")
    return dt


def latency(bootstrap: str, topic: str, rate: int, seconds: float) -> list[float]:
    from confluent_kafka import Consumer, Producer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-lat", "enable.auto.commit": False,
                  "fetch.wait.max.ms": 500, "fetch.min.bytes": 1})
    c.assign([TopicPartition(topic, 0, 0)])
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": 1})
    total = int(rate * seconds)
    lat: list[float] = []
    done = threading.Event()

    def reader():
        while len(lat) < total and not done.is_set():
            m = c.poll(0.1)  # consume(n, t) would wait for n messages or t
            if m is not None and not m.error():
                lat.append(time.perf_counter() - float(m.value()))

    # Create the topic and let the consumer reach its end before measuring.
    p.produce(topic, repr(time.perf_counter()).encode(), partition=0)
    p.flush(10)
    warm = time.perf_counter() + 10
    while time.perf_counter() < warm:
        m = c.poll(0.1)
        if m is not None and not m.error():
            break
    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.5)
    start = time.perf_counter()
    for i in range(total):
        # Plain sleeps, no spinning: a spinning sender would hold the GIL that the
        # reader thread needs (5 ms switch interval) and measure that instead.
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        p.produce(topic, repr(time.perf_counter()).encode(), partition=0)
        p.poll(0)
    p.flush(30)
    t.join(30)
    done.set()
    c.close()
    return sorted(lat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--records", type=int, default=1_000_000)
    ap.add_argument("-s", "--size", type=int, default=100)
    ap.add_argument("--fsync", default="never", choices=["never", "interval", "always"])
    ap.add_argument("--rate", type=int, default=10_000, help="records/s for the latency run")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the data dir")
    a = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="umlog-bench-")
    proc, bootstrap = start_server(os.path.join(tmp, "data"), a.fsync)
    try:
        rows = []
        cpu0 = server_cpu(proc.pid)
        dt = produce(bootstrap, "bench", a.records, a.size)
        cpu1 = server_cpu(proc.pid)
        rows.append(("produce", a.records / dt, a.records * a.size / dt / 1e6, (cpu1 - cpu0) / a.records * 1e6))
        dt = consume(bootstrap, "bench", a.records)
        cpu2 = server_cpu(proc.pid)
        rows.append(("consume", a.records / dt, a.records * a.size / dt / 1e6, (cpu2 - cpu1) / a.records * 1e6))
        lat = [] if a.no_latency else latency(bootstrap, "lat", a.rate, 3.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"umlog serve --fsync {a.fsync}; {a.records:,} records x {a.size} B; librdkafka "
          f"(linger.ms=5, batch.size=1 MiB, acks=1); client and server on one machine")
    print(f"{'phase':<10}{'records/s':>14}{'MB/s':>10}{'server CPU s / 1M records':>28}")
    for name, rps, mbs, cpu in rows:
        print(f"{name:<10}{rps:>14,.0f}{mbs:>10.1f}{cpu:>28.3f}")
    if lat:
        def pct(q):
            return lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3
        print(f"latency at {a.rate:,} records/s ({len(lat):,} records): "
              f"p50 {pct(0.5):.2f} ms  p99 {pct(0.99):.2f} ms  max {lat[-1] * 1e3:.2f} ms")


if __name__ == "__main__":
    main()

"""Kafka door throughput, CPU and latency, with librdkafka (confluent-kafka) over loopback.

Starts ``python -m umlog serve`` on a fresh data dir and a free port, then:

1. produce N records of S bytes (linger.ms=5, batch.size=1 MiB, acks=1, no
   compression) to a 1-partition topic and wait for every delivery report;
2. consume them back with an assign()-ed consumer from offset 0;
3. (unless --no-latency) produce-to-consume latency at a paced rate
   (default 10,000 records/s for 3 s, linger.ms=0, a consumer polling in
   another process).

Steps 1 and 2 run twice when kcat is installed: with kcat (librdkafka's C
client: what the server sustains) and with confluent-kafka (librdkafka under a
Python loop, which costs the client ~1 us per record).

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
                             "--kafka", "127.0.0.1:0", "--http", "off", "--fsync", fsync],
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


KCAT = shutil.which("kcat") or shutil.which("kafkacat")


def produce_kcat(bootstrap: str, topic: str, n: int, size: int, tmp: str) -> float:
    """kcat -P -l: librdkafka's C producer reading one record per line of a file."""
    path = os.path.join(tmp, "records.txt")
    with open(path, "wb") as f:
        f.write((b"x" * size + b"\n") * n)
    t0 = time.perf_counter()
    subprocess.run([KCAT, "-b", bootstrap, "-P", "-t", topic, "-p", "0", "-l", path,
                    "-X", "linger.ms=5", "-X", "batch.size=1048576", "-X", "acks=1",
                    "-X", "queue.buffering.max.messages=2000000"], check=True)
    return time.perf_counter() - t0


def consume_kcat(bootstrap: str, topic: str, n: int) -> float:
    """kcat -C -c N: exits after the N-th record (not at EOF, which would add
    one long-poll wait of fetch.wait.max.ms at the end)."""
    t0 = time.perf_counter()
    subprocess.run([KCAT, "-b", bootstrap, "-C", "-t", topic, "-p", "0", "-o", "beginning",
                    "-c", str(n), "-q", "-f", "", "-X", "max.partition.fetch.bytes=8388608",
                    "-X", "fetch.max.bytes=52428800"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


LATENCY_READER = r"""
import sys, time
from confluent_kafka import Consumer, TopicPartition
bootstrap, topic, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-lat", "enable.auto.commit": False,
              "fetch.wait.max.ms": 500, "fetch.min.bytes": 1, "socket.nagle.disable": True})
c.assign([TopicPartition(topic, 0, 0)])
print("ready", flush=True)
lat = []
deadline = time.time() + 120
while len(lat) < total and time.time() < deadline:
    m = c.poll(0.1)
    if m is not None and not m.error() and m.value() != b"warm":
        lat.append(time.time() - float(m.value()))
c.close()
print(" ".join("%.6f" % x for x in lat), flush=True)
"""


def latency(bootstrap: str, topic: str, rate: int, seconds: float) -> list[float]:
    """Produce-to-consume latency: this process produces at a paced rate with
    linger.ms=0, a consumer in ANOTHER process polls (one Python process with
    both would measure the GIL's 5 ms switch interval, not the broker)."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": 1, "socket.nagle.disable": True})
    p.produce(topic, b"warm", partition=0)  # creates the topic
    p.flush(10)
    total = int(rate * seconds)
    reader = subprocess.Popen([sys.executable, "-c", LATENCY_READER, bootstrap, topic, str(total)],
                              stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "ready"
    time.sleep(1.0)  # the reader's assign and first fetch
    start = time.perf_counter()
    for i in range(total):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        p.produce(topic, repr(time.time()).encode(), partition=0)
        p.poll(0)
    p.flush(30)
    out = reader.stdout.readline()
    reader.wait(30)
    reader.stdout.close()
    return sorted(float(x) for x in out.split())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--records", type=int, default=1_000_000)
    ap.add_argument("-s", "--size", type=int, default=100)
    ap.add_argument("--fsync", default="never", choices=["never", "interval", "always"])
    ap.add_argument("--rate", type=int, default=10_000, help="records/s for the latency run")
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--no-kcat", action="store_true", help="skip the kcat (C client) rows")
    ap.add_argument("--keep", action="store_true", help="keep the data dir")
    a = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="umlog-bench-")
    proc, bootstrap = start_server(os.path.join(tmp, "data"), a.fsync)
    try:
        rows = []

        def phase(name, fn, *args):
            cpu0 = server_cpu(proc.pid)
            dt = fn(*args)
            cpu = server_cpu(proc.pid) - cpu0
            rows.append((name, a.records / dt, a.records * a.size / dt / 1e6, cpu / a.records * 1e6))

        if KCAT and not a.no_kcat:
            phase("produce (kcat)", produce_kcat, bootstrap, "bench-kcat", a.records, a.size, tmp)
            phase("consume (kcat)", consume_kcat, bootstrap, "bench-kcat", a.records)
        phase("produce (confluent-kafka)", produce, bootstrap, "bench", a.records, a.size)
        phase("consume (confluent-kafka)", consume, bootstrap, "bench", a.records)
        lat = [] if a.no_latency else latency(bootstrap, "lat", a.rate, 3.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"umlog serve --fsync {a.fsync}; {a.records:,} records x {a.size} B; librdkafka "
          f"(linger.ms=5, batch.size=1 MiB, acks=1); client and server on one machine")
    print(f"{'phase':<28}{'records/s':>12}{'MB/s':>9}{'server CPU s / 1M records':>28}")
    for name, rps, mbs, cpu in rows:
        print(f"{name:<28}{rps:>12,.0f}{mbs:>9.1f}{cpu:>28.3f}")
    if lat:
        def pct(q):
            return lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3
        print(f"latency at {a.rate:,} records/s ({len(lat):,} records): "
              f"p50 {pct(0.5):.2f} ms  p99 {pct(0.99):.2f} ms  max {lat[-1] * 1e3:.2f} ms")


if __name__ == "__main__":
    main()

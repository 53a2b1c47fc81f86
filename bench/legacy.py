"""What serving an old client costs: Fetch v0-3 down-conversion vs RecordBatch v2 as stored.

Starts ``python -m umlog serve`` on a fresh data dir and a free port, fills a
1-partition topic with N records of S bytes with confluent-kafka (RecordBatch
v2, uncompressed, then a second topic gzip-compressed), then reads every
record back with kafka-python three ways, one after the other:

* default (``api_version`` negotiated: Fetch v12, batches sent as stored);
* ``api_version=(0, 10)`` (Fetch v2: every batch converted to magic 1);
* ``api_version=(0, 9)`` (Fetch v1: magic 0).

For each it reads the server's utime+stime from /proc/<pid>/stat before and
after and prints the server's CPU seconds per million records fetched (the
conversion is there) and the client's wall time. Client and server share the
machine, so the wall times are for the pair; the CPU figure is the server's own.

Usage::

    python bench/legacy.py                  # 200,000 x 100 B
    python bench/legacy.py -n 50000 -s 1000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kafka_bench import server_cpu, start_server


def fill(bootstrap: str, topic: str, n: int, size: int, codec: str) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.size": 1 << 20, "acks": 1,
                  "compression.type": codec, "queue.buffering.max.messages": 2_000_000,
                  "queue.buffering.max.kbytes": 1 << 21})
    value = b"x" * size
    for i in range(n):
        while True:
            try:
                p.produce(topic, value, key=b"k%d" % (i % 1000))
                break
            except BufferError:
                p.poll(0.01)
    if p.flush(120) != 0:
        raise SystemExit("produce did not finish")


def read_all(bootstrap: str, topic: str, n: int, api_version) -> float:
    from kafka import KafkaConsumer, TopicPartition

    kw = {} if api_version is None else {"api_version": api_version}
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=30000,
                      fetch_max_bytes=50 << 20, max_partition_fetch_bytes=1 << 20, **kw)
    c.assign([TopicPartition(topic, 0)])
    c.seek(TopicPartition(topic, 0), 0)
    t0 = time.perf_counter()
    got = 0
    for _ in c:
        got += 1
        if got == n:
            break
    dt = time.perf_counter() - t0
    c.close()
    if got != n:
        raise SystemExit(f"read {got} of {n} records with api_version={api_version}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=200_000, help="records per topic")
    ap.add_argument("-s", type=int, default=100, help="value size in bytes")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        proc, bootstrap = start_server(os.path.join(tmp, "data"), "never")
        try:
            print(f"{args.n:,} records x {args.s} B, kafka-python reading, umlog serve on {bootstrap}")
            print(f"{'stored as':<14} {'client':<26} {'server CPU s / M records':>24} {'client wall s':>14}")
            for codec in ("none", "gzip"):
                topic = f"legacy-{codec}"
                fill(bootstrap, topic, args.n, args.s, codec)
                for label, av in (("default (Fetch v12)", None), ("(0, 10): Fetch v2, magic 1", (0, 10)),
                                  ("(0, 9): Fetch v1, magic 0", (0, 9))):
                    cpu0 = server_cpu(proc.pid)
                    wall = read_all(bootstrap, topic, args.n, av)
                    cpu = server_cpu(proc.pid) - cpu0
                    print(f"{codec:<14} {label:<26} {cpu / args.n * 1e6:>24.2f} {wall:>14.2f}", flush=True)
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()

"""Share-group acknowledgement throughput: embedded threads, and ShareConsumer processes through the Kafka door.

Embedded: a fresh data dir gets N records (100-byte values, 4 partitions);
``--threads`` consumer threads (4), each with its own handle on one share group
(``start="earliest"``), loop ``acquire(max_records=100)`` then ``ack`` of
that batch, until every record is acked. Measured: records acked per second,
first acquire to last ack. Goal: >= 200,000 records/s.

Kafka door: the same records, served by ``python -m umlog serve`` (its own
process, ``--share-auto-offset-reset earliest``); ``--consumers`` processes
(3), each a confluent-kafka ``ShareConsumer`` in explicit mode that
acknowledges every record it polls and commits after each poll, until the
records acked by all of them add up to N. Measured from the first record a
consumer sees to the last commit: records/s, and the server process's
user+system CPU over the same span (from /proc) as CPU-seconds per million
records. Consumers and server share the machine.

Usage::

    python bench/share_groups.py                        # 500,000 embedded, 200,000 through the door
    python bench/share_groups.py --records 1000000 --door-records 300000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import umlog

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CLK = os.sysconf("SC_CLK_TCK")
VALUE = b"x" * 100
PARTITIONS = 4

CONSUMER = r"""
import json, sys, time
from confluent_kafka import ShareConsumer
bootstrap, group, topic = sys.argv[1:4]
c = ShareConsumer({"bootstrap.servers": bootstrap, "group.id": group, "share.acknowledgement.mode": "explicit"})
c.subscribe([topic])
print(json.dumps({"ready": True}), flush=True)
while True:
    msgs = c.poll(0.5)
    n = 0
    for m in msgs:
        if m.error() is None:
            c.acknowledge(m)
            n += 1
    if n:
        c.commit_sync(60)
        print(json.dumps({"acked": n, "t": time.time()}), flush=True)
"""


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def fill(data: str, records: int) -> None:
    with umlog.open(data) as b:
        t = b.create_topic("jobs", PARTITIONS)
        for i in range(0, records, 1000):
            n = min(1000, records - i)
            t.append_many([VALUE] * n, partition=(i // 1000) % PARTITIONS)


def embedded(records: int, threads: int, batch: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        fill(data, records)
        with umlog.open(data) as b:
            q = b.share_group("bench", topics=["jobs"], start="earliest")
            done = [0] * threads
            first: list[float] = []
            last = [0.0] * threads

            def work(i: int) -> None:
                h = q.sibling()
                idle = 0
                while sum(done) < records and idle < 20:
                    got = h.acquire(max_records=batch, timeout=0.05)
                    if not got:
                        idle += 1
                        continue
                    if not first:
                        first.append(time.perf_counter())
                    h.ack(got)
                    done[i] += len(got)
                    last[i] = time.perf_counter()

            ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            d = q.describe()
    secs = max(last) - first[0]
    return {"records": sum(done), "per_s": sum(done) / secs, "secs": secs, "unacked": d["unacked"],
            "per_thread": done}


def door(records: int, consumers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        fill(data, records)
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        server = subprocess.Popen([sys.executable, "-m", "umlog", "serve", "--data-dir", data, "--kafka",
                                   "127.0.0.1:0", "--http", "off", "--share-auto-offset-reset", "earliest"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=tmp)
        kids = []
        try:
            line = server.stdout.readline()
            bootstrap = line.split("kafka=", 1)[1].split()[0]
            acked = [0] * consumers
            first: list[float] = []
            last = [0.0] * consumers
            cpu0: list[float] = []

            def read(i: int, proc) -> None:
                for raw in proc.stdout:
                    x = json.loads(raw)
                    if "acked" in x:
                        if not first:
                            first.append(time.time())
                            cpu0.append(cpu_s(server.pid))
                        acked[i] += x["acked"]
                        last[i] = x["t"]

            readers = []
            for i in range(consumers):
                p = subprocess.Popen([sys.executable, "-c", CONSUMER, bootstrap, "bench", "jobs"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=tmp)
                kids.append(p)
                t = threading.Thread(target=read, args=(i, p), daemon=True)
                t.start()
                readers.append(t)
            deadline = time.monotonic() + 600
            while sum(acked) < records and time.monotonic() < deadline:
                time.sleep(0.01)
            cpu1 = cpu_s(server.pid)
        finally:
            for p in kids:
                p.kill()
                p.wait()
                p.stdout.close()
            server.terminate()
            server.wait(60)
            server.stdout.close()
    secs = max(last) - first[0]
    n = sum(acked)
    return {"records": n, "per_s": n / secs, "secs": secs, "cpu_per_m": (cpu1 - cpu0[0]) / n * 1e6,
            "per_consumer": acked}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--records", type=int, default=500_000)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--door-records", type=int, default=200_000)
    ap.add_argument("--consumers", type=int, default=3)
    ap.add_argument("--skip-door", action="store_true")
    a = ap.parse_args()
    e = embedded(a.records, a.threads, a.batch)
    print(f"embedded: {e['records']:,} records, {a.threads} threads, ack batches of {a.batch}: "
          f"{e['per_s']:,.0f} records/s ({e['secs']:.2f} s; per thread {e['per_thread']}; unacked {e['unacked']})")
    if not a.skip_door:
        d = door(a.door_records, a.consumers)
        print(f"kafka door: {d['records']:,} records, {a.consumers} ShareConsumer processes: {d['per_s']:,.0f} "
              f"records/s ({d['secs']:.2f} s; per consumer {d['per_consumer']}), server "
              f"{d['cpu_per_m']:.2f} CPU-s per million")


if __name__ == "__main__":
    main()

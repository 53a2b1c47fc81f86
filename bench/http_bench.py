"""HTTP door: ``/metrics`` scrape time at scale, and REST produce throughput and CPU.

Starts ``python -m umlog serve`` on a fresh data dir (free ports), then:

1. ``/metrics`` with T topics x P partitions (default 10 x 100 = 1,000
   partitions, a few records each) and G consumer groups (default 100, each
   committed on every partition of one topic, half-way: 10,000 lagging group
   partitions with kafka_consumergroup_lag_seconds to read): the time of the
   first scrape and the median and max of the next ``--scrapes``, as the client
   sees them (loopback);
2. REST produce: N records (default 200,000) of S bytes (100) POSTed as
   ``application/vnd.kafka.binary.v2+json``, R records per request (100), from
   C concurrent aiohttp connections (8), to one partition; records/s and the
   server's CPU seconds per million records (utime+stime of the server from
   /proc before and after). Client and server share the machine.

Usage::

    python bench/http_bench.py
    python bench/http_bench.py -n 500000 --fsync always
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from kafka_bench import server_cpu  # noqa: E402


def fill(data_dir: str, topics: int, partitions: int, groups: int) -> None:
    sys.path.insert(0, ROOT)
    import umlog

    with umlog.open(data_dir) as b:
        names = []
        for i in range(topics):
            t = b.create_topic(f"bench-{i}", partitions)
            names.append(t.name)
            for p in t.partitions:
                p.append_many([b"x" * 100] * 4)
        for g in range(groups):
            name = names[g % topics]
            b.group(f"group-{g}").commit_many({(name, p): 2 for p in range(partitions)})


def start(data_dir: str, fsync: str) -> tuple[subprocess.Popen, str]:
    import umlog

    parent = os.path.dirname(os.path.dirname(os.path.abspath(umlog.__file__)))
    env = dict(os.environ, PYTHONPATH=parent + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "umlog", "serve", "--data-dir", data_dir, "--kafka", "127.0.0.1:0",
                             "--http", "127.0.0.1:0", "--fsync", fsync], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(data_dir), env=env)
    line = proc.stdout.readline()
    m = re.search(r"http=(\S+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"umlog serve did not start: {line!r}")
    return proc, "http://" + m.group(1)


async def scrapes(base: str, n: int) -> tuple[float, list[float], int]:
    import aiohttp

    async with aiohttp.ClientSession() as s:
        times = []
        size = 0
        for _ in range(n + 1):
            t0 = time.perf_counter()
            async with s.get(base + "/metrics") as r:
                body = await r.read()
            times.append(time.perf_counter() - t0)
            size = len(body)
        return times[0], times[1:], size


async def produce(base: str, topic: str, n: int, size: int, per_request: int, conns: int) -> None:
    import aiohttp

    value = base64.b64encode(os.urandom(size)).decode()
    body = json.dumps({"records": [{"value": value}] * per_request}).encode()
    requests = n // per_request
    headers = {"Content-Type": "application/vnd.kafka.binary.v2+json"}
    url = f"{base}/topics/{topic}/partitions/0"

    async def worker(count: int) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as s:
            for _ in range(count):
                async with s.post(url, data=body, headers=headers) as r:
                    if r.status != 200:
                        raise SystemExit(f"produce answered {r.status}: {await r.text()}")
                    await r.read()

    await asyncio.gather(*(worker(requests // conns + (i < requests % conns)) for i in range(conns)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--topics", type=int, default=10)
    ap.add_argument("--partitions", type=int, default=100)
    ap.add_argument("--groups", type=int, default=100)
    ap.add_argument("--scrapes", type=int, default=20)
    ap.add_argument("-n", type=int, default=200_000)
    ap.add_argument("-s", type=int, default=100)
    ap.add_argument("-r", type=int, default=100, help="records per request")
    ap.add_argument("-c", type=int, default=8, help="concurrent connections")
    ap.add_argument("--fsync", default="never", choices=("never", "interval", "always"))
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="umlog-http-bench-")
    data = os.path.join(tmp, "data")
    try:
        fill(data, a.topics, a.partitions, a.groups)
        proc, base = start(data, a.fsync)
        try:
            first, rest, size = asyncio.run(scrapes(base, a.scrapes))
            print(f"/metrics, {a.topics * a.partitions:,} partitions, {a.groups} groups "
                  f"({a.groups * a.partitions:,} group partitions), {size / 1e6:.1f} MB: first {first * 1000:.0f} ms, "
                  f"median {statistics.median(rest) * 1000:.0f} ms, max {max(rest) * 1000:.0f} ms")
            # REST has no topic creation: produce goes to bench-0's partition 0
            cpu0, t0 = server_cpu(proc.pid), time.perf_counter()
            asyncio.run(produce(base, "bench-0", a.n, a.s, a.r, a.c))
            wall, cpu = time.perf_counter() - t0, server_cpu(proc.pid) - cpu0
            n = a.n // a.r * a.r
            print(f"REST produce --fsync {a.fsync}, {n:,} records x {a.s} B, {a.r} per request, {a.c} connections: "
                  f"{n / wall:,.0f} records/s, server {cpu / n * 1e6:.2f} CPU-s per million records")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

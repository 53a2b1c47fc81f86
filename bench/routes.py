"""Routing rules: latency at a steady rate and CPU per million routed records.

    python bench/routes.py [--rate 10000] [--seconds 10] [--partitions 4] [--batch 20]
                           [--records 1000000] [--fsync never] [--dir /tmp]

Latency: a producer thread appends ``--batch`` JSON records at a time with
``append_many`` (as a Kafka producer's batches arrive through the door) at
``--rate`` records/s over ``--partitions`` partitions; a started ``Router``
routes half of them (``value.region == 'eu'``) to a target; a reader thread
follows each target partition (``read(follow=True)``) and takes now minus the
send time carried in the value. Printed: p50, p99, max in ms.

CPU: ``--records`` records already in the source, routed by ``Router.pump()``
on the main thread, with the same condition (half match) and with none (all
match): process CPU seconds per million records read and per million routed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time

import umlog
from umlog.delivery.route import Route, Router


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def latency(data: str, args) -> dict:
    b = umlog.open(data, fsync=args.fsync, cleaner_interval_ms=None)
    src = b.create_topic("src", partitions=args.partitions)
    b.create_topic("dst", partitions=args.partitions)
    total = int(args.rate * args.seconds)
    want = sum(1 for i in range(total) if i % 2 == 0)
    lat: list[float] = []
    lock = threading.Lock()
    done = threading.Event()

    def follow(i: int) -> None:
        for r in b.topic("dst").partition(i).read(0, follow=True, timeout=args.seconds + 30):
            ms = (time.monotonic_ns() - json.loads(r.value)["t"]) / 1e6
            with lock:
                lat.append(ms)
                if len(lat) >= want:
                    done.set()
            if done.is_set():
                return

    readers = [threading.Thread(target=follow, args=(i,), daemon=True) for i in range(args.partitions)]
    for t in readers:
        t.start()
    router = Router(b, [Route("src", "dst", when="value.region == 'eu'", start="earliest")]).start()
    start = time.monotonic()
    i = 0
    while i < total:
        due = start + i / args.rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing: the rate is the scenario
        n = min(args.batch, total - i)
        now = time.monotonic_ns()
        src.append_many([json.dumps({"i": j, "region": "eu" if j % 2 == 0 else "us", "t": now,
                                     "pad": "x" * 60}).encode() for j in range(i, i + n)],
                        partition=(i // args.batch) % args.partitions)
        i += n
    done.wait(args.seconds + 30)
    router.stop()
    b.close()
    return {"records": total, "routed": len(lat), "p50": percentile(lat, 0.5), "p99": percentile(lat, 0.99),
            "max": max(lat) if lat else float("nan")}


def cpu(data: str, args, when: str | None) -> dict:
    b = umlog.open(data, fsync=args.fsync, cleaner_interval_ms=None)
    src = b.create_topic("src", partitions=1)
    chunk = 10_000
    for i in range(0, args.records, chunk):
        src.append_many([json.dumps({"i": j, "region": "eu" if j % 2 == 0 else "us", "pad": "x" * 60}).encode()
                         for j in range(i, min(args.records, i + chunk))], partition=0)
    r = Router(b, [Route("src", "dst", when=when, start="earliest")])
    c0, t0 = time.process_time(), time.perf_counter()
    read = r.pump()
    r.checkpoint()
    c1, t1 = time.process_time(), time.perf_counter()
    routed = r.stats()[0]["routed"]
    b.close()
    return {"when": when or "(none)", "read": read, "routed": routed, "cpu_s": c1 - c0, "wall_s": t1 - t0,
            "cpu_per_m_read": (c1 - c0) / read * 1e6, "cpu_per_m_routed": (c1 - c0) / routed * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--fsync", default="never", choices=("never", "interval", "always"))
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="umlog-bench-routes-", dir=args.dir)
    try:
        lat = latency(f"{base}/lat", args)
        print(f"latency at {args.rate:,} records/s ({args.partitions} partitions, batches of {args.batch}, "
              f"fsync={args.fsync}, half routed): {lat['routed']:,} of {lat['records']:,} routed; "
              f"p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, max {lat['max']:.2f} ms")
        for i, when in enumerate(("value.region == 'eu'", None)):
            c = cpu(f"{base}/cpu{i}", args, when)
            print(f"cpu, when {c['when']}: {c['read']:,} read, {c['routed']:,} routed in {c['wall_s']:.2f} s; "
                  f"{c['cpu_per_m_read']:.2f} CPU-s per million read, "
                  f"{c['cpu_per_m_routed']:.2f} per million routed")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

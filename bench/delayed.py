"""Delayed delivery at scale (umlog/delivery/delay.py), embedded, one process.

1. schedule: N records with ``umlog-deliver-at`` (due in 1-2 hours) through
   ``append_many`` (1,000 per call) until the index holds them all: records/s,
   CPU-seconds per million (process, scheduler thread included), RSS with N
   pending.
2. deliver: the clock the scheduler reads jumps 2 hours: all N are due; records/s
   and CPU-seconds per million until the last is on its topic.
3. lateness: with 100,000 pending far away, 2,000 records due over 10 s on the
   real clock; a follower records when each appears: lateness p50/p99/max.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time

import umlog


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Clock:
    def __init__(self):
        self.offset = 0.0

    def __call__(self):
        return time.time() + self.offset


def wait(pred, what, timeout=3600):
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--records", type=int, default=1_000_000)
    ap.add_argument("--pending", type=int, default=100_000, help="pending records during the lateness run")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="umlog-delayed-")
    clock = Clock()
    try:
        b = umlog.open(os.path.join(tmp, "data"), delay_clock=clock, cleaner_interval_ms=None)
        t = b.create_topic("t")
        p = t.partition(0)
        n = a.records
        base = int(time.time() * 1000) + 3_600_000
        value = b"x" * 100
        rss0 = rss_mb()
        c0, w0 = time.process_time(), time.perf_counter()
        for i in range(0, n, 1000):
            k = min(1000, n - i)
            t.append_many([value] * k, headers=[[("umlog-deliver-at", b"%d" % (base + (i + j) * 3_600_000 // n))]
                                                for j in range(k)], partition=0)
        s = b.hooks.delay.scheduler
        wait(lambda: s.pending() == n, "the index")
        c1, w1 = time.process_time(), time.perf_counter()
        import gc

        gc.collect()
        rss = rss_mb()
        print(f"schedule   {n / (w1 - w0):>12,.0f} records/s  {(c1 - c0) / n * 1e6:6.2f} CPU-s/M  "
              f"RSS {rss:.0f} MB with {n:,} pending (before: {rss0:.0f} MB)")
        end0 = p.end_offset
        c0, w0 = time.process_time(), time.perf_counter()
        clock.offset = 3 * 3600.0
        s.wake()
        wait(lambda: p.end_offset - end0 >= n, "delivery")
        c1, w1 = time.process_time(), time.perf_counter()
        print(f"deliver    {n / (w1 - w0):>12,.0f} records/s  {(c1 - c0) / n * 1e6:6.2f} CPU-s/M  "
              f"RSS {rss_mb():.0f} MB")
        b.close()

        clock.offset = 0.0
        b = umlog.open(os.path.join(tmp, "data2"), delay_clock=clock, cleaner_interval_ms=None)
        t = b.create_topic("t")
        p = t.partition(0)
        far = int(time.time() * 1000) + 20 * 86_400_000
        for _ in range(0, a.pending, 1000):
            t.append_many([value] * 1000, headers=[[("umlog-deliver-at", b"%d" % far)]] * 1000, partition=0)
        s = b.hooks.delay.scheduler
        wait(lambda: s.pending() == a.pending, "the index")
        m = 2000
        seen: dict[int, float] = {}

        def follow():
            for r in p.read(p.end_offset, follow=True, timeout=30):
                seen[int(r.value)] = time.time() * 1000
                if len(seen) == m:
                    return
        th = threading.Thread(target=follow)
        th.start()
        start = int(time.time() * 1000) + 1000
        dues = [start + i * 10_000 // m for i in range(m)]
        for due in dues:  # produced in small groups, as traffic would be
            t.append(b"%d" % due, headers=[("umlog-deliver-at", b"%d" % due)], partition=0)
        th.join()
        late = sorted(seen[d] - d for d in dues if d in seen)
        print(f"lateness   {len(late):,} records due over 10 s with {a.pending:,} pending: "
              f"p50 {late[len(late) // 2]:.1f} ms  p99 {late[int(len(late) * 0.99)]:.1f} ms  max {late[-1]:.1f} ms  "
              f"min {late[0]:.1f} ms")
        b.close()
    finally:
        if a.keep:
            print("data kept in", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

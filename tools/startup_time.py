"""Startup time of ``umlog serve`` with many partitions, after a clean and after an unclean stop.

Builds a data dir of ``--topics`` x ``--partitions`` partitions, each holding
``--records`` records (written with the embedded API, several segments each
when ``--segment-bytes`` is small), then:

1. starts the server and stops it with SIGTERM (clean: ``.clean`` written);
2. times a start after that clean stop;
3. appends a little to every partition through the Kafka door (so every
   active segment has bytes past its recovery point), SIGKILLs the server;
4. times a start after that unclean stop (only the tails are re-validated).

"startup" is from spawning ``python -m umlog serve`` until it prints its ready
line; the empty-data-dir figure beside it is the interpreter and imports alone.

Usage::

    python tools/startup_time.py                          # 10 x 100 partitions
    python tools/startup_time.py --topics 20 --profile    # cProfile of the broker open
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Server, check_data_dir

import umlog


def build(data: str, topics: int, partitions: int, records: int, segment_bytes: int) -> None:
    value = b"v" * 100
    with umlog.open(data) as b:
        for t in range(topics):
            topic = b.create_topic(f"t{t}", partitions=partitions, config={"segment.bytes": segment_bytes})
            for p in range(partitions):
                topic.append_many([value] * records, partition=p)


def touch_every_partition(bootstrap: str, topics: int, partitions: int) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": 1, "log_level": 2})
    for t in range(topics):
        for i in range(partitions):
            p.produce(f"t{t}", b"after-start", partition=i)
    assert p.flush(60) == 0


def profile_open(data: str) -> None:
    """cProfile of opening the data dir after an unclean stop (the engine part of a start)."""
    import cProfile
    import pstats

    clean = os.path.join(data, ".clean")
    if os.path.exists(clean):
        os.unlink(clean)
    pr = cProfile.Profile()
    pr.enable()
    b = umlog.open(data)
    pr.disable()
    # Not closed (that would write .clean): stop the flusher, drop the lock.
    b._stop.set()
    if b._flusher is not None:
        b._flusher.join()
    b._release_lock()
    pstats.Stats(pr).sort_stats("cumulative").print_stats(25)


def run(work: str, topics: int = 10, partitions: int = 100, records: int = 200,
        segment_bytes: int = 1 << 30, log=print) -> dict:
    data = os.path.join(work, "data")
    t0 = time.monotonic()
    build(data, topics, partitions, records, segment_bytes)
    log(f"built {topics * partitions} partitions x {records} records in {time.monotonic() - t0:.1f} s")

    s = Server(data)
    s.start()
    first = s.startup_s
    assert s.stop() == 0
    s.start()
    clean = s.startup_s
    touch_every_partition(s.bootstrap, topics, partitions)
    s.kill()
    assert not os.path.exists(os.path.join(data, ".clean"))
    s.start()
    unclean = s.startup_s
    rss = s.rss_kb()
    assert s.stop() == 0, s.log_text()[-2000:]
    scanned = check_data_dir(data)
    empty = Server(os.path.join(work, "empty"))  # last: imports are warm by now, as for the others
    empty.start()
    base, base_rss = empty.startup_s, empty.rss_kb()
    empty.stop()
    return {"partitions": topics * partitions, "records_per_partition": records, "empty_s": round(base, 3),
            "first_s": round(first, 3), "clean_s": round(clean, 3), "unclean_s": round(unclean, 3),
            "rss_mb_after_unclean_start": round(rss / 1024, 1), "rss_mb_empty": round(base_rss / 1024, 1),
            "batches_checked": scanned["batches"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--topics", type=int, default=10)
    ap.add_argument("--partitions", type=int, default=100, help="per topic")
    ap.add_argument("--records", type=int, default=200, help="per partition (100-byte values)")
    ap.add_argument("--segment-bytes", type=int, default=1 << 30)
    ap.add_argument("--profile", action="store_true", help="also profile the engine's open after a SIGKILL")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="umlog-startup-")
    try:
        r = run(work, a.topics, a.partitions, a.records, a.segment_bytes)
        print(" ".join(f"{k}={v}" for k, v in r.items()))
        if a.profile:
            profile_open(os.path.join(work, "data"))
    finally:
        if a.keep:
            print("kept", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

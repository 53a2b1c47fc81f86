"""Compaction throughput: a ~1 GiB compacted topic, cleaned by Broker.compact().

    python bench/compaction.py [--gib 1] [--value-size 200] [--keys 100000]
                               [--segment-mib 128] [--codec none] [--dir /tmp]

Writes GIB of keyed records (KEYS distinct keys, uniform, deterministic) in
closed segments of SEGMENT_MIB, drops the page cache's hold on nothing (the
data is what the OS keeps cached: report it as measured), then times one
full compaction and prints MB/s of log read (input bytes / seconds), records/s,
and the bytes left. A second cleaning of the already clean log is timed too
(the map is rebuilt and segments merged; little is written).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from rich.console import Console
from rich.table import Table

import umlog


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--value-size", type=int, default=200)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--segment-mib", type=int, default=128)
    ap.add_argument("--codec", default="none", choices=["none", "lz4", "zstd", "snappy", "gzip"])
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="umlog-compaction-", dir=args.dir)
    console = Console(width=150)
    try:
        path = os.path.join(root, "data")
        target = int(args.gib * (1 << 30))
        value = bytes(range(256)) * (args.value_size // 256 + 1)
        chunk = 10_000
        with umlog.open(path, cleaner_interval_ms=None) as b:
            t = b.create_topic("c", config={"cleanup.policy": "compact", "compression.type": args.codec,
                                            "segment.bytes": args.segment_mib << 20})
            p = t.partition(0)
            t0 = time.perf_counter()
            i = 0
            while p.size_in_bytes() < target:
                keys = [b"key-%08d" % ((i + j) * 7919 % args.keys) for j in range(chunk)]
                vals = [value[(i + j) % 256:(i + j) % 256 + args.value_size] for j in range(chunk)]
                p.append_many(vals, keys)
                i += chunk
            p.roll()
            p.append_many([b"tail"], [b"tail"])
            b.flush()
            write_s = time.perf_counter() - t0
            closed = p.segments[:-1]
            bytes_in = sum(s.size for s in closed)
            records_in = closed[-1].next_offset
            console.print(f"wrote {records_in:,} records, {bytes_in / 1e6:,.0f} MB in {len(closed)} closed segments "
                          f"({write_s:.1f} s)")
            t0 = time.perf_counter()
            res = b.compact("c")[0]
            first_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            res2 = b.compact("c")[0]
            second_s = time.perf_counter() - t0
            kept = len(list(p.read(0, None)))
        table = Table(title=f"compaction of {bytes_in / (1 << 30):.2f} GiB, {args.keys:,} keys, "
                            f"{args.value_size}-byte values, codec {args.codec}")
        for col in ("run", "seconds", "MB/s read", "records/s", "bytes in -> out", "records in -> kept", "segments"):
            table.add_column(col, justify="left" if col == "run" else "right")
        table.add_row("first (everything dirty)", f"{first_s:.2f}", f"{res.bytes_in / first_s / 1e6:,.0f}",
                      f"{res.records_in / first_s:,.0f}", f"{res.bytes_in:,} -> {res.bytes_out:,}",
                      f"{res.records_in:,} -> {res.records_kept:,}", f"{res.segments_in} -> {res.segments_out}")
        table.add_row("second (already clean)", f"{second_s:.2f}", f"{res2.bytes_in / second_s / 1e6:,.0f}",
                      f"{res2.records_in / second_s:,.0f}", f"{res2.bytes_in:,} -> {res2.bytes_out:,}",
                      f"{res2.records_in:,} -> {res2.records_kept:,}", f"{res2.segments_in} -> {res2.segments_out}")
        console.print(table)
        console.print(f"records left in the partition (closed + active): {kept:,}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The embedded log against sqlite3 and plain file writes, in one run.

    python bench/embedded.py [--records 1000000] [--size 100] [--dir /tmp]

Every figure is records/s of the same deterministic data (N records of SIZE
bytes, no fsync unless stated); the ratio column compares with the baseline
named in its row, run in the same process a moment earlier, because the
machine is shared and noisy (ratios, not absolute times, are what we track in
bench/README.md).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sqlite3
import struct
import tempfile
import time

from rich.console import Console
from rich.table import Table

import umlog

READ_REPEAT = 2  # best of two for every read row, the sqlite baseline included


def make_values(n: int, size: int) -> list[bytes]:
    base = [bytes((i * 7 + j) % 251 for j in range(size)) for i in range(1000)]
    return [base[i % 1000] for i in range(n)]


def timed(fn, repeat: int = 1) -> float:
    """Best wall time of ``repeat`` runs of fn (reads are idempotent: they run
    twice, so that no row pays for a fresh process's first large allocations;
    on this VM pyarrow's first multi-GiB allocation alone ran at 0.33 GB/s)."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        try:
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        finally:
            gc.enable()
    return best


def bench_sqlite(root: str, values: list[bytes]) -> tuple[float, float]:
    path = os.path.join(root, "bench.sqlite")
    con = sqlite3.connect(path)
    con.execute("pragma journal_mode=wal")
    con.execute("pragma synchronous=off")
    con.execute("create table log (id integer primary key, v blob)")
    rows = [(v,) for v in values]

    def insert():
        with con:
            con.executemany("insert into log (v) values (?)", rows)

    t_insert = timed(insert)

    def select():
        n = 0
        for _ in con.execute("select id, v from log order by id"):
            n += 1
        assert n == len(values)

    t_select = timed(select, READ_REPEAT)
    con.close()
    return t_insert, t_select


def bench_file(root: str, values: list[bytes]) -> float:
    path = os.path.join(root, "bench.plain")
    pack = struct.Struct(">i").pack

    def write():
        with open(path, "wb") as f:
            w = f.write
            for v in values:
                w(pack(len(v)))
                w(v)

    return timed(write)


def bench_umlog(root: str, values: list[bytes], batch: int) -> dict[str, float]:
    out = {}
    n = len(values)
    d1 = os.path.join(root, "umlog-append")
    with umlog.open(d1) as b:
        t = b.create_topic("bench")
        append = t.append

        def per_record():
            for v in values:
                append(v, partition=0)
            b.flush(durable=False)  # the open batch to the page cache; no fsync, like the baselines

        out["append"] = timed(per_record)
    shutil.rmtree(d1)

    d2 = os.path.join(root, "umlog-many")
    with umlog.open(d2) as b:
        t = b.create_topic("bench")
        chunks = [values[i:i + batch] for i in range(0, n, batch)]

        def many():
            for c in chunks:
                t.append_many(c, partition=0)

        out["append_many"] = timed(many)
        p = t.partition(0)

        def read():
            k = 0
            for _ in p.read(0):
                k += 1
            assert k == n

        out["read"] = timed(read, READ_REPEAT)
        if hasattr(p, "read_table"):
            def read_table():
                tab = p.read_table(0, max_records=n)
                assert tab.num_rows == n

            out["read_table"] = timed(read_table, READ_REPEAT)
    shutil.rmtree(d2)

    d3 = os.path.join(root, "umlog-always")
    with umlog.open(d3, fsync="always") as b:
        t = b.create_topic("bench")
        chunks = [values[i:i + 1000] for i in range(0, n, 1000)]

        def always():
            for c in chunks:
                t.append_many(c, partition=0)

        out["append_many fsync=always (1,000/batch)"] = timed(always)
    shutil.rmtree(d3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--batch", type=int, default=10_000, help="records per append_many call")
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="umlog-bench-", dir=args.dir)
    try:
        values = make_values(args.records, args.size)
        n = len(values)
        sq_insert, sq_select = bench_sqlite(root, values)
        plain = bench_file(root, values)
        um = bench_umlog(root, values, args.batch)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    table = Table(title=f"{n:,} records of {args.size} bytes, no fsync unless stated")
    for col in ("what", "records/s", "ratio", "baseline"):
        table.add_column(col, justify="right" if col != "what" else "left")

    def row(name, secs, base=None, base_name=""):
        ratio = f"{base / secs:.1f}x" if base else ""
        table.add_row(name, f"{n / secs:,.0f}", ratio, base_name)

    row("sqlite executemany (WAL, synchronous=off)", sq_insert)
    row("sqlite select order by id", sq_select)
    row("file.write per record (length-prefixed)", plain)
    row("umlog append (per record)", um["append"], sq_insert, "sqlite executemany")
    row(f"umlog append_many ({args.batch:,}/call)", um["append_many"], sq_insert, "sqlite executemany")
    row("umlog read", um["read"], sq_select, "sqlite select")
    if "read_table" in um:
        row("umlog read_table", um["read_table"], sq_select, "sqlite select")
    key = "append_many fsync=always (1,000/batch)"
    row(f"umlog {key}", um[key], sq_insert, "sqlite executemany (no fsync)")
    Console().print(table)


if __name__ == "__main__":
    main()

"""Micro-benchmarks of the native core and the read paths: the figures quoted in
the code's comments come from here.

Each row is the best of ``--repeat`` runs (the machine is shared: the best run
is the one least disturbed). Rows:

* ``crc32c``: hardware (three lanes) vs the table fallback, 16 MiB and 1 KiB;
* ``encode_batch``: 10,000 x 100-byte values, no keys, per record;
* ``BatchBuilder.append``: one 100-byte record per call, with and without a
  given timestamp (without, the builder reads the clock);
* ``decode_records``: 10,000 x 100-byte values, per record;
* ``read_table chunk``: ``Partition.read_table`` of 1M x 100-byte records with
  each chunk size (``umlog.log.table.TABLE_CHUNK`` is the default), segments
  memory-mapped or read with pread.

Usage::

    python bench/micro.py                # everything
    python bench/micro.py --only crc32c  # one group
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def best(fn, repeat: int) -> float:
    """Least wall time of ``repeat`` calls of ``fn`` (seconds)."""
    out = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t0)
    return out


def bench_crc(core, repeat: int) -> list[tuple[str, str]]:
    rows = []
    big = os.urandom(16 << 20)
    small = os.urandom(1024)
    for name, fn in (("hw", core.crc32c), ("table", core.crc32c_sw)):
        if name == "hw" and not core.crc32c_hw_available():
            rows.append(("crc32c hw", "not available on this CPU"))
            continue
        t = best(lambda fn=fn: fn(big), repeat)
        rows.append((f"crc32c {name} 16 MiB", f"{len(big) / t / 1e9:.1f} GB/s"))
        n = 10_000
        t = best(lambda fn=fn, n=n: [fn(small) for _ in range(n)], repeat)
        rows.append((f"crc32c {name} 1 KiB", f"{t / n * 1e9:.0f} ns"))
    return rows


def bench_codec(core, repeat: int) -> list[tuple[str, str]]:
    values = [os.urandom(100) for _ in range(10_000)]
    t = best(lambda: core.encode_batch(values), repeat)
    data = core.encode_batch(values)
    rows = [("encode_batch, per record", f"{t / len(values) * 1e9:.1f} ns ({len(values) / t / 1e6:.1f} M/s)")]
    t = best(lambda: core.decode_records(data, 0, len(data), 0, -1, None, -1), repeat)
    rows.append(("decode_records, per record", f"{t / len(values) * 1e9:.1f} ns ({len(values) / t / 1e6:.1f} M/s)"))
    v = values[0]
    for label, ts in (("BatchBuilder.append(v)", None), ("BatchBuilder.append(v, timestamp=t)", 1_700_000_000_000)):
        def run(ts=ts):
            b = core.BatchBuilder(0)
            for _ in range(10_000):
                b.append(v, None, None, ts)
        t = best(run, repeat)
        rows.append((label, f"{t / 10_000 * 1e9:.0f} ns"))
    return rows


def bench_read_table(repeat: int) -> list[tuple[str, str]]:
    import umlog
    from umlog.log import table

    rows = []
    work = tempfile.mkdtemp(prefix="umlog-micro-")
    try:
        with umlog.open(os.path.join(work, "d")) as b:
            t = b.create_topic("t")
            v = [b"x" * 100] * 10_000
            for _ in range(100):
                t.append_many(v, partition=0)
            p = t.partition(0)
            n = p.end_offset
            for mapped in (True, False):
                real = table._SegmentBytes.__init__

                def init(self, seg, _mapped, real=real, mapped=mapped):
                    real(self, seg, mapped)

                table._SegmentBytes.__init__ = init
                try:
                    for mib in (1, 4, 8, 16, 32):
                        def run(mib=mib):
                            for _ in table.iter_record_batches(p, 0, None, mib << 20):
                                pass
                        run()  # warm-up: the first pass pays for fresh memory
                        tm = best(run, repeat)
                        rows.append((f"read_table chunk {mib} MiB, {'mmap' if mapped else 'pread'}",
                                     f"{n / tm / 1e6:.1f} M records/s"))
                finally:
                    table._SegmentBytes.__init__ = real
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--only", choices=["crc32c", "codec", "read_table"], default=None)
    a = ap.parse_args()
    sys.path.insert(0, ROOT)  # prefer the source tree (after build_ext --inplace)
    from umlog._native import core

    rows = []
    if a.only in (None, "crc32c"):
        rows += bench_crc(core, a.repeat)
    if a.only in (None, "codec"):
        rows += bench_codec(core, a.repeat)
    if a.only in (None, "read_table"):
        rows += bench_read_table(a.repeat)
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()

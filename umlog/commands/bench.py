"""``umlog bench``: append and read throughput of this machine, in a temp data dir."""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import click

from ._common import Command, emit_json, human_bytes, json_option

__all__ = ["bench"]

STEP = 10_000  # records between progress updates (and per append_many call)


def _values(n: int, size: int) -> list[bytes]:
    base = [bytes((i * 7 + j) % 251 for j in range(size)) for i in range(min(n, 1000))]
    return [base[i % len(base)] for i in range(n)]


@click.command(cls=Command)
@click.option("-n", "--records", type=click.IntRange(1), default=1_000_000, show_default=True)
@click.option("-s", "--size", type=click.IntRange(0), default=100, show_default=True, help="Value bytes.")
@click.option("--dir", "root", type=click.Path(file_okay=False, exists=True), default=None,
              help="Where the temporary data dir goes [default: the system temp dir].")
@click.option("--fsync", type=click.Choice(["never", "always"]), default="never", show_default=True,
              help="Durability of the append phases (always: fdatasync per append_many call).")
@click.option("--repeat", type=click.IntRange(1, 20), default=1, show_default=True,
              help="Run the read phases this many times; the best run counts. The first run of a "
                   "process pays for fresh memory (page faults), later ones reuse it.")
@json_option
def bench(records: int, size: int, root: str | None, fsync: str, repeat: int, as_json: bool) -> None:
    """Measure append (per record and batched), read and read_table throughput.

    Writes RECORDS values of SIZE bytes into a fresh temporary data dir,
    removed afterwards. Figures are records/s and MB/s of value bytes.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    import umlog

    from ._common import console

    values = _values(records, size)
    tmp = tempfile.mkdtemp(prefix="umlog-bench-", dir=root)
    results: list[tuple[str, float]] = []
    progress = Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), disable=as_json, console=console(stderr=True))
    try:
        with progress:
            def phase(name: str, fn, runs: int = 1) -> None:
                best = None
                for i in range(runs):
                    label = name if runs == 1 else f"{name} {i + 1}/{runs}"
                    task = progress.add_task(label, total=records)
                    t0 = time.perf_counter()
                    fn(lambda n, task=task: progress.advance(task, n))
                    secs = time.perf_counter() - t0
                    best = secs if best is None else min(best, secs)
                results.append((name, best))

            with umlog.open(os.path.join(tmp, "a"), fsync=fsync, cleaner_interval_ms=None) as b:
                t = b.create_topic("bench")
                append = t.append

                def per_record(advance) -> None:
                    for start in range(0, records, STEP):
                        for v in values[start:start + STEP]:
                            append(v, partition=0)
                        advance(min(STEP, records - start))
                    b.flush()

                phase("append (per record)", per_record)
            with umlog.open(os.path.join(tmp, "b"), fsync=fsync, cleaner_interval_ms=None) as b:
                p = b.create_topic("bench").partition(0)

                def many(advance) -> None:
                    for start in range(0, records, STEP):
                        p.append_many(values[start:start + STEP])
                        advance(min(STEP, records - start))
                    b.flush()

                phase(f"append_many ({STEP:,}/call)", many)

                def read(advance) -> None:
                    n = 0
                    for _ in p.read(0):
                        n += 1
                        if n % STEP == 0:
                            advance(STEP)
                    advance(n % STEP)
                    assert n == records

                phase("read (Record objects)", read, repeat)

                def read_table(advance) -> None:
                    from umlog.log.table import iter_record_batches

                    n = 0
                    for rb in iter_record_batches(p, 0):
                        n += rb.num_rows
                        advance(rb.num_rows)
                    assert n == records

                phase("read_table (Arrow)", read_table, repeat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [{"phase": name, "seconds": round(secs, 4), "records_per_s": round(records / secs),
             "mb_per_s": round(records * size / secs / 1e6, 1)} for name, secs in results]
    if as_json:
        emit_json({"records": records, "value_bytes": size, "fsync": fsync, "repeat": repeat, "results": rows})
        return
    best = f", reads best of {repeat}" if repeat > 1 else ""
    table = Table(title=f"umlog bench: {records:,} records of {human_bytes(size)}, fsync={fsync}{best}")
    for col in ("phase", "records/s", "MB/s", "seconds"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    for r in rows:
        table.add_row(r["phase"], f"{r['records_per_s']:,}", f"{r['mb_per_s']:,}", f"{r['seconds']:.3f}")
    console().print(table)

"""``umlog export TOPIC --parquet DIR``: a topic as Parquet files, one per partition."""

from __future__ import annotations

import click

from ._common import Command, data_dir_option, emit_json, json_option, open_data_dir

__all__ = ["export"]


@click.command(cls=Command)
@click.argument("topic")
@data_dir_option
@click.option("--parquet", "directory", required=True, type=click.Path(file_okay=False),
              help="Write DIR/<topic>-<partition>.parquet (DIR is created).")
@click.option("--compression", type=click.Choice(["zstd", "snappy", "gzip", "lz4", "none"]), default="zstd",
              show_default=True)
@click.option("--row-group", "rows_per_group", type=click.IntRange(1), default=1 << 20, show_default=True,
              help="Records per Parquet row group (about what is held in memory).")
@json_option
def export(topic: str, data_dir: str, directory: str, compression: str, rows_per_group: int,
           as_json: bool) -> None:
    """Export TOPIC to Parquet (columns offset, timestamp, key, value, headers).

    Reads the data dir read-only (works beside a running server) and streams
    record batches, so a topic larger than memory exports fine; each file is
    written under a temporary name and renamed when complete.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from umlog.log.table import export_parquet

    with open_data_dir(data_dir, readonly=True) as b:
        t = b.topic(topic)
        total = sum(p.end_offset - p.start_offset for p in t.partitions)
        progress = Progress(TextColumn("[bold]export[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), disable=as_json, transient=False)
        with progress:
            task = progress.add_task(topic, total=total)
            out = export_parquet(b, topic, directory, compression=compression, rows_per_group=rows_per_group,
                                 progress=lambda n: progress.advance(task, n))
    files = [{"path": path, "records": n} for path, n in out]
    if as_json:
        emit_json({"topic": topic, "files": files, "records": sum(f["records"] for f in files)})
    else:
        for f in files:
            click.echo(f"{f['path']}: {f['records']} record(s)")

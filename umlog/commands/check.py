"""``umlog check [TOPIC...]``: verify every batch and index entry of a data dir.

Read-only and lock-free: safe beside a running ``umlog serve`` (see
``umlog/log/check.py`` for what a live writer leaves that is not damage).
Exit 0 with a one-line summary when all is well; exit 1 with a table of
what is damaged (topic, partition, file, byte position, first bad offset).
"""

from __future__ import annotations

import dataclasses
import os
import sys

import click

from ._common import Command, console, data_dir_option, emit_json, fail, human_bytes, json_option

__all__ = ["check"]


@click.command(cls=Command)
@data_dir_option
@json_option
@click.argument("topics", nargs=-1)
def check(data_dir: str, as_json: bool, topics: tuple[str, ...]) -> None:
    """Verify every batch (CRC, offsets, sizes) and index entry of the data dir."""
    from umlog.log.check import check_data_dir

    if not os.path.isfile(os.path.join(data_dir, "meta", "cluster.json")):
        raise fail(f"{data_dir} is not a umlog data dir (no meta/cluster.json)")
    r = check_data_dir(data_dir, topics or None)
    if as_json:
        emit_json({**{k: v for k, v in dataclasses.asdict(r).items() if k != "damage"},
                   "ok": r.ok, "damage": [dataclasses.asdict(d) for d in r.damage]})
    else:
        summary = (f"{r.topics} topic(s), {r.partitions} partition(s), {r.segments} segment(s), "
                   f"{r.batches:,} batches, {human_bytes(r.bytes)}, {r.index_entries:,} index entries"
                   + (" (a writer is running: the tail being written is not checked)" if r.writer_alive else ""))
        if r.ok:
            click.echo(f"ok: {summary}")
        else:
            from rich.table import Table

            table = Table(title=f"damage in {data_dir}")
            for col in ("topic", "partition", "file", "byte", "first bad offset", "what"):
                table.add_column(col, justify="right" if col in ("partition", "byte", "first bad offset") else "left",
                                 no_wrap=col != "what")
            for d in r.damage:
                table.add_row(d.topic, str(d.partition), d.file, str(d.position),
                              str(d.offset) if d.offset >= 0 else "?", d.what)
            console().print(table)
            click.echo(f"damaged: {len(r.damage)} problem(s) in {summary}", err=True)
    sys.exit(0 if r.ok else 1)

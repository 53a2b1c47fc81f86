"""``umlog share-groups list|describe``: share groups (queues) and their windows.

Read-only on a data dir: ``__share_group_state`` is replayed from a read-only
broker, so it works beside a running writer (it sees what that writer has
written to the page cache). Locks are not written (umlog/delivery/state.py):
records acquired by a running writer show as available here.
"""

from __future__ import annotations

import click

from ._common import CliGroup, data_dir_option, emit_json, fail, json_option, open_data_dir

__all__ = ["share_groups"]


@click.group("share-groups", cls=CliGroup)
def share_groups() -> None:
    """List and describe share groups (queues over topics): in flight, unacked, delivery counts."""


def _age(ms) -> str:
    if ms is None:
        return "-"
    s = ms / 1000
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


@share_groups.command("list")
@data_dir_option
@json_option
def list_(data_dir: str, as_json: bool) -> None:
    """Share groups of the data dir: topics, unacked records, oldest unacked age."""
    from umlog.delivery.describe import list_groups

    with open_data_dir(data_dir, readonly=True) as b:
        rows = list_groups(b)
    if as_json:
        emit_json(rows)
        return
    from rich.table import Table

    from ._common import console

    table = Table(title=f"share groups at {data_dir}" if rows else f"no share groups at {data_dir}")
    for col in ("group", "topics", "partitions", "unacked", "oldest unacked"):
        table.add_column(col, justify="left" if col in ("group", "topics") else "right")
    for r in rows:
        table.add_row(r["group"], ", ".join(r["topics"]), str(r["partitions"]), f"{r['unacked']:,}",
                      _age(r["oldest_unacked_age_ms"]))
    console().print(table)


@share_groups.command()
@click.argument("group")
@data_dir_option
@json_option
def describe(group: str, data_dir: str, as_json: bool) -> None:
    """GROUP's window per partition: start offset, in flight, acked, delivery counts, oldest unacked age."""
    from umlog.delivery.describe import describe_group

    with open_data_dir(data_dir, readonly=True) as b:
        d = describe_group(b, group)
    if d is None:
        raise fail(f"unknown share group {group!r} in {data_dir}")
    if as_json:
        emit_json(d)
        return
    from rich.table import Table

    from ._common import console

    out = console()
    out.print(f"share group {group}  unacked {d['unacked']:,}  oldest unacked {_age(d['oldest_unacked_age_ms'])}")
    t = Table()
    cols = ("topic", "partition", "start offset", "end offset", "in flight", "available", "acked", "archived",
            "unacked", "delivery counts", "oldest unacked")
    for col in cols:
        t.add_column(col, justify="left" if col in ("topic", "delivery counts") else "right")
    for r in d["partitions"]:
        counts = " ".join(f"{c}x{n}" for c, n in r["delivery_counts"].items()) or "-"
        t.add_row(r["topic"], str(r["partition"]), f"{r['start_offset']:,}",
                  "-" if r["end_offset"] is None else f"{r['end_offset']:,}", str(r["in_flight"]), str(r["available"]),
                  str(r["acked"]), str(r["archived"]), f"{r['unacked']:,}", counts, _age(r["oldest_unacked_age_ms"]))
    out.print(t)

"""``umlog topics list|create|describe|delete|config``."""

from __future__ import annotations

import click

from ._common import (
    CliGroup,
    data_dir_option,
    emit_json,
    fail,
    human_bytes,
    json_option,
    open_data_dir,
    parse_config_pairs,
)

__all__ = ["topics"]


def _partition_info(p, segments: bool) -> dict:
    info = {
        "partition": p.index,
        "start_offset": p.start_offset,
        "end_offset": p.end_offset,
        "records": p.end_offset - p.start_offset,
        "size_bytes": p.size_in_bytes(),
        "segments": len(p.segments),
    }
    if segments:
        info["segment_list"] = [
            {
                "base_offset": s.base_offset,
                "next_offset": s.next_offset,
                "size_bytes": s.size,
                "max_timestamp": s.max_timestamp,
                "file": s.log_path,
            }
            for s in p.segments
        ]
    return info


@click.group(cls=CliGroup)
def topics() -> None:
    """List, create, describe, delete topics and change their configs."""


@topics.command("list")
@data_dir_option
@click.option("--internal", is_flag=True, help="Include internal topics (__consumer_offsets).")
@json_option
def list_(data_dir: str, internal: bool, as_json: bool) -> None:
    """The topics of the data dir, with partitions, records and size."""
    with open_data_dir(data_dir, readonly=True) as b:
        rows = []
        for name in b.topics(internal=internal):
            t = b.topic(name)
            parts = [_partition_info(p, False) for p in t.partitions]
            rows.append({
                "topic": name,
                "partitions": t.num_partitions,
                "records": sum(x["records"] for x in parts),
                "size_bytes": sum(x["size_bytes"] for x in parts),
                "cleanup_policy": t.config["cleanup.policy"],
            })
    if as_json:
        emit_json(rows)
        return
    from rich.table import Table

    from ._common import console

    table = Table(title=f"topics in {data_dir}" if rows else f"no topics in {data_dir}")
    for col in ("topic", "partitions", "records", "size", "cleanup.policy"):
        table.add_column(col, justify="left" if col in ("topic", "cleanup.policy") else "right")
    for r in rows:
        table.add_row(r["topic"], str(r["partitions"]), f"{r['records']:,}", human_bytes(r["size_bytes"]),
                      r["cleanup_policy"])
    console().print(table)


@topics.command()
@click.argument("name")
@data_dir_option
@click.option("-p", "--partitions", type=click.IntRange(1, 100_000), default=1, show_default=True)
@click.option("-c", "--config", "configs", multiple=True, metavar="KEY=VALUE",
              help="A topic config override (repeatable), e.g. retention.ms=86400000.")
@click.option("--if-not-exists", is_flag=True, help="Succeed if the topic already exists.")
@json_option
def create(name: str, data_dir: str, partitions: int, configs: tuple[str, ...], if_not_exists: bool,
           as_json: bool) -> None:
    """Create topic NAME (creating the data dir if needed)."""
    from umlog.errors import TopicExistsError

    cfg = parse_config_pairs(configs)
    with open_data_dir(data_dir, readonly=False, create=True) as b:
        try:
            t = b.create_topic(name, partitions, cfg)
            created = True
        except TopicExistsError:
            if not if_not_exists:
                raise
            t, created = b.topic(name), False
        except ValueError as e:  # a bad name or partition count (InvalidConfigError is one too)
            raise fail(str(e)) from None
        out = {"topic": name, "partitions": t.num_partitions, "created": created, "config": dict(t.config.overrides)}
    if as_json:
        emit_json(out)
    else:
        click.echo(f"{'created' if created else 'exists:'} topic {name} ({t.num_partitions} partition"
                   f"{'s' if t.num_partitions != 1 else ''})")


@topics.command()
@click.argument("name")
@data_dir_option
@click.option("--segments", is_flag=True, help="List every segment of every partition.")
@json_option
def describe(name: str, data_dir: str, segments: bool, as_json: bool) -> None:
    """Partitions of NAME: start/end offsets, records, size, segments; its config overrides.
    For ``__delayed``: pending delayed records and the next due time."""
    with open_data_dir(data_dir, readonly=True) as b:
        t = b.topic(name)
        parts = []
        for p in t.partitions:
            p.refresh()
            parts.append(_partition_info(p, segments))
        out = {"topic": name, "id": t.id, "partitions": parts, "config": dict(t.config.overrides)}
        if name == "__delayed":
            from ..delivery.delay import delayed_stats

            out["delayed"] = delayed_stats(b)
    if as_json:
        emit_json(out)
        return
    from rich.table import Table

    from ._common import console

    c = console()
    overrides = ", ".join(f"{k}={v}" for k, v in sorted(out["config"].items())) or "none"
    c.print(f"[bold]{name}[/bold]  id {out['id']}  partitions {len(parts)}  overrides: {overrides}")
    table = Table()
    for col in ("partition", "start offset", "end offset", "records", "size", "segments"):
        table.add_column(col, justify="right")
    for x in parts:
        table.add_row(str(x["partition"]), str(x["start_offset"]), str(x["end_offset"]), f"{x['records']:,}",
                      human_bytes(x["size_bytes"]), str(x["segments"]))
    c.print(table)
    if "delayed" in out:
        import datetime

        d = out["delayed"]
        nxt = d["next_due_ms"]
        when = "none" if nxt is None else datetime.datetime.fromtimestamp(
            nxt / 1000, datetime.UTC).isoformat(timespec="milliseconds")
        c.print(f"delayed records pending: {d['pending']:,} (+{d['not_indexed']:,} not yet indexed)  "
                f"next due: {when}")
    if segments:
        seg_table = Table(title="segments")
        for col in ("partition", "base offset (file name)", "next offset", "size", "max timestamp"):
            seg_table.add_column(col, justify="right")
        for x in parts:
            for s in x["segment_list"]:
                seg_table.add_row(str(x["partition"]), str(s["base_offset"]), str(s["next_offset"]),
                                  human_bytes(s["size_bytes"]), str(s["max_timestamp"]))
        c.print(seg_table)


@topics.command()
@click.argument("name")
@data_dir_option
@json_option
def delete(name: str, data_dir: str, as_json: bool) -> None:
    """Delete topic NAME and its data."""
    with open_data_dir(data_dir, readonly=False) as b:
        b.topic(name)  # unknown topic: the one-line error
        try:
            b.delete_topic(name)
        except ValueError as e:  # internal topics
            raise fail(str(e)) from None
    if as_json:
        emit_json({"topic": name, "deleted": True})
    else:
        click.echo(f"deleted topic {name}")


@topics.command()
@click.argument("name")
@data_dir_option
@click.option("-s", "--set", "sets", multiple=True, metavar="KEY=VALUE", help="Set an override (repeatable).")
@click.option("-d", "--delete", "deletes", multiple=True, metavar="KEY",
              help="Remove an override: back to the default (repeatable).")
@json_option
def config(name: str, data_dir: str, sets: tuple[str, ...], deletes: tuple[str, ...], as_json: bool) -> None:
    """Show the config of NAME, or change it with --set/--delete.

    Every change is validated first (unknown key, wrong type, out of range):
    a bad one changes nothing.
    """
    from umlog.config import TOPIC_CONFIGS

    changing = bool(sets or deletes)
    with open_data_dir(data_dir, readonly=not changing) as b:
        t = b.topic(name)
        if changing:
            cfg = b.alter_topic_config(name, parse_config_pairs(sets), list(deletes))
        else:
            cfg = t.config
        rows = [{"key": k, "value": v, "override": not cfg.is_default(k), "doc": TOPIC_CONFIGS[k].doc}
                for k, v in sorted(cfg.items())]
    if as_json:
        emit_json({"topic": name, "config": {r["key"]: r["value"] for r in rows},
                   "overrides": sorted(r["key"] for r in rows if r["override"])})
        return
    from rich.table import Table

    from ._common import console

    table = Table(title=f"config of {name}" + (" (changed)" if changing else ""))
    for col in ("key", "value", "source", "meaning"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["key"], str(r["value"]).lower() if isinstance(r["value"], bool) else str(r["value"]),
                      "override" if r["override"] else "default", r["doc"])
    console().print(table)

"""``umlog mirror --from B --to B --topics REGEX [--groups REGEX]``: replicate
topics and group offsets between Kafka-protocol clusters (umlog/mirror.py)
until SIGTERM/SIGINT; ``umlog mirror status``: its lag, read from both sides."""

from __future__ import annotations

import signal

import click

from ._common import CliGroup, emit_json, fail, json_option

__all__ = ["mirror"]


def _spec_options(f):
    f = click.option("--groups", default=None, metavar="REGEX", help="Consumer groups whose offsets are translated.")(f)
    f = click.option("--topics", default=None, metavar="REGEX", help="Source topics to mirror (whole name).")(f)
    f = click.option("--to", "target", default=None, metavar="BOOTSTRAP", help="Target cluster.")(f)
    f = click.option("--from", "source", default=None, metavar="BOOTSTRAP", help="Source cluster.")(f)
    return f


def _spec(source, target, topics, groups, **kw):
    from umlog.mirror import MirrorSpec

    if not source or not target or not topics:
        raise fail("--from, --to and --topics are required")
    return MirrorSpec(source=source, target=target, topics=topics, groups=groups, **kw)


@click.group(cls=CliGroup, invoke_without_command=True)
@_spec_options
@click.option("--name", default="mirror", show_default=True, help="Mirror name (its source consumer's group).")
@click.option("--source-alias", default="source", show_default=True)
@click.option("--target-alias", default="target", show_default=True)
@click.option("--sync-interval-ms", type=int, default=1000, show_default=True)
@click.option("--checkpoint-interval-ms", type=int, default=5000, show_default=True)
@click.option("--refresh-interval-ms", type=int, default=10_000, show_default=True)
@click.pass_context
def mirror(ctx, source, target, topics, groups, name, source_alias, target_alias, sync_interval_ms,
           checkpoint_interval_ms, refresh_interval_ms) -> None:
    """Replicate topics (and group offsets) into another cluster until SIGTERM/SIGINT."""
    if ctx.invoked_subcommand is not None:
        return
    from umlog.mirror import Mirror

    m = Mirror(_spec(source, target, topics, groups, name=name, source_alias=source_alias,
                     target_alias=target_alias, sync_interval_s=sync_interval_ms / 1000,
                     checkpoint_interval_s=checkpoint_interval_ms / 1000,
                     refresh_interval_s=refresh_interval_ms / 1000))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: m._stop.set())
    try:
        m.run()
    except Exception as e:
        raise fail(f"mirror stopped: {e}") from None


@mirror.command()
@_spec_options
@json_option
def status(source, target, topics, groups, as_json: bool) -> None:
    """Per partition: the next source offset to copy (from the target's tail) and the lag."""
    from umlog.mirror import mirror_status

    rows = mirror_status(_spec(source, target, topics, groups))
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        click.echo(f"{r['topic']}-{r['partition']}: next {r['next']} of {r['source_end']}, lag {r['lag_records']} "
                   f"record(s), {r['lag_seconds']} s")

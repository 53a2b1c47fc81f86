"""``umlog tier status [TOPIC]``: tiered storage of a data dir (local and remote
offset ranges and sizes, the upload backlog), read-only beside a running server."""

from __future__ import annotations

import click

from ._common import CliGroup, data_dir_option, emit_json, human_bytes, json_option, open_data_dir

__all__ = ["tier"]


@click.group(cls=CliGroup)
def tier() -> None:
    """Tiered storage: what is local, what is in the object store."""


@tier.command()
@click.argument("topic", required=False)
@data_dir_option
@json_option
def status(topic: str | None, data_dir: str, as_json: bool) -> None:
    """Local vs remote ranges and sizes of tiered partitions, and the upload backlog."""
    with open_data_dir(data_dir, readonly=True) as b:
        if b.tiering is None:
            rows = []
        else:
            b.tiering._catch_up()
            rows = b.tier_status(topic)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no tiered partitions" if topic is None else f"{topic}: not tiered")
        return
    for r in rows:
        remote = (f"[{r['remote_start']}, {r['remote_end']}) {r['remote_segments']} segment(s) "
                  f"{human_bytes(r['remote_bytes'])}" if r["remote_segments"] else "none")
        click.echo(f"{r['topic']}-{r['partition']}: log [{r['start_offset']}, {r['end_offset']}) "
                   f"local [{r['local_start']}, {r['end_offset']}) {r['local_segments']} segment(s) "
                   f"{human_bytes(r['local_bytes'])}; remote {remote}; backlog {r['backlog_segments']} segment(s) "
                   f"{human_bytes(r['backlog_bytes'])}")

"""``umlog webhooks list|add|remove|status``: the webhooks a server runs.

``add`` and ``remove`` edit ``DATA/meta/webhooks.json`` (replaced atomically,
under a lock); a running ``umlog serve`` looks at that file every second and
starts or stops webhooks to match, no restart needed. Webhooks of the config
file (``[[webhook]]`` in umlog.toml) are listed too, marked ``config``: from
``--config FILE`` when given, else as the server last reported them in
``DATA/meta/webhooks-status.json``; the CLI cannot remove them. ``status``
adds the server's counts (delivered, retried, dead-lettered, last error; what
it last wrote to webhooks-status.json, at most a second old while it runs)
to what the share group's saved state says (unacked records, the oldest
unacked record's age, read from a read-only broker beside the server).
"""

from __future__ import annotations

import os

import click

from ._common import CliGroup, data_dir_option, emit_json, fail, json_option

__all__ = ["webhooks"]

_config_option = click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                              help="The server's TOML config file, for its [[webhook]] entries.")


@click.group("webhooks", cls=CliGroup)
def webhooks() -> None:
    """Webhooks: push a topic to an HTTP endpoint (list, add, remove, status)."""


def _check_data_dir(data_dir: str) -> None:
    if not os.path.isfile(os.path.join(data_dir, "meta", "cluster.json")):
        raise fail(f"no data dir at {data_dir} (start umlog serve or create a topic first)")


def _all(data_dir: str, config_file: str | None) -> list[dict]:
    """Every webhook: the config file's (source "config") then the data dir's ("cli")."""
    from umlog.delivery.webhook import read_file, read_status

    rows: list[dict] = []
    if config_file:
        from umlog.server.door import all_settings
        from umlog.server.settings import SettingsError, load_file, resolve

        try:
            settings = resolve(all_settings(), load_file(config_file), config_file)
        except SettingsError as e:
            raise fail(str(e)) from None
        rows += [{**d, "source": "config"} for d in settings.array("webhook")]
    else:
        for s in read_status(data_dir).get("webhooks", {}).values():
            if s.get("source") == "config":
                rows.append({k: s.get(k) for k in ("name", "topic", "url", "ordering", "concurrency",
                                                    "max_attempts", "dead_letter")} | {"source": "config"})
    names = {r["name"] for r in rows}
    rows += [{**d, "source": "cli"} for d in read_file(data_dir) if d.get("name") not in names]
    for r in rows:
        r.pop("secret", None)  # never printed
    return rows


@webhooks.command("list")
@data_dir_option
@_config_option
@json_option
def list_(data_dir: str, config_file: str | None, as_json: bool) -> None:
    """Every webhook: name, topic, URL, ordering, where it is configured."""
    _check_data_dir(data_dir)
    rows = _all(data_dir, config_file)
    if as_json:
        emit_json(rows)
        return
    from rich.table import Table

    from ._common import console

    table = Table(title=f"webhooks at {data_dir}" if rows else f"no webhooks at {data_dir}")
    for col in ("name", "topic", "url", "ordering", "source"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], str(r.get("topic")), str(r.get("url")), str(r.get("ordering") or "none"),
                      r["source"])
    console().print(table)


@webhooks.command()
@click.argument("name")
@click.option("--topic", required=True, help="Topic to push (created if missing).")
@click.option("--url", required=True, help="Endpoint, http:// or https://.")
@click.option("--secret", default=None, help="Signing secret, whsec_BASE64 or any string [default: a new whsec_ one, "
                                             "printed once].")
@click.option("--max-attempts", type=int, default=None, help="Attempts before the dead-letter topic [default: 8].")
@click.option("--backoff-ms", nargs=2, type=int, default=None, metavar="MIN MAX",
              help="Retry delay bounds in ms [default: 1000 600000].")
@click.option("--dead-letter", default=None, help="Dead-letter topic [default: webhook.NAME.dlq].")
@click.option("--concurrency", type=int, default=None, help="Most POSTs in flight [default: 32].")
@click.option("--ordering", type=click.Choice(["none", "key"]), default=None, help="Per-key order [default: none].")
@click.option("--timeout-ms", type=int, default=None, help="Request timeout [default: 10000].")
@click.option("--start", type=click.Choice(["latest", "earliest"]), default=None,
              help="Where a new webhook starts in its topic [default: latest].")
@data_dir_option
@_config_option
@json_option
def add(name: str, data_dir: str, config_file: str | None, as_json: bool, **options) -> None:
    """Add webhook NAME; a running server starts it within a second or two."""
    from umlog.delivery.webhook import new_secret, update_file
    from umlog.server.settings import SettingsError
    from umlog.server.webhooks import parse_webhook

    _check_data_dir(data_dir)
    entry = {"name": name, **{k: v for k, v in options.items() if v is not None}}
    if "backoff_ms" in entry:
        entry["backoff_ms"] = list(entry["backoff_ms"])
    generated = "secret" not in entry
    if generated:
        entry["secret"] = new_secret()
    try:
        entry = parse_webhook(entry, "umlog webhooks add")
    except SettingsError as e:
        raise fail(str(e)) from None
    if any(r["name"] == name and r["source"] == "config" for r in _all(data_dir, config_file)):
        raise fail(f"webhook {name!r} is in the config file; change it there")
    entry = {k: v for k, v in entry.items() if v is not None}

    def change(entries: list[dict]) -> list[dict]:
        if any(e.get("name") == name for e in entries):
            raise fail(f"webhook {name!r} exists (umlog webhooks remove {name} first)")
        return [*entries, entry]

    update_file(data_dir, change)
    if as_json:
        emit_json({"added": name, "secret": entry["secret"] if generated else None})
    else:
        click.echo(f"added webhook {name}: {entry['topic']} -> {entry['url']}")
        if generated:
            click.echo(f"secret: {entry['secret']}")


@webhooks.command()
@click.argument("name")
@data_dir_option
@_config_option
@json_option
def remove(name: str, data_dir: str, config_file: str | None, as_json: bool) -> None:
    """Remove webhook NAME (added with the CLI); a running server stops it within a second or two."""
    from umlog.delivery.webhook import update_file

    _check_data_dir(data_dir)
    if any(r["name"] == name and r["source"] == "config" for r in _all(data_dir, config_file)):
        raise fail(f"webhook {name!r} is from the config file; remove its [[webhook]] there and restart the server")

    def change(entries: list[dict]) -> list[dict]:
        if not any(e.get("name") == name for e in entries):
            raise fail(f"unknown webhook {name!r} in {data_dir}")
        return [e for e in entries if e.get("name") != name]

    update_file(data_dir, change)
    if as_json:
        emit_json({"removed": name})
    else:
        click.echo(f"removed webhook {name}")


def _age(ms) -> str:
    if ms is None:
        return "-"
    s = ms / 1000
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


@webhooks.command()
@click.argument("name", required=False)
@data_dir_option
@_config_option
@json_option
def status(name: str | None, data_dir: str, config_file: str | None, as_json: bool) -> None:
    """Per webhook: in flight, delivered, unacked, oldest unacked age, dead letters, last error."""
    import time

    from umlog.delivery.describe import describe_group
    from umlog.delivery.webhook import group_name, read_status
    from umlog.errors import UnknownTopicError

    from ._common import open_data_dir

    _check_data_dir(data_dir)
    hooks = _all(data_dir, config_file)
    if name is not None:
        hooks = [h for h in hooks if h["name"] == name]
        if not hooks:
            raise fail(f"unknown webhook {name!r} in {data_dir}")
    server = read_status(data_dir)
    reported = server.get("webhooks", {})
    rows = []
    with open_data_dir(data_dir, readonly=True) as b:
        for h in hooks:
            s = reported.get(h["name"], {})
            d = describe_group(b, group_name(h["name"])) or {}
            dlq = h.get("dead_letter") or f"webhook.{h['name']}.dlq"
            try:
                dead = sum(p.end_offset - p.start_offset for p in b.topic(dlq).partitions)
            except UnknownTopicError:
                dead = 0
            rows.append({"name": h["name"], "source": h["source"], "topic": h.get("topic"),
                         "running": bool(s.get("running")), "in_flight": s.get("in_flight", 0),
                         "delivered": s.get("delivered", 0), "retried": s.get("retried", 0),
                         "dead_lettered": s.get("dead_lettered", 0), "dead_letter_topic": dlq,
                         "dead_letter_records": dead, "unacked": d.get("unacked"),
                         "oldest_unacked_age_ms": d.get("oldest_unacked_age_ms"),
                         "last_error": s.get("last_error"), "last_error_at_ms": s.get("last_error_at_ms"),
                         "last_success_at_ms": s.get("last_success_at_ms")})
    if as_json:
        emit_json({"server_pid": server.get("pid"), "reported_at_ms": server.get("written_at_ms"),
                   "webhooks": rows})
        return
    from rich.table import Table

    from ._common import console

    at = server.get("written_at_ms")
    t = Table(title=f"webhooks at {data_dir} (server counts as of "
                    f"{'never' if at is None else _age(int(time.time() * 1000) - at) + ' ago'})")
    for col in ("name", "running", "in flight", "delivered", "retried", "unacked", "oldest unacked", "dead letters",
                "last error"):
        t.add_column(col, justify="left" if col in ("name", "last error") else "right")
    for r in rows:
        t.add_row(r["name"], "yes" if r["running"] else "no", str(r["in_flight"]), f"{r['delivered']:,}",
                  f"{r['retried']:,}", "-" if r["unacked"] is None else f"{r['unacked']:,}",
                  _age(r["oldest_unacked_age_ms"]), f"{r['dead_letter_records']:,}", r["last_error"] or "-")
    console().print(t)

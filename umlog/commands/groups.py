"""``umlog groups list|describe``: consumer groups, their committed offsets and lag.

Two sources, one output:

* ``--data-dir`` (default): the data dir's ``__consumer_offsets``, opened
  read-only, so it works beside a running ``umlog serve`` (it sees what the
  server has written to the page cache). Only committed offsets live there:
  members are known to a running server alone.
* ``--bootstrap HOST:PORT``: ask a server (umlog or Kafka) through
  confluent-kafka's AdminClient: state, members and their assignments,
  committed offsets (OffsetFetch) and end offsets (ListOffsets).
"""

from __future__ import annotations

from typing import Any

import click

from ._common import CliGroup, data_dir_option, emit_json, fail, json_option, open_data_dir

__all__ = ["groups"]

ADMIN_TIMEOUT_S = 15.0


def _bootstrap_option(f):
    return click.option("--bootstrap", metavar="HOST:PORT", default=None,
                        help="Ask this Kafka-protocol server instead of reading --data-dir.")(f)


@click.group(cls=CliGroup)
def groups() -> None:
    """List and describe consumer groups (committed offsets, lag, members)."""


# --- the data dir -----------------------------------------------------------------------------


def _offset_rows(b, group: str) -> list[dict]:
    from umlog.errors import UnknownTopicError

    rows = []
    for (topic, index), v in b.offsets.group_offsets(group).items():
        end = None
        try:
            t = b.topic(topic)
            if index < t.num_partitions:
                p = t.partitions[index]
                p.refresh()
                end = p.end_offset
        except UnknownTopicError:
            pass
        rows.append({"topic": topic, "partition": index, "committed": v.offset, "end_offset": end,
                     "lag": None if end is None else max(0, end - v.offset), "metadata": v.metadata,
                     "commit_timestamp": v.commit_timestamp})
    return rows


def _local_list(data_dir: str) -> list[dict]:
    with open_data_dir(data_dir, readonly=True) as b:
        out = []
        for g in b.groups():
            rows = _offset_rows(b, g)
            out.append({"group": g, "state": "Empty", "protocol_type": "", "members": None,
                        "partitions": len(rows), "lag": sum(r["lag"] or 0 for r in rows)})
        return out


def _local_describe(data_dir: str, group: str) -> dict:
    with open_data_dir(data_dir, readonly=True) as b:
        rows = _offset_rows(b, group)
        if not rows:
            raise fail(f"unknown group {group!r} in {data_dir} (no committed offsets)")
        return {"group": group, "source": data_dir, "state": None, "protocol": None, "members": None,
                "offsets": rows, "lag": sum(r["lag"] or 0 for r in rows)}


# --- a server -------------------------------------------------------------------------------------


def _admin(bootstrap: str):
    try:
        from confluent_kafka.admin import AdminClient
    except ImportError:  # pragma: no cover - a test dependency, optional at run time
        raise fail("--bootstrap needs confluent-kafka (pip install confluent-kafka)") from None
    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000,
                        "log_level": 0, "logger": _quiet_logger()})


def _quiet_logger():
    import logging

    lg = logging.getLogger("umlog.cli.admin")
    lg.propagate = False
    lg.addHandler(logging.NullHandler())
    return lg


def _result(fut, what: str):
    try:
        return fut.result(timeout=ADMIN_TIMEOUT_S)
    except Exception as e:  # KafkaException, TimeoutError
        raise fail(f"{what}: {e}") from None


def _state(s: Any) -> str:
    """confluent-kafka's ConsumerGroupState enum -> Kafka's spelling."""
    name = getattr(s, "name", str(s)).upper()
    return {"EMPTY": "Empty", "STABLE": "Stable", "PREPARING_REBALANCING": "PreparingRebalance",
            "COMPLETING_REBALANCING": "CompletingRebalance", "DEAD": "Dead"}.get(name, name.title())


def _remote_list(bootstrap: str) -> list[dict]:
    admin = _admin(bootstrap)
    res = _result(admin.list_consumer_groups(request_timeout=ADMIN_TIMEOUT_S), f"cannot list groups at {bootstrap}")
    return [{"group": g.group_id, "state": _state(g.state),
             "protocol_type": "" if g.is_simple_consumer_group else "consumer", "members": None,
             "partitions": None, "lag": None}
            for g in sorted(res.valid, key=lambda g: g.group_id)]


def _remote_describe(bootstrap: str, group: str) -> dict:
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    admin = _admin(bootstrap)
    where = f"cannot describe group {group!r} at {bootstrap}"
    futs = admin.describe_consumer_groups([group], request_timeout=ADMIN_TIMEOUT_S)
    try:
        d = futs[group].result()
    except Exception as e:
        if "GROUP_ID_NOT_FOUND" in str(e) or "not found" in str(e).lower():
            raise fail(f"unknown group {group!r} at {bootstrap}") from None
        raise fail(f"{where}: {e}") from None
    members = []
    owner = {}
    for m in d.members:
        tps = sorted((tp.topic, tp.partition) for tp in (m.assignment.topic_partitions if m.assignment else []))
        for tp in tps:
            owner[tp] = m.member_id
        members.append({"member_id": m.member_id, "client_id": m.client_id, "host": m.host,
                        "instance_id": m.group_instance_id, "assignment": [list(tp) for tp in tps]})
    offs = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                             request_timeout=ADMIN_TIMEOUT_S)
    committed = _result(offs[group], where).topic_partitions or []
    committed = {(tp.topic, tp.partition): tp.offset for tp in committed if tp.offset >= 0}
    keys = sorted(set(committed) | set(owner))
    ends: dict = {}
    if keys:
        lo = admin.list_offsets({TopicPartition(t, p): OffsetSpec.latest() for t, p in keys},
                                request_timeout=ADMIN_TIMEOUT_S)
        for tp, fut in lo.items():
            try:
                ends[(tp.topic, tp.partition)] = fut.result().offset
            except Exception:
                ends[(tp.topic, tp.partition)] = None
    rows = []
    for tp in keys:
        c, end = committed.get(tp), ends.get(tp)
        rows.append({"topic": tp[0], "partition": tp[1], "committed": c, "end_offset": end,
                     "lag": None if c is None or end is None else max(0, end - c),
                     "member_id": owner.get(tp)})
    state = _state(d.state)
    if state == "Dead" and not rows:
        raise fail(f"unknown group {group!r} at {bootstrap}")
    return {"group": group, "source": bootstrap, "state": state, "protocol": d.partition_assignor or None,
            "members": members, "offsets": rows, "lag": sum(r["lag"] or 0 for r in rows)}


# --- commands ----------------------------------------------------------------------------------------


@groups.command("list")
@data_dir_option
@_bootstrap_option
@json_option
def list_(data_dir: str, bootstrap: str | None, as_json: bool) -> None:
    """Consumer groups: from the data dir's committed offsets, or from a server."""
    rows = _remote_list(bootstrap) if bootstrap else _local_list(data_dir)
    if as_json:
        emit_json(rows)
        return
    from rich.table import Table

    from ._common import console

    where = bootstrap or data_dir
    table = Table(title=f"groups at {where}" if rows else f"no groups at {where}")
    cols = ("group", "state") + (() if bootstrap else ("partitions", "lag"))
    for col in cols:
        table.add_column(col, justify="left" if col in ("group", "state") else "right")
    for r in rows:
        cells = [r["group"], r["state"]]
        if not bootstrap:
            cells += [str(r["partitions"]), f"{r['lag']:,}"]
        table.add_row(*cells)
    console().print(table)


@groups.command()
@click.argument("group")
@data_dir_option
@_bootstrap_option
@json_option
def describe(group: str, data_dir: str, bootstrap: str | None, as_json: bool) -> None:
    """GROUP's committed offset, end offset and lag per partition (and members, from a server)."""
    d = _remote_describe(bootstrap, group) if bootstrap else _local_describe(data_dir, group)
    if as_json:
        emit_json(d)
        return
    from rich.table import Table

    from ._common import console

    out = console()
    head = f"group {group}"
    if d["state"] is not None:
        head += f"  state {d['state']}"
        if d["protocol"]:
            head += f"  assignor {d['protocol']}"
        head += f"  members {len(d['members'])}"
    head += f"  total lag {d['lag']:,}"
    out.print(head)
    if d["members"]:
        mt = Table(title="members")
        for col in ("member id", "client id", "host", "instance id", "partitions"):
            mt.add_column(col)
        for m in d["members"]:
            parts = ", ".join(f"{t}-{p}" for t, p in m["assignment"])
            mt.add_row(m["member_id"], m["client_id"], m["host"], m["instance_id"] or "", parts)
        out.print(mt)
    ot = Table(title="offsets")
    cols = ["topic", "partition", "committed", "end offset", "lag"] + (["member id"] if bootstrap else [])
    for col in cols:
        ot.add_column(col, justify="left" if col in ("topic", "member id") else "right")
    for r in d["offsets"]:
        cells = [r["topic"], str(r["partition"]),
                 "-" if r["committed"] is None else f"{r['committed']:,}",
                 "-" if r["end_offset"] is None else f"{r['end_offset']:,}",
                 "-" if r["lag"] is None else f"{r['lag']:,}"]
        if bootstrap:
            cells.append(r.get("member_id") or "")
        ot.add_row(*cells)
    out.print(ot)

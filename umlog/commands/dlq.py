"""``umlog dlq list|show|redrive``: dead letters (umlog/delivery/dlq.py).

``list`` and ``show`` open the data dir read-only (they work beside a running
server). ``redrive`` has two paths:

* ``--data-dir`` (default): opens the data dir for writing (so not beside a
  running server, which holds its lock) and redrives through one
  ``ForwardStream`` per dead-letter partition: **exactly once**, even if the
  command is killed half way and run again.
* ``--bootstrap HOST:PORT``: beside a running server (umlog or Kafka), through
  the Kafka protocol: a consumer of group ``umlog.redrive.<dlq>`` reads the
  dead letters from its committed offsets, an idempotent producer writes them,
  and the offsets are committed after each batch is acknowledged. **At least
  once**: a kill between a batch's acknowledgement and its commit redrives
  that batch again on the next run. (The data-dir path's trick, the target's
  producer state, is not visible through the Kafka protocol, and umlog's Kafka
  door has no transactions.)
"""

from __future__ import annotations

import sys

import click

from ._common import CliGroup, data_dir_option, emit_json, fail, json_option, open_data_dir

__all__ = ["dlq"]

PREVIEW = 60
KAFKA_TIMEOUT_S = 15.0


@click.group(cls=CliGroup)
def dlq() -> None:
    """Dead letters: list dead-letter topics, show their records, redrive them to their topics."""


def _preview(b: bytes | None, width: int = PREVIEW) -> str | None:
    if b is None:
        return None
    s = bytes(b).decode("utf-8", "backslashreplace")
    return s if len(s) <= width else s[:width - 1] + "…"


@dlq.command("list")
@data_dir_option
@json_option
def list_(data_dir: str, as_json: bool) -> None:
    """Topics holding dead letters: named *.dlq, *-dlt or *.DLT, or whose first or last record
    (per partition) has a kafka_dlt-original-topic header. Two one-record reads per partition."""
    from umlog.delivery.dlq import dead_letter_topics

    with open_data_dir(data_dir, readonly=True) as b:
        rows = dead_letter_topics(b)
    if as_json:
        emit_json(rows)
        return
    from rich.table import Table

    from ._common import console

    table = Table(title=f"dead-letter topics at {data_dir}" if rows else f"no dead-letter topics at {data_dir}")
    for col in ("topic", "partitions", "records", "not redriven", "original topics", "found by"):
        table.add_column(col, justify="right" if col in ("partitions", "records", "not redriven") else "left")
    for r in rows:
        table.add_row(r["topic"], str(r["partitions"]), f"{r['records']:,}", f"{r['not_redriven']:,}",
                      ", ".join(r["original_topics"]) or "-", r["found_by"])
    console().print(table)


@dlq.command()
@click.argument("dlq_topic")
@click.option("--max", "max_records", type=click.IntRange(1), default=100, show_default=True,
              help="Most dead letters shown.")
@data_dir_option
@json_option
def show(dlq_topic: str, max_records: int, data_dir: str, as_json: bool) -> None:
    """Each dead letter of DLQ_TOPIC: original topic/partition/offset/timestamp, reason, delivery
    count, key, value preview, and whether it was redriven."""
    from umlog.delivery.dlq import dead_letters

    with open_data_dir(data_dir, readonly=True) as b:
        rows = list(dead_letters(b, dlq_topic, max_records))
    if as_json:
        for r in rows:
            r["key"] = _preview(r["key"], 1 << 30)
            r["value"] = _preview(r["value"], 1 << 30)
            r["headers"] = {k: _preview(v, 1 << 30) for k, v in r["headers"]}
        emit_json(rows)
        return
    from rich.table import Table

    from ._common import console

    t = Table(title=f"{len(rows)} dead letters of {dlq_topic}")
    for col in ("dlq", "original", "original timestamp", "reason", "count", "key", "value", "redriven"):
        t.add_column(col)
    for r in rows:
        orig = (f"{r['original_topic']}-{r['original_partition']}@{r['original_offset']}"
                if r["original_topic"] is not None else "-")
        t.add_row(f"{r['partition']}@{r['offset']}", orig, _ms(r["original_timestamp"]), r["reason"] or "-",
                  "-" if r["delivery_count"] is None else str(r["delivery_count"]),
                  _preview(r["key"], 24) or "-", _preview(r["value"]) or "-", "yes" if r["redriven"] else "no")
    console().print(t)


def _ms(ts: int | None) -> str:
    if ts is None:
        return "-"
    import datetime

    return datetime.datetime.fromtimestamp(ts / 1000, datetime.UTC).isoformat(timespec="milliseconds")


@dlq.command()
@click.argument("dlq_topic")
@click.option("--to", "to", metavar="TOPIC", default=None,
              help="Put every dead letter on TOPIC instead of its original topic (give the same TOPIC when "
                   "running again after an interruption).")
@click.option("--max", "max_records", type=click.IntRange(1), default=None,
              help="Most dead letters redriven in this run [default: all there now].")
@click.option("--bootstrap", metavar="HOST:PORT", default=None,
              help="Go through this Kafka-protocol server (beside a running umlog serve): at least once, "
                   "not exactly once.")
@data_dir_option
@json_option
def redrive(dlq_topic: str, to: str | None, max_records: int | None, bootstrap: str | None, data_dir: str,
            as_json: bool) -> None:
    """Put the dead letters of DLQ_TOPIC back on their original topics (or --to): key and value,
    headers without the kafka_dlt-* and umlog delivery headers, stamped now. On a data dir exactly
    once, even if killed half way and run again; with --bootstrap at least once. Progress is
    checkpointed in group umlog.redrive.DLQ_TOPIC, so a second run goes on where the first stopped."""
    if to is not None and to == dlq_topic:
        raise fail(f"--to {to} is the dead-letter topic itself")

    def progress(d: dict) -> None:
        if not as_json:
            extra = f", {d['already_there']} already there" if d["already_there"] else ""
            click.echo(f"{dlq_topic}-{d['partition']} offsets {d['first_offset']}..{d['last_offset']}: "
                       f"{d['appended']} redriven{extra}")
            sys.stdout.flush()

    if bootstrap is not None:
        total = _remote_redrive(bootstrap, dlq_topic, to, max_records, progress)
    else:
        from umlog.delivery.dlq import redrive as run

        with open_data_dir(data_dir, readonly=False) as b:
            b.topic(dlq_topic)  # UnknownTopicError before anything is made
            total = run(b, dlq_topic, to=to, max_records=max_records, progress=progress)
    if as_json:
        emit_json({"dlq": dlq_topic, **total})
        return
    targets = ", ".join(f"{t} ({n:,})" for t, n in sorted(total["targets"].items())) or "nowhere"
    skipped = f"; {total['skipped']:,} skipped (no original topic: give --to)" if total["skipped"] else ""
    click.echo(f"redrove {total['appended']:,} of {total['read']:,} dead letters read from {dlq_topic} to "
               f"{targets}{skipped}" + (f"; {total['already_there']:,} were already there"
                                       if total["already_there"] else ""))


# --- through the Kafka protocol ----------------------------------------------------------------


def _remote_redrive(bootstrap: str, dlq_topic: str, to: str | None, max_records: int | None, progress) -> dict:
    try:
        import confluent_kafka as ck
        from confluent_kafka.admin import AdminClient, NewTopic
    except ImportError:
        raise fail("--bootstrap needs confluent-kafka (pip install confluent-kafka)") from None
    from umlog._native.core import partition_for_key
    from umlog.delivery.dlq import origin, redrive_group, redrive_headers

    group = redrive_group(dlq_topic)
    common = {"bootstrap.servers": bootstrap, "socket.timeout.ms": 10_000}
    admin = AdminClient(common)
    try:
        md = admin.list_topics(timeout=KAFKA_TIMEOUT_S)
    except ck.KafkaException as e:
        raise fail(f"cannot reach {bootstrap}: {e}") from None
    if dlq_topic not in md.topics or md.topics[dlq_topic].error is not None:
        raise fail(f"unknown topic {dlq_topic!r} at {bootstrap}")
    dlq_parts = sorted(md.topics[dlq_topic].partitions)
    sizes: dict[str, int] = {}

    def partitions_of(topic: str) -> int:
        if topic not in sizes:
            m = admin.list_topics(timeout=KAFKA_TIMEOUT_S).topics.get(topic)
            if m is None or m.error is not None:
                fut = admin.create_topics([NewTopic(topic, num_partitions=len(dlq_parts), replication_factor=1)])
                try:
                    fut[topic].result(KAFKA_TIMEOUT_S)
                except ck.KafkaException as e:
                    if e.args[0].code() != ck.KafkaError.TOPIC_ALREADY_EXISTS:
                        raise fail(f"cannot create {topic!r}: {e}") from None
                m = admin.list_topics(topic, timeout=KAFKA_TIMEOUT_S).topics[topic]
            sizes[topic] = len(m.partitions)
        return sizes[topic]

    consumer = ck.Consumer({**common, "group.id": group, "enable.auto.commit": False,
                            "auto.offset.reset": "earliest", "enable.partition.eof": True})
    producer = ck.Producer({**common, "enable.idempotence": True, "acks": "all", "linger.ms": 5})
    total = {"read": 0, "appended": 0, "already_there": 0, "skipped": 0, "targets": {}}
    errors: list = []
    left = max_records
    try:
        tps = [ck.TopicPartition(dlq_topic, i) for i in dlq_parts]
        committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=KAFKA_TIMEOUT_S)}
        for i in dlq_parts:
            if left is not None and left <= 0:
                break
            low, high = consumer.get_watermark_offsets(ck.TopicPartition(dlq_topic, i), timeout=KAFKA_TIMEOUT_S)
            pos = committed.get(i, -1)
            pos = low if pos is None or pos < 0 else max(pos, low)
            if pos >= high:
                continue
            consumer.assign([ck.TopicPartition(dlq_topic, i, pos)])
            while pos < high and (left is None or left > 0):
                want = 500 if left is None else min(500, left)
                got = consumer.consume(want, timeout=1.0)
                msgs = [m for m in got if m.error() is None and m.offset() < high][:want]
                if not msgs:
                    if any(m.error() is not None and m.error().code() == ck.KafkaError._PARTITION_EOF for m in got):
                        break  # the end came first (a gap left by compaction)
                    continue
                produced = 0
                for m in msgs:
                    headers = [(k, v) for k, v in (m.headers() or [])]
                    o = origin(headers)
                    target = to or o["original_topic"]
                    if not target or target == dlq_topic:
                        total["skipped"] += 1
                        continue
                    tn = partitions_of(target)
                    op = o["original_partition"]
                    if op is not None and 0 <= op < tn:
                        tp = op
                    elif m.key() is not None:
                        tp = partition_for_key(m.key(), tn)
                    else:
                        tp = (op if op is not None and op >= 0 else i) % tn
                    producer.produce(target, value=m.value(), key=m.key(), headers=redrive_headers(headers),
                                     partition=tp, on_delivery=lambda err, _m: err and errors.append(err))
                    total["targets"][target] = total["targets"].get(target, 0) + 1
                    produced += 1
                if producer.flush(KAFKA_TIMEOUT_S * 4) or errors:
                    raise fail(f"producing to {bootstrap} failed: {errors[0] if errors else 'timed out'}; "
                               f"run again to go on (records of this batch may be redriven twice)")
                pos = msgs[-1].offset() + 1
                consumer.commit(offsets=[ck.TopicPartition(dlq_topic, i, pos)], asynchronous=False)
                total["read"] += len(msgs)
                total["appended"] += produced
                if left is not None:
                    left -= len(msgs)
                progress({"partition": i, "first_offset": msgs[0].offset(), "last_offset": msgs[-1].offset(),
                          "read": len(msgs), "appended": produced, "already_there": 0})
    except ck.KafkaException as e:
        raise fail(f"redrive through {bootstrap} failed: {e}") from None
    finally:
        consumer.close()
    return total

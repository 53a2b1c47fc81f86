"""``umlog produce TOPIC``: one record per input line."""

from __future__ import annotations

import sys

import click

from ._common import Command, data_dir_option, emit_json, fail, json_option, open_data_dir

__all__ = ["produce"]

CHUNK = 10_000  # lines parsed, checked, then appended with one append_many


def _lines(stream):
    """Lines of a binary stream without their line terminator (\\n or \\r\\n)."""
    for raw in stream:
        if raw.endswith(b"\n"):
            raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
        yield raw


@click.command(cls=Command)
@click.argument("topic")
@data_dir_option
@click.option("-f", "--file", "path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Read lines from this file instead of stdin.")
@click.option("-K", "--key-separator", "sep", default=None, metavar="SEP",
              help="Each line is KEY<SEP>VALUE (split at the first SEP); keys pick the partition.")
@click.option("-p", "--partition", type=click.IntRange(0), default=None,
              help="Append to this partition (default: by key, else spread).")
@click.option("--skip-empty", is_flag=True, help="Ignore empty lines (default: an empty line is an empty value).")
@json_option
def produce(topic: str, data_dir: str, path: str | None, sep: str | None, partition: int | None,
            skip_empty: bool, as_json: bool) -> None:
    """Append the lines of stdin (or --file) to TOPIC, one record each.

    Lines are appended in chunks of 10,000. With --key-separator, a line
    without it stops the command there (exit 1): the lines before it are
    produced, it and the rest are not, and the error says how many went.
    Everything produced is fsync'd before the command returns.
    """
    sep_b = sep.encode() if sep is not None else None
    if sep_b == b"":
        raise fail("the key separator is empty")
    count = 0
    per_partition: dict[int, int] = {}
    stream = open(path, "rb") if path else sys.stdin.buffer
    try:
        with open_data_dir(data_dir, readonly=False) as b:
            t = b.topic(topic)
            if partition is not None and partition >= t.num_partitions:
                raise fail(f"topic {topic!r} has no partition {partition} (it has {t.num_partitions})")
            lineno = 0
            values: list[bytes] = []
            keys: list[bytes] | None = [] if sep_b is not None else None

            chunks = 0

            def flush_chunk():
                nonlocal count, chunks
                if not values:
                    return
                if partition is not None or keys is None:
                    # An explicit partition, or keyless lines: a chunk per
                    # partition in turn.
                    p = partition if partition is not None else chunks % t.num_partitions
                    offs = [(p, o) for o in t.append_many(values, keys, partition=p)]
                else:
                    offs = t.append_many(values, keys)  # by key: [(partition, offset)]
                chunks += 1
                for p_, _ in offs:
                    per_partition[p_] = per_partition.get(p_, 0) + 1
                count += len(values)
                values.clear()
                if keys is not None:
                    keys.clear()

            for line in _lines(stream):
                lineno += 1
                if skip_empty and not line:
                    continue
                if sep_b is not None:
                    key, found, value = line.partition(sep_b)
                    if not found:
                        flush_chunk()
                        raise fail(f"line {lineno} has no key separator {sep!r}; "
                                   f"{count} record(s) were produced before it")
                    keys.append(key)
                    values.append(value)
                else:
                    values.append(line)
                if len(values) >= CHUNK:
                    flush_chunk()
            flush_chunk()
            b.flush()
    finally:
        if path:
            stream.close()
    summary = {"topic": topic, "records": count, "partitions": {str(k): v for k, v in sorted(per_partition.items())}}
    if as_json:
        emit_json(summary)
    else:
        where = ", ".join(f"{k}: {v}" for k, v in sorted(per_partition.items())) or "-"
        click.echo(f"produced {count} record(s) to {topic} (per partition {where})", err=True)

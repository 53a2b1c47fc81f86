"""``umlog consume TOPIC``: print records, optionally as a consumer group."""

from __future__ import annotations

import base64
import json
import os
import sys

import click

from ._common import Command, data_dir_option, fail, open_data_dir

__all__ = ["consume"]


def _text(b: bytes | None) -> str:
    return "" if b is None else b.decode("utf-8", "replace")


def _json_bytes(out: dict, name: str, b: bytes | None) -> None:
    """UTF-8 as a string; anything else base64 under ``<name>_base64``."""
    if b is None:
        out[name] = None
        return
    try:
        out[name] = b.decode("utf-8")
    except UnicodeDecodeError:
        out[name] = None
        out[name + "_base64"] = base64.b64encode(b).decode()


class _Printer:
    def __init__(self, fmt: str, print_key: bool, key_separator: str) -> None:
        self.fmt = fmt
        self.print_key = print_key
        self.sep = key_separator
        self.out = sys.stdout.buffer

    def __call__(self, r) -> None:
        if self.fmt == "json":
            obj = {"topic": r.topic, "partition": r.partition, "offset": r.offset, "timestamp": r.timestamp}
            _json_bytes(obj, "key", r.key)
            _json_bytes(obj, "value", r.value)
            hs = []
            for k, v in r.headers:
                h = {"key": k}
                _json_bytes(h, "value", v)
                hs.append(h)
            obj["headers"] = hs
            line = json.dumps(obj).encode() + b"\n"
        elif self.fmt == "raw":
            line = (r.value or b"") + b"\n"
            if self.print_key:
                line = (r.key or b"") + self.sep.encode() + line
        else:
            text = _text(r.value)
            if self.print_key:
                text = _text(r.key) + self.sep + text
            line = (text + "\n").encode()
        self.out.write(line)


@click.command(cls=Command)
@click.argument("topic")
@data_dir_option
@click.option("-g", "--group", default=None, help="Consume as this group: start from its committed offsets, "
              "commit as records are printed (needs the writer lock).")
@click.option("-b", "--from-beginning", is_flag=True,
              help="Start partitions without a committed offset at their start (default: their end).")
@click.option("-f", "--follow", is_flag=True, help="Wait for new records instead of stopping at the end.")
@click.option("-n", "--max", "max_records", type=click.IntRange(0), default=None, help="Stop after N records.")
@click.option("--timeout", type=click.FloatRange(0), default=None,
              help="With --follow: stop after this many seconds without a record.")
@click.option("-p", "--partition", type=click.IntRange(0), default=None,
              help="Read only this partition (no group).")
@click.option("-o", "--offset", type=click.IntRange(0), default=None,
              help="With --partition: start at this offset.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "raw"]), default="text", show_default=True,
              help="text: the value as UTF-8; json: one object per line; raw: the value's bytes.")
@click.option("--print-key", is_flag=True, help="text/raw: print KEY<SEP>VALUE.")
@click.option("--key-separator", default="\t", show_default="TAB", help="Between key and value with --print-key.")
def consume(topic: str, data_dir: str, group: str | None, from_beginning: bool, follow: bool,
            max_records: int | None, timeout: float | None, partition: int | None, offset: int | None,
            fmt: str, print_key: bool, key_separator: str) -> None:
    """Print the records of TOPIC, one per line.

    Without --group the data dir is opened read-only (it works beside a
    running server) and nothing is committed. With --group the printed
    records are committed as the group's offsets (at least once: every 1,000
    records and at the end, also after Ctrl-C).
    """
    if offset is not None and partition is None:
        raise fail("--offset needs --partition")
    if partition is not None and group is not None:
        raise fail("--partition reads one partition directly; it cannot be combined with --group")
    printer = _Printer(fmt, print_key, key_separator)
    if max_records == 0:
        return
    try:
        with open_data_dir(data_dir, readonly=group is None) as b:
            t = b.topic(topic)
            if partition is not None:
                if partition >= t.num_partitions:
                    raise fail(f"topic {topic!r} has no partition {partition} (it has {t.num_partitions})")
                p = t.partition(partition)
                p.refresh()
                start = offset if offset is not None else (p.start_offset if from_beginning else p.end_offset)
                if not (from_beginning or follow or offset is not None):
                    return
                n = 0
                for r in p.read(start, max_records, follow=follow, timeout=timeout):
                    printer(r)
                    n += 1
                sys.stdout.flush()
                return
            consumer = b.consume(topic, group, from_beginning=from_beginning, follow=follow, timeout=timeout)
            n = 0
            try:
                for r in consumer:
                    printer(r)
                    n += 1
                    if max_records is not None and n >= max_records:
                        sys.stdout.flush()
                        if group is not None:
                            consumer.commit()  # the record in hand was printed: it counts
                        break
                sys.stdout.flush()
            except KeyboardInterrupt:
                sys.stdout.flush()
                if group is not None:
                    consumer.commit()
                raise
            finally:
                consumer.close()
    except KeyboardInterrupt:
        sys.exit(130)  # Ctrl-C ends a --follow: not an error worth a message
    except BrokenPipeError:
        # `umlog consume t | head`: the reader went away; not an error. Point
        # stdout at /dev/null so the interpreter's final flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)

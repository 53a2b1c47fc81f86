"""``umlog dump FILE``: a segment batch by batch, with CRC checks (like Kafka's
DumpLogSegments); also ``.index`` and ``.timeindex`` files.

Works on any RecordBatch v2 segment, umlog's or Kafka's (the format is the
same). Only the file is read: no data dir, no lock.
"""

from __future__ import annotations

import os
import re
import struct
import sys

import click

from ._common import Command, emit_json, fail, json_option

__all__ = ["dump"]

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


def _text(b: bytes | None) -> str:
    return "null" if b is None else b.decode("utf-8", "replace")


def _base_from_name(path: str) -> int:
    m = re.match(r"^(\d{20})\.", os.path.basename(path))
    return int(m.group(1)) if m else 0


def _dump_index(path: str, as_json: bool) -> None:
    base = _base_from_name(path)
    with open(path, "rb") as f:
        data = f.read()
    timeindex = path.endswith(".timeindex")
    size = 12 if timeindex else 8
    entries = []
    for i in range(len(data) // size):
        raw = data[i * size:(i + 1) * size]
        if raw == bytes(size):
            break  # the preallocated tail of an active index
        if timeindex:
            ts, rel = struct.unpack(">qI", raw)
            entries.append({"timestamp": ts, "offset": base + rel})
        else:
            rel, pos = struct.unpack(">II", raw)
            entries.append({"offset": base + rel, "position": pos})
    if as_json:
        emit_json({"file": path, "kind": "timeindex" if timeindex else "index", "entries": entries})
        return
    click.echo(f"Dumping {path}")
    for e in entries:
        click.echo(" ".join(f"{k}: {v}" for k, v in e.items()))
    click.echo(f"{len(entries)} entries")


@click.command(cls=Command)
@click.argument("path", metavar="SEGMENT_FILE", type=click.Path(exists=True, dir_okay=False))
@click.option("-r", "--records", is_flag=True, help="Print every record too.")
@json_option
def dump(path: str, records: bool, as_json: bool) -> None:
    """Print a .log segment batch by batch, checking each batch's CRC32C.

    Exit 1 (with one line on stderr) when a batch is corrupt or cut off;
    the batches before it are printed. .index and .timeindex files print
    their entries.
    """
    if path.endswith((".index", ".timeindex")):
        return _dump_index(path, as_json)
    from umlog._native.core import BATCH_HEADER_SIZE, batch_info, crc32c, decode_records
    from umlog.errors import UmlogError

    out = sys.stdout
    batches = []
    problems: list[str] = []
    n_records = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if not as_json:
            out.write(f"Dumping {path}\nLog starting offset: {_base_from_name(path)}\n")
        pos = 0
        while pos < size:
            if size - pos < BATCH_HEADER_SIZE:
                problems.append(f"{size - pos} trailing bytes at position {pos}: a cut-off batch header")
                break
            length = int.from_bytes(os.pread(fd, 4, pos + 8), "big", signed=True)
            if length < 49:
                problems.append(f"bad batchLength {length} at position {pos}")
                break
            total = 12 + length
            if pos + total > size:
                problems.append(f"batch at position {pos} is cut off: {total} bytes, {size - pos} in the file")
                break
            data = os.pread(fd, total, pos)
            info = batch_info(data)
            magic = data[16]
            crc_ok = crc32c(memoryview(data)[21:]) == info.crc
            b = {
                "position": pos,
                "baseOffset": info.base_offset,
                "lastOffset": info.last_offset,
                "count": info.record_count,
                "baseSequence": info.base_sequence,
                "producerId": info.producer_id,
                "producerEpoch": info.producer_epoch,
                "partitionLeaderEpoch": info.partition_leader_epoch,
                "isTransactional": info.is_transactional,
                "isControl": info.is_control,
                "timestampType": "LogAppendTime" if info.timestamp_type else "CreateTime",
                "baseTimestamp": info.first_timestamp,
                "maxTimestamp": info.max_timestamp,
                "size": total,
                "magic": magic,
                "compresscodec": CODECS[info.codec] if info.codec < len(CODECS) else f"codec {info.codec}",
                "crc": info.crc,
                "isvalid": crc_ok and magic == 2,
            }
            if magic != 2:
                problems.append(f"bad magic {magic} in batch at position {pos}")
            elif not crc_ok:
                problems.append(f"bad CRC in batch at position {pos}")
            recs = []
            if records and magic == 2:
                try:
                    decoded, _ = decode_records(data, 0, total, 0, -1)
                except UmlogError as e:
                    problems.append(str(e))
                    decoded = []
                for r in decoded:
                    recs.append({
                        "offset": r.offset, "timestamp": r.timestamp,
                        "keySize": -1 if r.key is None else len(r.key),
                        "valueSize": -1 if r.value is None else len(r.value),
                        "headerKeys": [k for k, _ in r.headers],
                        "key": r.key, "payload": r.value,
                    })
            n_records += info.record_count
            if as_json:
                if records:
                    b["records"] = [dict(x, key=_text(x["key"]) if x["key"] is not None else None,
                                         payload=_text(x["payload"]) if x["payload"] is not None else None)
                                    for x in recs]
                batches.append(b)
            else:
                out.write(" ".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in b.items()))
                out.write("\n")
                ts_name = b["timestampType"]
                for x in recs:
                    out.write(f"| offset: {x['offset']} {ts_name}: {x['timestamp']} keySize: {x['keySize']} "
                              f"valueSize: {x['valueSize']} headerKeys: [{', '.join(x['headerKeys'])}] "
                              f"key: {_text(x['key'])} payload: {_text(x['payload'])}\n")
            pos += total
    finally:
        os.close(fd)
    summary = {"batches": len(batches) if as_json else None, "records": n_records, "bytes": size,
               "valid": not problems, "problems": problems}
    if as_json:
        emit_json({"file": path, "batches": batches, **{k: v for k, v in summary.items() if k != "batches"}})
    else:
        out.write(f"{n_records} record(s), {size} bytes; " + ("all batches valid\n" if not problems else
                                                               f"{len(problems)} problem(s)\n"))
    out.flush()
    if problems:
        raise fail(f"{path}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))

"""A partition's records as Arrow tables and Parquet files (no per-record Python).

``Partition.read_table`` reads whole batches from the segments and decodes
them natively straight into Arrow buffers (``decode_columns``,
umlog/_native/columns.pyx); each chunk becomes one ``pyarrow.RecordBatch``
wrapping those buffers, and the table is the list of them (no concatenation
copy). ``export_parquet`` writes a topic, one file per partition, a record
batch at a time, so a topic larger than memory exports fine.

Columns (``SCHEMA``)::

    offset     int64
    timestamp  timestamp[ms]
    key        binary (null: no key)
    value      binary (null: a tombstone)
    headers    list<struct<key: string, value: binary>>  (empty list: none)
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pyarrow as pa

from .._native.core import batch_info, decode_columns
from ..errors import OffsetOutOfRangeError

__all__ = ["SCHEMA", "read_table", "iter_record_batches", "export_parquet", "TABLE_CHUNK"]

HEADER_TYPE = pa.struct([pa.field("key", pa.string(), nullable=False), pa.field("value", pa.binary())])
SCHEMA = pa.schema(
    [
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("timestamp", pa.timestamp("ms"), nullable=False),
        pa.field("key", pa.binary()),
        pa.field("value", pa.binary()),
        pa.field("headers", pa.list_(HEADER_TYPE), nullable=False),
    ]
)

# Bytes of whole batches decoded per native call (and per RecordBatch of the
# result). 8 MiB keeps the decoded chunk in L2/L3-friendly pieces; 1M records
# of 100 bytes make ~14 batches. Measured with bench/embedded.py: 4-16 MiB
# within noise of each other, 1 MiB ~15% slower (more calls and batches).
TABLE_CHUNK = 8 << 20


def _record_batch(n: int, cols: tuple) -> pa.RecordBatch:
    (offsets, timestamps, kvalid, koff, kdata, knulls, vvalid, voff, vdata, vnulls,
     hoff, nheaders, hk_off, hk_data, hv_valid, hv_off, hv_data, hv_nulls, bad_utf8) = cols
    hkeys = pa.Array.from_buffers(pa.string(), nheaders, [None, hk_off, hk_data], null_count=0)
    if bad_utf8:
        # Only a foreign producer writes header keys that are not UTF-8:
        # replace them as decode_records does.
        raw = pa.Array.from_buffers(pa.binary(), nheaders, [None, hk_off, hk_data], null_count=0)
        hkeys = pa.array([k.decode("utf-8", "replace") for k in raw.to_pylist()], pa.string())
    hvals = pa.Array.from_buffers(pa.binary(), nheaders, [hv_valid, hv_off, hv_data], null_count=hv_nulls)
    structs = pa.StructArray.from_arrays([hkeys, hvals], fields=list(HEADER_TYPE))
    arrays = [
        pa.Array.from_buffers(pa.int64(), n, [None, offsets], null_count=0),
        pa.Array.from_buffers(pa.timestamp("ms"), n, [None, timestamps], null_count=0),
        pa.Array.from_buffers(pa.binary(), n, [kvalid, koff, kdata], null_count=knulls),
        pa.Array.from_buffers(pa.binary(), n, [vvalid, voff, vdata], null_count=vnulls),
        pa.Array.from_buffers(pa.list_(HEADER_TYPE), n, [None, hoff], null_count=0, children=[structs]),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


def iter_record_batches(p, offset: int | None = None, max_records: int | None = None,
                        chunk_bytes: int = TABLE_CHUNK) -> Iterator[pa.RecordBatch]:
    """The records of partition ``p`` from ``offset`` (default: its start), as
    Arrow record batches of about ``chunk_bytes`` of log each.

    :raises OffsetOutOfRangeError: offset below the start or past the end.
    """
    p.seal()
    if not p.writable:
        p.refresh()
    if offset is None:
        offset = p.start_offset
    p._check_range(offset)
    remaining = -1 if max_records is None else max_records
    if remaining == 0:
        return
    seg = p._segment_at(offset)
    found = seg.find_position(offset)
    pos = found[0] if found else seg.size
    while remaining != 0:
        if pos >= seg.size:
            nxt, offset = p._next_segment(seg, offset)
            if nxt is None:
                return
            seg = nxt
            found = seg.find_position(offset)
            pos = found[0] if found else seg.size
            continue
        chunk = seg.read(pos, chunk_bytes)
        used, n, cols = decode_columns(chunk, 0, len(chunk), offset, remaining)
        if used == 0 and n == 0:
            info = batch_info(chunk, 0) if len(chunk) >= 61 else batch_info(seg.read(pos, 61), 0)
            if info.size <= len(chunk):
                return  # nothing decodable (cannot happen for a valid log)
            chunk = seg.read(pos, info.size)
            used, n, cols = decode_columns(chunk, 0, len(chunk), offset, remaining)
            if used == 0 and n == 0:
                return  # the writer is mid-way through this batch (tailers)
        pos += used
        if n:
            batch = _record_batch(n, cols)
            offset = batch.column(0)[n - 1].as_py() + 1
            if remaining > 0:
                remaining -= n
            yield batch


def read_table(p, offset: int | None = None, max_records: int | None = None) -> pa.Table:
    """All records from ``offset`` as one ``pyarrow.Table`` (``SCHEMA``)."""
    return pa.Table.from_batches(list(iter_record_batches(p, offset, max_records)), schema=SCHEMA)


def export_parquet(broker, topic: str, directory: str, *, compression: str = "zstd",
                   rows_per_group: int = 1 << 20, progress=None) -> list[tuple[str, int]]:
    """Write topic ``topic`` as ``DIR/<topic>-<partition>.parquet``, one file per partition.

    Streams record batches into ``pyarrow.parquet.ParquetWriter``, so memory
    stays at about one row group. Files are written as ``*.parquet.tmp`` and
    renamed when complete.

    :param progress: called with the number of records written after each batch.
    :return: [(path, records)] per partition.
    """
    import pyarrow.parquet as pq

    t = broker.topic(topic)
    os.makedirs(directory, exist_ok=True)
    out = []
    for p in t.partitions:
        path = os.path.join(directory, f"{topic}-{p.index}.parquet")
        tmp = path + ".tmp"
        rows = 0
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        with pq.ParquetWriter(tmp, SCHEMA, compression=compression) as w:
            try:
                batches = iter_record_batches(p, p.start_offset)
                for rb in batches:
                    pending.append(rb)
                    pending_rows += rb.num_rows
                    if pending_rows >= rows_per_group:
                        w.write_table(pa.Table.from_batches(pending, schema=SCHEMA), row_group_size=rows_per_group)
                        pending, pending_rows = [], 0
                    rows += rb.num_rows
                    if progress is not None:
                        progress(rb.num_rows)
                if pending:
                    w.write_table(pa.Table.from_batches(pending, schema=SCHEMA), row_group_size=rows_per_group)
            except OffsetOutOfRangeError:
                pass  # retention moved the start meanwhile: what was read stays
        os.replace(tmp, path)
        out.append((path, rows))
    return out

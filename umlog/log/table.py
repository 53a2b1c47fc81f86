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

import mmap
import os
from collections.abc import Iterator

import pyarrow as pa

from .._native.core import BATCH_HEADER_SIZE, batch_info, decode_columns
from ..errors import CorruptBatchError, OffsetOutOfRangeError

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
# result). Measured, best of 5 after warm-up, 1M records of 100 bytes
# (``python bench/micro.py --only read_table``, load ~2): 1 MiB 33-40, 4 MiB 47,
# 8 MiB 48-50, 16 MiB 49, 32 MiB 47-49 M records/s; on a busier machine 20, 26,
# 24, 23, 23 mapped.
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


class _SegmentBytes:
    """A segment's bytes below ``end``: memory-mapped (no copy, no fresh pages
    for a pread buffer) or, for a read-only tailer's active segment, pread.

    Mapping is safe where the bytes below ``end`` are never truncated: every
    segment of the writer's process (its active segment is cut only past
    ``size``, when a write fails) and closed segments (immutable; compaction
    and retention rename or unlink, which leaves a mapping valid). A tailer's
    active segment may be cut by a restarting writer's recovery: a mapped page
    past the new end would be SIGBUS, so it is read with pread.
    Measured: pread copies at ~2.6 GB/s into a buffer that is often fresh
    (page faults); a mapping of page-cache pages costs next to nothing
    (``python bench/micro.py --only read_table``: the mmap rows against the
    pread rows, 8 MiB chunks of 100-byte records: 24 vs 19 M records/s).
    """

    def __init__(self, seg, mapped: bool) -> None:
        self.seg = seg
        self.end = seg.size  # before mapping: the file is at least this long
        self.map = None
        if mapped and self.end and seg.fd >= 0:  # a remote segment (tiered storage) has no fd: read
            self.map = mmap.mmap(seg.fd, self.end, access=mmap.ACCESS_READ)

    def decode(self, pos: int, chunk_bytes: int, offset: int, remaining: int):
        """decode_columns over whole batches from ``pos``: (next_pos, n, cols)."""
        end = min(self.end, pos + chunk_bytes)
        if self.map is not None:
            buf, base = self.map, 0
        else:
            buf, base = self.seg.read(pos, end - pos), pos
        try:
            used, n, cols = decode_columns(buf, pos - base, end - base, offset, remaining, True)
        except CorruptBatchError as e:
            raise self.seg.corrupt(e, base) from None
        used += base
        if used == pos and n == 0:
            # One batch larger than a chunk, or a batch the writer has not finished.
            head = (buf[pos - base:pos - base + BATCH_HEADER_SIZE] if self.map is not None
                    else self.seg.read(pos, BATCH_HEADER_SIZE))
            if len(head) < BATCH_HEADER_SIZE:
                return pos, 0, None
            size = batch_info(head, 0).size
            if pos + size > self.end:
                return pos, 0, None
            if self.map is None:
                buf, base = self.seg.read(pos, size), pos
            try:
                used, n, cols = decode_columns(buf, pos - base, pos - base + size, offset, remaining, True)
            except CorruptBatchError as e:
                raise self.seg.corrupt(e, base) from None
            used += base
        return used, n, cols

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
            self.map = None


def iter_record_batches(p, offset: int | None = None, max_records: int | None = None,
                        chunk_bytes: int = TABLE_CHUNK) -> Iterator[pa.RecordBatch]:
    """The records of partition ``p`` from ``offset`` (default: its start), as
    Arrow record batches of about ``chunk_bytes`` of log each.

    :raises OffsetOutOfRangeError: offset below the start or past the end.
    """
    c = p.cursor(offset)
    remaining = -1 if max_records is None else max_records
    if remaining == 0:
        return
    data = None
    try:
        while remaining != 0:
            if data is None or data.seg is not c.seg:
                if data is not None:
                    data.close()
                data = _SegmentBytes(c.seg, p.writable or c.seg is not p.segments[-1])
            if c.pos >= data.end:
                moved = c.move_on()
                if moved is None:
                    return
                if moved is False:  # it grew: map what is there now
                    data.close()
                    data = None
                continue
            used, n, cols = data.decode(c.pos, chunk_bytes, c.offset, remaining)
            if used == c.pos and n == 0:
                return  # the writer is mid-way through this batch (tailers)
            c.pos = used
            if n:
                batch = _record_batch(n, cols)
                c.offset = batch.column(0)[n - 1].as_py() + 1
                if remaining > 0:
                    remaining -= n
                yield batch
    finally:
        if data is not None:
            data.close()


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

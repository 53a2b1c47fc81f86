"""read_table == read(), record for record; decode_columns; Parquet export."""

import datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import umlog
from umlog._native import core
from umlog.errors import OffsetOutOfRangeError
from umlog.log import table as table_mod
from umlog.log.table import SCHEMA

payload = st.one_of(st.none(), st.binary(max_size=40))
header = st.tuples(st.text(max_size=5), st.one_of(st.none(), st.binary(max_size=8)))
record = st.tuples(payload, payload, st.one_of(st.none(), st.lists(header, max_size=3)),
                   st.one_of(st.none(), st.integers(0, 2**42)))


def as_rows(records):
    return [
        {"offset": r.offset, "timestamp": r.timestamp, "key": r.key, "value": r.value,
         "headers": [{"key": k, "value": v} for k, v in r.headers]}
        for r in records
    ]


def table_rows(tab):
    assert tab.schema == SCHEMA
    tab.validate(full=True)
    rows = tab.to_pylist()
    epoch = datetime.datetime(1970, 1, 1)
    for row in rows:
        row["timestamp"] = (row["timestamp"] - epoch) // datetime.timedelta(milliseconds=1)
    return rows


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(record, min_size=1, max_size=12), min_size=1, max_size=8),
       st.sampled_from([0, 1, 2, 3, 4]), st.data())
def test_read_table_equals_read(tmp_path_factory, calls, codec, data):
    path = tmp_path_factory.mktemp("arrow")
    compression = ["none", "gzip", "snappy", "lz4", "zstd"][codec]
    with umlog.open(path, cleaner_interval_ms=None) as b:
        t = b.create_topic("t", config={"compression.type": compression, "segment.bytes": 600})
        p = t.partition(0)
        for recs in calls:
            if data.draw(st.booleans()):
                values, keys, headers, ts = zip(*recs)
                p.append_many(list(values), list(keys), list(headers), list(ts))
            else:
                for v, k, h, ts in recs:
                    t.append(v, key=k, headers=h, timestamp=ts, partition=0)
        want = as_rows(p.read())
        assert table_rows(p.read_table()) == want
        start = data.draw(st.integers(0, p.end_offset))
        n = data.draw(st.one_of(st.none(), st.integers(0, 30)))
        want = as_rows(p.read(start, n))
        assert table_rows(p.read_table(start, n)) == want


def test_decode_columns_stops_like_decode_records():
    b1 = core.encode_batch([b"a", b"b", b"c"], [b"1", None, b"3"], base_offset=10)
    b2 = core.encode_batch([None, b"e"], codec=4, base_offset=13)
    buf = b1 + b2 + b1[:30]
    for min_offset in range(9, 16):
        for limit in (-1, 0, 1, 2, 3, 4, 9):
            recs, used = core.decode_records(buf, 0, -1, min_offset, limit)
            nxt, n, cols = core.decode_columns(buf, 0, -1, min_offset, limit)
            assert (nxt, n) == (used, len(recs)), (min_offset, limit)
            rb = table_mod._record_batch(n, cols)
            assert rb.column(0).to_pylist() == [r.offset for r in recs]
            assert rb.column(2).to_pylist() == [r.key for r in recs]
            assert rb.column(3).to_pylist() == [r.value for r in recs]


def test_header_keys_that_are_not_utf8_are_replaced_as_read_does(data_dir):
    with umlog.open(data_dir) as b:
        p = b.create_topic("t").partition(0)
        p.append_many([b"v", b"w"], headers=[[(b"\xff\xfeok", b"1"), ("fine", None)], [("\u00e9", b"2")]])
        want = as_rows(p.read())
        assert want[0]["headers"][0]["key"] == "\ufffd\ufffdok"
        assert table_rows(p.read_table()) == want


def test_large_batches_chunks_and_log_append_time(data_dir, monkeypatch):
    monkeypatch.setattr(table_mod, "TABLE_CHUNK", 4096)
    with umlog.open(data_dir) as b:
        t = b.create_topic("t", config={"message.timestamp.type": "LogAppendTime", "segment.bytes": 50_000})
        p = t.partition(0)
        p.append_many([b"x" * 10_000, b"y" * 20_000], [b"k", b"l"])  # one batch > a chunk
        p.append_many([b"%d" % i for i in range(2000)])
        for i in range(100):
            t.append(b"single %d" % i, partition=0)
        batches = list(table_mod.iter_record_batches(p, 0, None, 4096))
        assert len(batches) >= 3
        assert table_rows(p.read_table()) == as_rows(p.read())
        assert len(p.segments) > 1


def test_bounds_and_empty(data_dir):
    with umlog.open(data_dir) as b:
        p = b.create_topic("t").partition(0)
        tab = p.read_table()
        assert tab.num_rows == 0 and tab.schema == SCHEMA
        p.append_many([b"a", b"b"])
        assert p.read_table(2).num_rows == 0
        assert p.read_table(0, 0).num_rows == 0
        with pytest.raises(OffsetOutOfRangeError):
            p.read_table(3)


def test_export_parquet_one_file_per_partition(data_dir, tmp_path):
    with umlog.open(data_dir) as b:
        t = b.create_topic("t", partitions=3)
        t.append_many([b"v%d" % i for i in range(5000)], keys=[b"k%d" % i for i in range(5000)])
        seen = []
        out = table_mod.export_parquet(b, "t", str(tmp_path / "pq"), rows_per_group=700, progress=seen.append)
        assert [c for _, c in out] == [p.end_offset for p in t.partitions]
        assert sum(seen) == 5000
        for (path, _), p in zip(out, t.partitions):
            got = pq.read_table(path)
            assert got.schema == SCHEMA
            assert got.equals(p.read_table())
            assert pq.ParquetFile(path).metadata.num_row_groups >= 2 or p.end_offset <= 700
        assert not list((tmp_path / "pq").glob("*.tmp"))


def test_table_is_zero_copy_into_pandas_ready_types(data_dir):
    with umlog.open(data_dir) as b:
        p = b.create_topic("t").partition(0)
        p.append_many([b"v"] * 10, timestamps=[1_700_000_000_000 + i for i in range(10)])
        tab = p.read_table()
        assert tab.column("timestamp").type == pa.timestamp("ms")
        assert tab.column("offset").to_pylist() == list(range(10))

"""``umlog dump``, ``umlog export`` and ``umlog bench`` through the real executable."""

import struct

import pyarrow.parquet as pq
import pytest

import umlog


def kafka_segment(path):
    """A segment as Kafka writes it: batches built by kafka-python's own
    RecordBatch v2 builder (the producer's bytes are what Kafka stores)."""
    records = pytest.importorskip("kafka.record.default_records")
    out = b""
    offset = 0
    for codec, n in ((0, 3), (2, 2)):  # none, then gzip (kafka-python's code 1 is gzip)
        b = records.DefaultRecordBatchBuilder(magic=2, compression_type=codec and 1, is_transactional=False,
                                              producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                              batch_size=1 << 20)
        for i in range(n):
            b.append(i, timestamp=1_700_000_000_000 + offset + i, key=b"key%d" % (offset + i),
                     value=b"kafka value %d " % (offset + i) + b"." * 300, headers=[("h", b"v")])
        raw = bytearray(b.build())
        struct.pack_into(">q", raw, 0, offset)  # the broker sets baseOffset
        out += bytes(raw)
        offset += n
    path.write_bytes(out)
    return offset


def test_dump_segments_indexes_and_a_kafka_segment(cli, tmp_path):
    with umlog.open(tmp_path / "umlog-data") as b:
        t = b.create_topic("t", config={"segment.bytes": 100_000, "index.interval.bytes": 1024})
        p = t.partition(0)
        for i in range(20):
            p.append_many([b"value %d-%d" % (i, j) for j in range(50)], [b"k%d" % j for j in range(50)])
        log = p.segments[0].log_path
        index = p.segments[0].offset_index.path
        timeindex = p.segments[0].time_index.path
    out = cli("dump", log).out.splitlines()
    assert out[0] == f"Dumping {log}" and out[1] == "Log starting offset: 0"
    assert out[2].startswith("position: 0 baseOffset: 0 lastOffset: 49 count: 50 ") and "isvalid: true" in out[2]
    assert out[-1] == f"1000 record(s), {(tmp_path / log).stat().st_size} bytes; all batches valid"
    recs = cli("dump", log, "--records").out.splitlines()
    assert recs[3].startswith("| offset: 0 CreateTime: ") and recs[3].endswith("key: k0 payload: value 0-0")
    j = cli.json("dump", log, "--records")
    assert j["valid"] and len(j["batches"]) == 20 and j["batches"][1]["records"][0]["payload"] == "value 1-0"
    entries = cli.json("dump", index)["entries"]
    assert entries and all(e["position"] > 0 for e in entries)
    assert cli.json("dump", timeindex)["kind"] == "timeindex"
    # A flipped bit: the batch is reported invalid, exit 1, one line.
    bad = tmp_path / "bad.log"
    data = bytearray((tmp_path / log).read_bytes())
    second = j["batches"][1]["position"]
    data[second + 70] ^= 0x01
    bad.write_bytes(bytes(data[:-10]))
    r = cli("dump", str(bad), ok=False)
    assert r.returncode == 1 and "isvalid: false" in r.out
    assert r.err.strip() == f"error: {bad}: bad CRC in batch at position {second} (and 1 more)"
    # Kafka's own bytes.
    n = kafka_segment(tmp_path / "00000000000000000000.log")
    j = cli.json("dump", "00000000000000000000.log", "--records")
    assert j["valid"] and j["records"] == n
    assert [b["compresscodec"] for b in j["batches"]] == ["none", "gzip"]
    assert [r["payload"] for b in j["batches"] for r in b["records"]] == [
        f"kafka value {i} " + "." * 300 for i in range(n)]
    assert cli.error("dump", "missing.log", code=2).startswith("error: Invalid value for 'SEGMENT_FILE'")


def test_export_parquet(cli, tmp_path):
    cli("topics", "create", "t", "-p", "2")
    cli("produce", "t", "-K", "=", input="".join(f"k{i}=v{i}\n" for i in range(500)))
    r = cli("export", "t", "--parquet", "out")
    assert "out/t-0.parquet" in r.out and "out/t-1.parquet" in r.out
    j = cli.json("export", "t", "--parquet", "out2", "--compression", "snappy", "--row-group", "100")
    assert j["records"] == 500 and [f["path"] for f in j["files"]] == ["out2/t-0.parquet", "out2/t-1.parquet"]
    tables = [pq.read_table(tmp_path / f["path"]) for f in j["files"]]
    assert sum(t.num_rows for t in tables) == 500
    assert pq.ParquetFile(tmp_path / j["files"][0]["path"]).metadata.num_row_groups >= 2
    assert sorted(v for t in tables for v in t.column("value").to_pylist()) == sorted(
        b"v%d" % i for i in range(500))
    assert tables[0].column_names == ["offset", "timestamp", "key", "value", "headers"]
    assert cli.error("export", "nope", "--parquet", "x") == "error: unknown topic 'nope'"
    assert cli.error("export", "t", code=2).startswith("error: Missing option '--parquet'")


def test_bench(cli):
    j = cli.json("bench", "--records", "20000", "--size", "50")
    assert [r["phase"] for r in j["results"]] == [
        "append (per record)", "append_many (10,000/call)", "read (Record objects)", "read_table (Arrow)"]
    assert all(r["records_per_s"] > 0 for r in j["results"])
    text = cli("bench", "-n", "5000", "--repeat", "2").out
    assert "records/s" in text and "read_table (Arrow)" in text and "best" in text

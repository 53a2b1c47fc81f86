"""``umlog check``: every batch and index entry verified, read-only, beside a
live writer too; damage reported with where it is, never served as records."""

from __future__ import annotations

import os
import struct

import pytest

import umlog
from umlog.errors import CorruptBatchError


def _make(data: str) -> None:
    with umlog.open(data) as b:
        t = b.create_topic("t", partitions=2, config={"segment.bytes": 2000, "index.interval.bytes": 100})
        for i in range(60):
            t.append_many([b"value-%03d" % i * 5], partition=0)
        t.append_many([b"other"] * 10, partition=1)
        b.create_topic("u").append_many([b"x"] * 100, partition=0)


def _logs(data: str, part: str = "t-0") -> list[str]:
    d = os.path.join(data, part)
    return [os.path.join(d, n) for n in sorted(os.listdir(d)) if n.endswith(".log")]


def _flip(path: str, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x10]))


def test_a_sound_data_dir_is_one_line_and_exit_0(cli, tmp_path):
    data = str(tmp_path / "data")
    _make(data)
    r = cli("check", "--data-dir", data)
    assert r.out.startswith("ok: 2 topic(s), 3 partition(s)") and len(r.out.strip().splitlines()) == 1
    j = cli.json("check", "--data-dir", data, "u")
    assert j["ok"] and j["topics"] == 1 and j["batches"] == 1 and j["damage"] == []


def test_bit_rot_is_reported_where_it_is_and_never_served(cli, tmp_path):
    data = str(tmp_path / "data")
    _make(data)
    seg = _logs(data)[1]
    _flip(seg, 80)  # inside the segment's first batch, after its 61-byte header
    r = cli("check", "--data-dir", data, ok=False)
    assert r.returncode == 1
    j = cli.json("check", "--data-dir", data, ok=False)
    (d,) = j["damage"]
    base = int(os.path.basename(seg)[:20])
    assert (d["topic"], d["partition"], d["file"], d["position"], d["offset"]) == ("t", 0, os.path.basename(seg),
                                                                                  0, base)
    assert "CRC" in d["what"]
    with umlog.open(data) as b:  # a clean close: no recovery scan, so reads meet it
        p = b.topic("t").partition(0)
        seen = []
        with pytest.raises(CorruptBatchError) as e:
            for r in p.read(0):
                seen.append(r.offset)
        assert os.path.basename(seg) in str(e.value) and e.value.position == 0
        assert seen == list(range(base))  # everything before the damage, nothing of it
        with pytest.raises(CorruptBatchError):
            p.read_table(0)


def test_a_bad_index_entry_is_reported(cli, tmp_path):
    data = str(tmp_path / "data")
    _make(data)
    index = _logs(data)[0][:-4] + ".index"
    with open(index, "r+b") as f:
        rel, pos = struct.unpack(">II", f.read(8))
        f.seek(0)
        f.write(struct.pack(">II", rel, pos + 3))
    j = cli.json("check", "--data-dir", data, ok=False)
    (d,) = j["damage"]
    assert d["file"].endswith(".index") and "no batch starts" in d["what"]


def test_a_torn_tail_is_damage_without_a_writer_and_not_while_one_writes(cli, tmp_path):
    data = str(tmp_path / "data")
    _make(data)
    last = _logs(data, "u-0")[-1]
    with open(last, "ab") as f:
        f.write(b"\0" * 8 + struct.pack(">i", 500) + b"\x01" * 40)  # a batch header claiming 500 bytes
    j = cli.json("check", "--data-dir", data, ok=False)
    (d,) = j["damage"]
    assert (d["topic"], d["file"]) == ("u", os.path.basename(last)) and "cut off" in d["what"]
    # The same bytes while a writer holds the data dir: the tail it is writing.
    with open(last, "r+b") as f:
        f.truncate(os.path.getsize(last) - 52)
    with umlog.open(data) as b:
        with open(last, "ab") as f:
            f.write(b"\0" * 8 + struct.pack(">i", 500) + b"\x01" * 40)
        j = cli.json("check", "--data-dir", data)
        assert j["ok"] and j["writer_alive"]
        with open(last, "r+b") as f:
            f.truncate(os.path.getsize(last) - 52)
        assert b.topic("u").partition(0).end_offset == 100


def test_unknown_topics_and_a_non_data_dir(cli, tmp_path):
    data = str(tmp_path / "data")
    _make(data)
    j = cli.json("check", "--data-dir", data, "nope", ok=False)
    assert j["damage"][0]["what"] == "no such topic in the data dir"
    line = cli.error("check", "--data-dir", str(tmp_path))
    assert "not a umlog data dir" in line


@pytest.mark.clients
def test_beside_a_running_server_that_is_being_written(cli, tmp_path):
    import threading

    ck = pytest.importorskip("confluent_kafka")
    from helpers import scaled
    from server.kafka.serve_process import ServeProcess

    data = str(tmp_path / "data")
    s = ServeProcess(data)
    try:
        stop = threading.Event()

        def produce():
            p = ck.Producer({"bootstrap.servers": s.bootstrap, "linger.ms": 1})
            i = 0
            while not stop.is_set():
                p.produce("live", b"record-%d" % i, partition=0)
                p.poll(0)
                i += 1
                if i % 500 == 0:
                    p.flush(scaled(10))
            p.flush(scaled(10))

        t = threading.Thread(target=produce)
        t.start()
        try:
            for _ in range(3):
                j = cli.json("check", "--data-dir", data)
                assert j["ok"] and j["writer_alive"], j
        finally:
            stop.set()
            t.join(scaled(30))
    finally:
        s.stop()
    j = cli.json("check", "--data-dir", data)
    assert j["ok"] and not j["writer_alive"] and j["batches"] > 0

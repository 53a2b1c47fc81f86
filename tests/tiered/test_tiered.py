"""Tiered storage (umlog/log/tiered.py): segments in an object store (a local
folder, moto's S3) read back as one log by embedded readers and Kafka
consumers; a killed writer and an unreachable store lose nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
from helpers import scaled, subprocess_env, wait_until

import umlog
from umlog.errors import RemoteStorageError

TOPIC_CFG = {"remote.storage.enable": "true", "segment.bytes": 16384, "local.retention.bytes": 1}


def opts(uri: str, **kw) -> dict:
    return {"uri": uri, "prefix": "tiers", "interval_ms": 50, "retry_backoff_ms": [50, 500],
            "request_timeout_ms": 3000, **kw}


def fill(t, start: int, n: int) -> None:
    for i in range(start, start + n, 100):
        t.append_many([b"v%06d" % j for j in range(i, min(start + n, i + 100))], partition=0)


def values(p, offset=0) -> list[bytes]:
    return [r.value for r in p.read(offset)]


def settled(b, topic: str):
    """The partition's tier status once every closed segment is uploaded and only the active one is local."""
    def done():
        st = b.tier_status(topic)[0]
        return st if st["backlog_segments"] == 0 and st["local_segments"] == 1 and st["pending"] == 0 else None
    return wait_until(done, 30, "every closed segment uploaded and deleted locally")


def test_a_replay_from_zero_reads_remote_then_local_segments(tmp_path):
    store = str(tmp_path / "store")
    with umlog.open(tmp_path / "d", tiered=opts(store)) as b:
        t = b.create_topic("ev", 1, TOPIC_CFG)
        fill(t, 0, 3000)
        b.flush()
        st = settled(b, "ev")
        assert st["remote_segments"] >= 2 and st["remote_start"] == 0 and st["local_start"] > 0
        p = t.partition(0)
        assert p.start_offset == 0 and p.segments[0].base_offset == st["local_start"]
        assert values(p) == [b"v%06d" % i for i in range(3000)]
        assert values(p, 1234)[0] == b"v001234"
        tbl = p.read_table(0)
        assert tbl.num_rows == 3000 and tbl.column("value")[2999].as_py() == b"v002999"
        assert p.read_batches(5, 1)  # Kafka Fetch's read: a whole batch from the store
        objs = sorted(os.listdir(os.path.join(store, "tiers", "ev-0")))
        assert objs[:3] == ["00000000000000000000.index", "00000000000000000000.log",
                            "00000000000000000000.timeindex"]
    # A read-only opener finds the store in meta/tiered.json.
    with umlog.open(tmp_path / "d", readonly=True) as r:
        assert values(r.topic("ev").partition(0)) == [b"v%06d" % i for i in range(3000)]
    # Retention spans both tiers: remote objects go, the start moves.
    with umlog.open(tmp_path / "d", tiered=opts(store)) as b:
        p = b.topic("ev").partition(0)
        assert values(p)[:1] == [b"v000000"]
        b.alter_topic_config("ev", {"retention.bytes": 20000})
        res = b.run_retention("ev")[("ev", 0)]
        assert res.segments >= 1 and p.start_offset > 0
        assert values(p, p.start_offset) == [b"v%06d" % i for i in range(p.start_offset, 3000)]
        assert "00000000000000000000.log" not in os.listdir(os.path.join(store, "tiers", "ev-0"))
        with pytest.raises(umlog.OffsetOutOfRangeError):
            list(p.read(0))


def test_s3_unreachable_for_a_while_loses_nothing(tmp_path, s3):
    proxy = s3["proxy"]
    with umlog.open(tmp_path / "d", tiered=opts(s3["uri"], endpoint=s3["endpoint"])) as b:
        t = b.create_topic("ev", 1, TOPIC_CFG)
        fill(t, 0, 3000)
        b.flush()
        assert settled(b, "ev")["remote_segments"] >= 1
        proxy.set_down(True)
        stop = threading.Event()
        written = [3000]

        def produce():
            while not stop.is_set() and written[0] < 20_000:
                fill(t, written[0], 100)
                written[0] += 100
                stop.wait(0.002)

        th = threading.Thread(target=produce)
        th.start()
        try:
            wait_until(lambda: b.tier_status("ev")[0]["backlog_segments"] >= 3 and b.tiering.last_error,
                       30, "a backlog while the store is down")
            # A read that needs the store: a clear, retriable error, never wrong data.
            p = t.partition(0)
            p.set_remote([type(s)(s.tier, s.meta) for s in p.remote_segments])  # no cached index or bytes
            b.tiering.cache.drop(p.remote_segments[0].key)
            with pytest.raises(RemoteStorageError):
                list(p.read(0, max_records=10))
            st = b.tier_status("ev")[0]
            assert st["local_start"] <= st["remote_end"]  # nothing not uploaded left the disk
        finally:
            stop.set()
            th.join()
        proxy.set_down(False)
        b.tiering.kick()
        settled(b, "ev")
        assert values(t.partition(0)) == [b"v%06d" % i for i in range(written[0])]


def test_kafka_consumers_replay_a_topic_whose_first_segments_are_remote(tmp_path, s3):
    ck = pytest.importorskip("confluent_kafka")
    from confluent_kafka.admin import AdminClient, NewTopic
    from server.kafka.serve_process import ServeProcess

    conf = tmp_path / "umlog.toml"
    conf.write_text(textwrap.dedent(f"""
        [tiered]
        uri = "{s3['uri']}"
        endpoint = "{s3['endpoint']}"
        prefix = "k"
        interval_ms = 50
        retry_backoff_ms = 50
        retry_backoff_max_ms = 500
    """))
    data = str(tmp_path / "data")
    srv = ServeProcess(data, "--config", str(conf))
    try:
        admin = AdminClient({"bootstrap.servers": srv.bootstrap})
        admin.create_topics([NewTopic("ev", 1, 1, config=TOPIC_CFG)])["ev"].result(scaled(10))
        prod = ck.Producer({"bootstrap.servers": srv.bootstrap, "linger.ms": 5, "batch.num.messages": 50})
        for i in range(2000):
            prod.produce("ev", b"v%06d" % i, partition=0)
        assert prod.flush(scaled(30)) == 0

        def remote_only():
            with umlog.open(data, readonly=True) as r:
                st = r.tier_status("ev")
                return st and st[0]["remote_segments"] >= 1 and st[0]["local_start"] > 0 and st[0]
        st = wait_until(remote_only, 60, "the first segments only in the store")
        c = ck.Consumer({"bootstrap.servers": srv.bootstrap, "group.id": "replay", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
        try:
            lo, hi = c.get_watermark_offsets(ck.TopicPartition("ev", 0), timeout=scaled(10))
            assert (lo, hi) == (0, 2000)  # ListOffsets earliest: the remote start
            c.assign([ck.TopicPartition("ev", 0, 0)])
            got = []
            wait_until(lambda: got.extend(m.value() for m in c.consume(500, 0.5) if m.error() is None)
                       or len(got) >= 2000, 60, "2000 records")
            assert got == [b"v%06d" % i for i in range(2000)]
            assert st["local_start"] > 0
        finally:
            c.close()
        out = subprocess.run([sys.executable, "-m", "umlog", "consume", "ev", "--data-dir", data, "--from-beginning",
                              "--max", "2000", "--timeout", str(scaled(20))],
                             capture_output=True, text=True, env=subprocess_env(), timeout=scaled(60))
        assert out.stdout.split() == [f"v{i:06d}" for i in range(2000)], out.stderr
    finally:
        srv.stop()


# The tiering thread may reach its stall while the main thread still appends:
# it announces the stall only once every record is flushed, so the kill never
# takes records that were not yet durable.
CHILD = """
import os, sys, threading, time, umlog
from umlog.log import tiered
mode, data, store = sys.argv[1:4]
put, delete = tiered.RemoteStore.put_file, tiered._delete_files
flushed = threading.Event()
def stall_put(self, local, key, size=None):
    if key.endswith(".log"):
        with open(local, "rb") as f:
            half = f.read(size or -1)
        os.makedirs(os.path.dirname(self.path(key)), exist_ok=True)
        with open(self.path(key), "wb") as f:
            f.write(half[: len(half) // 2])
        flushed.wait()
        print("STALLED", flush=True)
        time.sleep(3600)
    return put(self, local, key, size)
def stall_delete(directory, segments):
    seg = segments[0]
    os.rename(seg.log_path, seg.log_path + ".deleted")  # one file of the first segment renamed, then killed
    flushed.wait()
    print("STALLED", flush=True)
    time.sleep(3600)
if mode == "upload":
    tiered.RemoteStore.put_file = stall_put
else:
    tiered._delete_files = stall_delete
opts = {"uri": store, "prefix": "tiers", "interval_ms": 50, "retry_backoff_ms": [50, 500]}
b = umlog.open(data, tiered=opts)
t = b.create_topic("ev", 1, {"remote.storage.enable": "true", "segment.bytes": 16384, "local.retention.bytes": 1})
for i in range(0, 3000, 100):
    t.append_many([b"v%06d" % j for j in range(i, i + 100)], partition=0)
b.flush()
flushed.set()
b.tiering.kick()
time.sleep(3600)
"""


@pytest.mark.parametrize("mode", ["upload", "delete"])
def test_sigkill_of_the_writer_during_upload_or_local_deletion(tmp_path, mode):
    data, store = str(tmp_path / "d"), str(tmp_path / "store")
    child = subprocess.Popen([sys.executable, "-c", CHILD, mode, data, store], stdout=subprocess.PIPE, text=True,
                             env=subprocess_env())
    try:
        line = [""]

        def stalled():
            line[0] = child.stdout.readline()
            return "STALLED" in line[0] or child.poll() is not None
        wait_until(stalled, 60, "the child stalled mid-way")
        assert "STALLED" in line[0]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    with umlog.open(data, tiered=opts(store)) as b:
        st = settled(b, "ev")
        assert st["pending"] == 0 and st["remote_start"] == 0
        assert values(b.topic("ev").partition(0)) == [b"v%06d" % i for i in range(3000)]
        meta = [r for r in b.topic("__remote_log_metadata").partition(0).read(0)]
        assert any(b'"copy_started"' in r.value for r in meta if r.value)
    # No leftover .deleted files or half objects confuse a second start.
    with umlog.open(data, tiered=opts(store)) as b:
        assert values(b.topic("ev").partition(0)) == [b"v%06d" % i for i in range(3000)]

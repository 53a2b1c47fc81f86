"""``umlog mirror`` between two umlog servers, real clients on both sides: a
mirror killed mid-stream and restarted copies every record exactly once, and
a group moved from the source to the target resumes at its translated offset."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

import pytest
from helpers import scaled, subprocess_env, wait_until

from umlog.mirror import OFFSET_HEADER, decode_checkpoint

ck = pytest.importorskip("confluent_kafka")

from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic  # noqa: E402
from server.kafka.serve_process import ServeProcess  # noqa: E402

SESSION_MS = int(scaled(10) * 1000)


def start_mirror(src, dst, log, *extra):
    return subprocess.Popen([sys.executable, "-m", "umlog", "-v", "mirror", "--from", src.bootstrap,
                             "--to", dst.bootstrap,
                             "--topics", "orders", "--groups", "billing", "--sync-interval-ms", "100",
                             "--checkpoint-interval-ms", "200", "--refresh-interval-ms", "500", *extra],
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=log)


def total(bootstrap: str, topic: str, n: int) -> int:
    c = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": "count"})
    try:
        return sum(c.get_watermark_offsets(ck.TopicPartition(topic, i), timeout=scaled(10))[1] for i in range(n))
    except ck.KafkaException:
        return 0
    finally:
        c.close()


def read_all(bootstrap: str, topic: str, n: int, count: int) -> list:
    c = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": "reader", "enable.auto.commit": False})
    c.assign([ck.TopicPartition(topic, i, 0) for i in range(n)])
    got = []
    try:
        wait_until(lambda: got.extend(m for m in c.consume(500, 0.5) if m.error() is None) or len(got) >= count,
                   60, f"{count} records of {topic}")
    finally:
        c.close()
    return got


@pytest.fixture
def clusters(tmp_path):
    src = ServeProcess(str(tmp_path / "src"))
    try:
        dst = ServeProcess(str(tmp_path / "dst"))
    except BaseException:
        src.stop()
        raise
    yield src, dst
    dst.stop()
    src.stop()


def test_mirror_restart_copies_exactly_once_and_groups_move(clusters, tmp_path):
    src, dst = clusters
    admin = AdminClient({"bootstrap.servers": src.bootstrap})
    admin.create_topics([NewTopic("orders", 3, 1, config={"retention.ms": "123456789"})])["orders"].result(scaled(10))
    prod = ck.Producer({"bootstrap.servers": src.bootstrap, "linger.ms": 5})

    def produce(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            prod.produce("orders", b"v%05d" % i, b"k%d" % (i % 17), headers=[("h", b"%d" % i)],
                         timestamp=1_700_000_000_000 + i)
            if i % 100 == 0:
                prod.poll(0)
        assert prod.flush(scaled(30)) == 0

    produce(0, 1500)
    # A group consumes the first 1500 on the source and commits.
    g = ck.Consumer({"bootstrap.servers": src.bootstrap, "group.id": "billing", "auto.offset.reset": "earliest",
                     "enable.auto.commit": False, "session.timeout.ms": SESSION_MS, "heartbeat.interval.ms": 500})
    g.subscribe(["orders"])
    seen = []
    wait_until(lambda: seen.extend(m for m in g.consume(500, 0.5) if m.error() is None) or len(seen) >= 1500,
               60, "the group read 1500")
    g.commit(asynchronous=False)
    g.close()

    log = open(tmp_path / "mirror.log", "w")
    m1 = start_mirror(src, dst, log)
    feeder = threading.Thread(target=produce, args=(1500, 3000))
    try:
        feeder.start()
        wait_until(lambda: total(dst.bootstrap, "orders", 3) >= 1200, 60, "the mirror well under way")
    finally:
        m1.send_signal(signal.SIGKILL)
        m1.wait()
    feeder.join()
    assert total(src.bootstrap, "orders", 3) == 3000
    m2 = start_mirror(src, dst, log)
    try:
        wait_until(lambda: total(dst.bootstrap, "orders", 3) >= 3000, 60, "3000 records on the target")
        # Exactly once: the target holds each source record once, in source order per partition.
        got = read_all(dst.bootstrap, "orders", 3, 3000)
        assert len(got) == 3000 and total(dst.bootstrap, "orders", 3) == 3000
        src_recs = read_all(src.bootstrap, "orders", 3, 3000)
        by_part = {}
        for m in src_recs:
            by_part.setdefault(m.partition(), []).append((m.key(), m.value(), m.timestamp()[1], m.headers()))
        for m in got:
            h = dict(m.headers())
            assert int(h[OFFSET_HEADER]) == m.offset()  # a 1:1 copy: target offset = source offset
            exp = by_part[m.partition()][m.offset()]
            assert (m.key(), m.value(), m.timestamp()[1], [x for x in m.headers() if x[0] != OFFSET_HEADER]) == exp
        # The topic came with the source's partition count and configs.
        dadmin = AdminClient({"bootstrap.servers": dst.bootstrap})
        res = ConfigResource(ConfigResource.Type.TOPIC, "orders")
        assert dadmin.describe_configs([res])[res].result(scaled(10))["retention.ms"].value == "123456789"
        # The group's offsets, translated, are committed on the target; MM2's topics exist.
        def moved():
            c = ck.Consumer({"bootstrap.servers": dst.bootstrap, "group.id": "billing"})
            try:
                offs = c.committed([ck.TopicPartition("orders", i) for i in range(3)], timeout=scaled(10))
                return sum(max(tp.offset, 0) for tp in offs) == 1500
            finally:
                c.close()
        wait_until(moved, 60, "billing's offsets translated on the target " + (tmp_path / "mirror.log").read_text())
        ckpts = read_all(dst.bootstrap, "source.checkpoints.internal", 1, 1)
        assert decode_checkpoint(ckpts[0].key(), ckpts[0].value())[0] == "billing"
        assert total(src.bootstrap, "mm2-offset-syncs.target.internal", 1) > 0
        status = subprocess.run([sys.executable, "-m", "umlog", "mirror", "status", "--from", src.bootstrap,
                                 "--to", dst.bootstrap, "--topics", "orders", "--json"],
                                capture_output=True, text=True, env=subprocess_env(), timeout=scaled(60))
        rows = json.loads(status.stdout)
        assert len(rows) == 3 and all(r["lag_records"] == 0 for r in rows), status.stderr
    finally:
        m2.send_signal(signal.SIGTERM)
        m2.wait(scaled(30))
        log.close()
    # A consumer of the group moved to the target resumes at the translated offset: the 1500 it had not read.
    c = ck.Consumer({"bootstrap.servers": dst.bootstrap, "group.id": "billing", "auto.offset.reset": "latest",
                     "session.timeout.ms": SESSION_MS, "heartbeat.interval.ms": 500})
    c.subscribe(["orders"])
    rest = []
    try:
        wait_until(lambda: rest.extend(m for m in c.consume(500, 0.5) if m.error() is None) or len(rest) >= 1500,
                   60, "the moved group read the rest")
    finally:
        c.close()
    assert sorted(m.value() for m in rest) == [b"v%05d" % i for i in range(1500, 3000)]

"""Debian's Burrow 1.2.1 (Sarama 1.22) against a real ``umlog serve``.

Burrow asks end offsets with ListOffsets v0 and reads ``__consumer_offsets``
with Fetch v3 (old message format, magic 1), so this is what an old lag
monitor sees: topics, offsets, groups and lag as a consumer commits. Burrow
keeps its own bookkeeping in ZooKeeper; a small stand-in
(``zk_standin.ZkStandIn``) serves that. Skipped without Burrow, failed under
CI=true (``require_tool``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
import warnings

from helpers import require_tool, scaled, wait_until

from .serve_process import ServeProcess
from .zk_standin import ZkStandIn

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.structs import OffsetAndMetadata

TOPIC = "burrow-watched"
GROUP = "burrow-group"


def burrow_config(zk: str, bootstrap: str, tmp) -> str:
    return f"""
[general]
pidfile="{tmp}/burrow.pid"
[logging]
level="info"
[zookeeper]
servers=["{zk}"]
timeout=6
root-path="/burrow"
[client-profile.umlog]
client-id="burrow-test"
[cluster.local]
class-name="kafka"
servers=["{bootstrap}"]
client-profile="umlog"
topic-refresh=1
offset-refresh=1
[consumer.local]
class-name="kafka"
cluster="local"
servers=["{bootstrap}"]
client-profile="umlog"
[httpserver.default]
address="127.0.0.1:0"
[storage.default]
class-name="inmemory"
workers=2
intervals=10
expire-group=604800
min-distance=1
"""


def produce(bootstrap: str, n: int) -> None:
    p = KafkaProducer(bootstrap_servers=bootstrap, api_version=(0, 10))
    for i in range(n):
        p.send(TOPIC, value=b"r%d" % i, partition=0)
    p.flush(scaled(30))
    p.close()


def commit(bootstrap: str, offset: int) -> None:
    c = KafkaConsumer(bootstrap_servers=bootstrap, api_version=(0, 10), group_id=GROUP, enable_auto_commit=False)
    c.commit({TopicPartition(TOPIC, 0): OffsetAndMetadata(offset, "", -1)})
    c.close()


def test_burrow_sees_topics_offsets_groups_and_lag(tmp_path):
    exe = require_tool(shutil.which("Burrow") or shutil.which("burrow"), "Burrow", "apt-get install burrow")
    srv = ServeProcess(str(tmp_path / "data"))
    zk = ZkStandIn()
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "burrow.toml").write_text(burrow_config(zk.address, srv.bootstrap, tmp_path))
    log_path = tmp_path / "burrow.log"
    burrow = None
    try:
        produce(srv.bootstrap, 20)
        commit(srv.bootstrap, 5)
        with open(log_path, "wb") as log:
            burrow = subprocess.Popen([exe, "--config-dir", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                                      cwd=str(tmp_path), env=dict(os.environ))

        def listener():
            m = re.search(rb'"started listener".*?"listener":"([0-9.]+:\d+)"', log_path.read_bytes())
            return m.group(1).decode() if m else None

        http = wait_until(listener, 60, "Burrow's HTTP listener")

        def get(path: str):
            try:
                with urllib.request.urlopen(f"http://{http}/v3/kafka/local{path}", timeout=scaled(5)) as r:
                    return json.loads(r.read())
            except OSError:
                return None

        def lag():
            body = get(f"/consumer/{GROUP}/lag")
            if not body or body.get("error"):
                return None
            (part,) = body["status"]["partitions"]
            return part["end"]["offset"], part["current_lag"], body["status"]["totallag"]

        wait_until(lambda: TOPIC in ((get("/topic") or {}).get("topics") or []), 60, "the topic in Burrow")
        wait_until(lambda: (get(f"/topic/{TOPIC}") or {}).get("offsets") == [20], 60, "end offset 20 (ListOffsets v0)")
        wait_until(lambda: GROUP in ((get("/consumer") or {}).get("consumers") or []), 60,
                   "the group, read from __consumer_offsets (Fetch v3, magic 1)")
        wait_until(lambda: lag() == (5, 15, 15), 60, "committed 5 of 20: lag 15")

        produce(srv.bootstrap, 10)
        wait_until(lambda: (get(f"/topic/{TOPIC}") or {}).get("offsets") == [30], 60, "end offset 30")
        commit(srv.bootstrap, 30)
        wait_until(lambda: lag() == (30, 0, 0), 60, "committed 30 of 30: no lag")
        assert "/burrow" in zk.nodes and not zk.unhandled
        assert srv.alive(), srv.stderr_text()
    finally:
        if burrow is not None:
            burrow.terminate()
            try:
                burrow.wait(scaled(15))
            except subprocess.TimeoutExpired:
                burrow.kill()
                burrow.wait()
        zk.close()
        srv.stop()

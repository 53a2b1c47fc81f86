"""``/metrics`` of a real ``umlog serve``, parsed as Prometheus parses it, after a Kafka
consumer commits; ``--http off`` and ``listen = "off"``; a client sending garbage."""

from __future__ import annotations

import socket
import time

from confluent_kafka import Consumer, TopicPartition
from helpers import scaled, wait_until
from prometheus_client.parser import text_string_to_metric_families

from server.kafka.serve_process import ServeProcess
from umlog.server.door import all_settings
from umlog.server.settings import resolve

from .conftest import JSONV2


def scrape(http) -> dict:
    r = http.call("GET", "/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain"), r
    out = {}
    for fam in text_string_to_metric_families(r.body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_offsets_lag_and_members_after_a_kafka_consumer_commits(http):
    t = http.create_topic(2)
    group = "m-" + t
    http.call("POST", f"/topics/{t}/partitions/0", {"records": [{"value": i} for i in range(10)]}, ctype=JSONV2)
    http.call("POST", f"/topics/{t}/partitions/1", {"records": [{"value": 1}]}, ctype=JSONV2)
    c = Consumer({"bootstrap.servers": http.bootstrap, "group.id": group})
    try:
        c.commit(offsets=[TopicPartition(t, 0, 4), TopicPartition(t, 1, 1)], asynchronous=False)
    finally:
        c.close()
    m = scrape(http)
    assert m[("kafka_topic_partitions", (("topic", t),))] == 2
    assert m[("kafka_topic_partition_current_offset", (("partition", "0"), ("topic", t)))] == 10
    assert m[("kafka_topic_partition_oldest_offset", (("partition", "0"), ("topic", t)))] == 0
    labels0 = (("consumergroup", group), ("partition", "0"), ("topic", t))
    labels1 = (("consumergroup", group), ("partition", "1"), ("topic", t))
    assert m[("kafka_consumergroup_current_offset", labels0)] == 4
    assert m[("kafka_consumergroup_lag", labels0)] == 6
    assert m[("kafka_consumergroup_lag", labels1)] == 0
    assert m[("kafka_consumergroup_lag_seconds", labels1)] == 0
    assert 0 <= m[("kafka_consumergroup_lag_seconds", labels0)] < scaled(600)
    assert ("kafka_consumergroup_members", (("consumergroup", group),)) in m
    assert m[("umlog_connections", (("door", "http"),))] >= 1
    assert m[("umlog_disk_free_bytes", ())] > 0 and m[("umlog_data_dir_bytes", ())] > 0
    assert ("umlog_delayed_pending", ()) in m
    # a REST consumer instance is a member of its group
    http.call("POST", f"/consumers/{group}", {"name": "i", "format": "json"})
    assert scrape(http)[("kafka_consumergroup_members", (("consumergroup", group),))] == 1
    http.call("DELETE", f"/consumers/{group}/instances/i")
    # requests are timed per route
    assert any(k[0] == "umlog_request_seconds_count" and ("route", "/topics/{topic}/partitions/{partition}") in k[1]
               for k in m)


def test_the_lag_in_seconds_is_the_age_of_the_first_unconsumed_record(http):
    t = http.create_topic(1)
    group = "age-" + t
    http.call("POST", f"/topics/{t}", {"records": [{"value": 1}]}, ctype=JSONV2)
    c = Consumer({"bootstrap.servers": http.bootstrap, "group.id": group})
    try:
        c.commit(offsets=[TopicPartition(t, 0, 0)], asynchronous=False)
    finally:
        c.close()
    labels = (("consumergroup", group), ("partition", "0"), ("topic", t))
    first = scrape(http)[("kafka_consumergroup_lag_seconds", labels)]
    # it grows with the clock while nothing is consumed (waiting for the clock is the scenario)
    wait_until(lambda: scrape(http)[("kafka_consumergroup_lag_seconds", labels)] >= first + 0.2, 10,
               "the lag in seconds to grow", interval=0.1)


def test_fsync_always_fills_the_fsync_histogram(tmp_path):
    from .conftest import Http

    s = ServeProcess(str(tmp_path / "data"), "--fsync", "always")
    try:
        http = Http(s)
        t = http.create_topic(1)
        r = http.call("POST", f"/topics/{t}", {"records": [{"value": 1}]}, ctype=JSONV2)
        assert r.status == 200
        assert scrape(http)[("umlog_fsync_seconds_count", ())] >= 1
    finally:
        assert s.stop() == 0, s.stderr_text()


def test_http_off(tmp_path):
    s = ServeProcess(str(tmp_path / "data"), "--http", "off")
    try:
        assert "http" not in s.addresses and "kafka" in s.addresses
    finally:
        assert s.stop() == 0, s.stderr_text()
    assert resolve(all_settings(), {"http": {"listen": "off"}}).get("http", "listen") is None
    assert resolve(all_settings()).get("http", "listen") == "127.0.0.1:8080"


def test_garbage_and_broken_requests_never_hurt_the_server(http):
    host, port = http.server.addresses["http"]
    for junk in (b"\x00\xff" * 100 + b"\r\n\r\n", b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                 b"POST /topics/x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n{",
                 b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n"):
        with socket.create_connection((host, port), timeout=scaled(10)) as sock:
            sock.sendall(junk)
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + scaled(10)
            while time.monotonic() < deadline and sock.recv(65536):
                pass
    assert http.server.alive()
    assert http.call("GET", "/healthz").status == 200
    assert "Traceback" not in http.server.stderr_text()

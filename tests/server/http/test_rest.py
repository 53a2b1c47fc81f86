"""Confluent REST Proxy v2 on the HTTP door of a real ``umlog serve``: every endpoint's
status codes, content types and error bodies, the consumer flow end to end, and a
Kafka client (confluent-kafka) seeing the offsets a REST consumer committed."""

from __future__ import annotations

import base64
import time

from confluent_kafka import Consumer, TopicPartition
from helpers import scaled, wait_until

from .conftest import BINARY, JSONV2, V2


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def test_index_health_and_unknown_paths(http):
    r = http.call("GET", "/")
    assert r.status == 200 and "GET /metrics" in r.json()["endpoints"]
    assert http.call("GET", "/healthz").json() == {"status": "ok"}
    r = http.call("GET", "/readyz")
    assert r.status == 200 and r.json()["status"] == "ready" and {"kafka", "http"} <= set(r.json()["doors"])
    r = http.call("GET", "/no/such/path")
    assert r.status == 404 and r.ctype == "application/json" and r.json()["error_code"] == 404
    r = http.call("PUT", "/topics")
    assert r.status == 405 and r.json()["error_code"] == 405


def test_topic_metadata(http):
    t = http.create_topic(3)
    r = http.call("GET", "/topics")
    assert r.status == 200 and r.ctype == V2 and t in r.json()
    r = http.call("GET", f"/topics/{t}")
    assert r.status == 200 and r.ctype == V2
    body = r.json()
    assert body["name"] == t and [p["partition"] for p in body["partitions"]] == [0, 1, 2]
    assert body["configs"]["cleanup.policy"] == "delete"
    r = http.call("GET", f"/topics/{t}/partitions")
    assert r.status == 200 and len(r.json()) == 3 and r.json()[0]["replicas"][0]["leader"] is True
    r = http.call("GET", f"/topics/{t}/partitions/2")
    assert r.status == 200 and r.json()["partition"] == 2 and r.json()["leader"] == 0
    for bad in ("3", "-1", "x"):
        r = http.call("GET", f"/topics/{t}/partitions/{bad}")
        assert r.status == 404 and r.json()["error_code"] == 40402, r
    r = http.call("GET", f"/topics/{t}/partitions/0/offsets")
    assert r.json() == {"beginning_offset": 0, "end_offset": 0}
    for path in ("/topics/nope-nope", "/topics/nope-nope/partitions", "/topics/nope-nope/partitions/0"):
        r = http.call("GET", path)
        assert r.status == 404 and r.json()["error_code"] == 40401 and "nope-nope" in r.json()["message"], r


def test_produce_in_each_format_answers_offsets(http):
    t = http.create_topic(2)
    r = http.call("POST", f"/topics/{t}", {"records": [{"value": b64(b"\x00\xff"), "partition": 1},
                                                     {"key": b64(b"k"), "value": b64(b"v"), "partition": 1},
                                                     {"value": None, "partition": 0}]}, ctype=BINARY)
    assert r.status == 200 and r.ctype == V2, r
    offsets = r.json()["offsets"]
    assert [(o["partition"], o["offset"]) for o in offsets] == [(1, 0), (1, 1), (0, 0)]
    assert all(o["error_code"] is None and o["error"] is None for o in offsets)
    r = http.call("POST", f"/topics/{t}/partitions/0", {"records": [{"key": "a", "value": {"n": 1}},
                                                                  {"value": [1, 2]}]}, ctype=JSONV2)
    assert r.status == 200 and [o["offset"] for o in r.json()["offsets"]] == [1, 2], r
    r = http.call("POST", f"/topics/{t}/partitions/0", {"records": [{"value": "plain"}]}, ctype=V2)
    assert r.status == 200 and r.json()["offsets"][0]["offset"] == 3
    # a keyed record goes to its key's murmur2 partition, the same every time
    r1 = http.call("POST", f"/topics/{t}", {"records": [{"key": "same", "value": 1}] * 3}, ctype=JSONV2)
    assert len({o["partition"] for o in r1.json()["offsets"]}) == 1
    # read back through Kafka: bytes as sent (binary), compact JSON text (json)
    c = Consumer({"bootstrap.servers": http.bootstrap, "group.id": "g-" + t, "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(t, 0, 0), TopicPartition(t, 1, 0)])
        got = {}
        deadline = time.monotonic() + scaled(30)
        while len(got) < 7 and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got[(m.partition(), m.offset())] = (m.key(), m.value())
    finally:
        c.close()
    assert got[(1, 0)] == (None, b"\x00\xff") and got[(1, 1)] == (b"k", b"v") and got[(0, 0)] == (None, None)
    assert got[(0, 1)] == (b'"a"', b'{"n":1}') and got[(0, 2)] == (None, b"[1,2]") and got[(0, 3)][1] == b'"plain"'


def test_produce_errors_are_json_with_confluent_codes(http):
    t = http.create_topic(1)
    cases = [
        (dict(raw=b"{not json", ctype=BINARY), 400, 400),
        (dict(raw=b'{"records": [{"value": "%%%"}]}', ctype=BINARY), 422, 42205),
        (dict(raw=b'{"records": "x"}', ctype=JSONV2), 422, 42200),
        (dict(raw=b'{"records": [{"value": 1, "partition": 5}]}', ctype=JSONV2), 404, 40402),
        (dict(raw=b'{"records": [{"value": 1}]}', ctype="text/plain"), 415, 415),
        (dict(raw=b'{"records": [{"value": 1}]}', ctype="application/vnd.kafka.avro.v2+json"), 415, 415),
        (dict(raw=b"", ctype=JSONV2), 422, 42200),
    ]
    for kw, status, code in cases:
        r = http.call("POST", f"/topics/{t}", **kw)
        assert r.status == status and r.ctype == "application/json" and r.json()["error_code"] == code, (kw, r)
        assert "Traceback" not in r.json()["message"]
    r = http.call("POST", "/topics/no-such-topic", {"records": [{"value": 1}]}, ctype=JSONV2)
    assert r.status == 404 and r.json()["error_code"] == 40401
    r = http.call("POST", f"/topics/{t}/partitions/1", {"records": [{"value": 1}]}, ctype=JSONV2)
    assert r.status == 404 and r.json()["error_code"] == 40402
    # nothing of a refused request was stored
    assert http.call("GET", f"/topics/{t}/partitions/0/offsets").json()["end_offset"] == 0


def test_an_oversized_body_is_413(tight):
    t = tight.create_topic(1)
    big = {"records": [{"value": "x" * 70_000}]}
    r = tight.call("POST", f"/topics/{t}", big, ctype=JSONV2)
    assert r.status == 413 and r.json()["error_code"] == 413, r
    r = tight.call("POST", f"/topics/{t}", {"records": [{"value": "x" * 1000}]}, ctype=JSONV2)
    assert r.status == 200


def _records(http, base: str, want: int, accept: str = BINARY) -> list[dict]:
    got: list[dict] = []

    def more():
        r = http.call("GET", f"{base}/records?timeout=500", headers={"Accept": accept})
        assert r.status == 200 and r.ctype == accept, r
        got.extend(r.json())
        return len(got) >= want

    wait_until(more, 30, f"{want} records from {base}")
    return got


def test_consumer_flow_and_kafka_sees_the_same_commits(http):
    t = http.create_topic(2)
    group = "rest-" + t
    values = [f"v{i}".encode() for i in range(10)]
    http.call("POST", f"/topics/{t}", {"records": [{"value": b64(v), "partition": i % 2}
                                                  for i, v in enumerate(values)]}, ctype=BINARY)
    r = http.call("POST", f"/consumers/{group}", {"name": "c1", "format": "binary", "auto.offset.reset": "earliest",
                                                  "auto.commit.enable": "false"})
    assert r.status == 200 and r.ctype == V2, r
    assert r.json()["instance_id"] == "c1"
    assert r.json()["base_uri"] == http.url(f"/consumers/{group}/instances/c1")
    r = http.call("POST", f"/consumers/{group}", {"name": "c1", "format": "binary"})
    assert r.status == 409 and r.json()["error_code"] == 40902
    r = http.call("POST", f"/consumers/{group}", {"name": "c9", "format": "avro"})
    assert r.status == 422 and r.json()["error_code"] == 42204
    base = f"/consumers/{group}/instances/c1"
    r = http.call("POST", base + "/subscription", {"topics": [t]})
    assert r.status == 204 and r.body == b""
    assert http.call("GET", base + "/subscription").json() == {"topics": [t]}
    r = http.call("GET", base + "/records", headers={"Accept": JSONV2})
    assert r.status == 406 and r.json()["error_code"] == 40601
    got = _records(http, base, 10)
    assert sorted(base64.b64decode(x["value"]) for x in got) == sorted(values)
    assert {x["topic"] for x in got} == {t} and all(x["key"] is None for x in got)
    last = {p: max(x["offset"] for x in got if x["partition"] == p) for p in (0, 1)}
    assert last == {0: 4, 1: 4}
    # commit the last record consumed of partition 0 (REST Proxy commits offset + 1) ...
    r = http.call("POST", base + "/offsets", {"offsets": [{"topic": t, "partition": 0, "offset": 2}]})
    assert r.status == 204
    r = http.call("GET", base + "/offsets", {"partitions": [{"topic": t, "partition": 0}]})
    assert r.status == 200 and r.json()["offsets"] == [{"topic": t, "partition": 0, "offset": 3, "metadata": ""}]
    # ... and without a body the positions: after everything fetched
    r = http.call("POST", base + "/offsets", ctype=V2)
    assert r.status == 204
    r = http.call("GET", base + "/offsets", {"partitions": [{"topic": t, "partition": 0},
                                                            {"topic": t, "partition": 1}]})
    assert [o["offset"] for o in r.json()["offsets"]] == [5, 5]
    # a Kafka client of the same group sees those commits
    c = Consumer({"bootstrap.servers": http.bootstrap, "group.id": group})
    try:
        committed = c.committed([TopicPartition(t, 0), TopicPartition(t, 1)], timeout=scaled(15))
    finally:
        c.close()
    assert [tp.offset for tp in committed] == [5, 5]
    r = http.call("DELETE", base)
    assert r.status == 204
    for method, path in (("DELETE", base), ("GET", base + "/records"), ("POST", base + "/offsets")):
        r = http.call(method, path, headers={"Accept": BINARY})
        assert r.status == 404 and r.json()["error_code"] == 40403, (method, path, r)
    # a new instance of the group starts at the committed offsets
    http.call("POST", f"/consumers/{group}", {"name": "c2", "format": "binary", "auto.offset.reset": "earliest"})
    http.call("POST", f"/topics/{t}/partitions/1", {"records": [{"value": b64(b"later")}]}, ctype=BINARY)
    base2 = f"/consumers/{group}/instances/c2"
    http.call("POST", base2 + "/subscription", {"topics": [t]})
    got = _records(http, base2, 1)
    assert [(x["partition"], x["offset"], base64.b64decode(x["value"])) for x in got] == [(1, 5, b"later")]
    http.call("DELETE", base2)


def test_a_kafka_commit_is_where_a_rest_consumer_starts(http):
    t = http.create_topic(1)
    group = "kafka-first-" + t
    http.call("POST", f"/topics/{t}", {"records": [{"value": i} for i in range(6)]}, ctype=JSONV2)
    c = Consumer({"bootstrap.servers": http.bootstrap, "group.id": group})
    try:
        c.commit(offsets=[TopicPartition(t, 0, 4)], asynchronous=False)
    finally:
        c.close()
    http.call("POST", f"/consumers/{group}", {"name": "j", "format": "json", "auto.offset.reset": "earliest"})
    base = f"/consumers/{group}/instances/j"
    http.call("POST", base + "/subscription", {"topics": [t]})
    got = _records(http, base, 2, accept=JSONV2)
    assert [(x["offset"], x["value"]) for x in got] == [(4, 4), (5, 5)]
    http.call("DELETE", base)


def test_assignments_positions_and_seeks(http):
    t = http.create_topic(2)
    group = "assign-" + t
    http.call("POST", f"/topics/{t}/partitions/1", {"records": [{"value": i} for i in range(5)]}, ctype=JSONV2)
    http.call("POST", f"/consumers/{group}", {"name": "a", "format": "json"})
    base = f"/consumers/{group}/instances/a"
    r = http.call("POST", base + "/assignments", {"partitions": [{"topic": t, "partition": 1}]})
    assert r.status == 204
    assert http.call("GET", base + "/assignments").json() == {"partitions": [{"topic": t, "partition": 1}]}
    r = http.call("POST", base + "/subscription", {"topics": [t]})
    assert r.status == 409 and r.json()["error_code"] == 40903
    r = http.call("POST", base + "/assignments", {"partitions": [{"topic": t, "partition": 7}]})
    assert r.status == 404 and r.json()["error_code"] == 40402
    r = http.call("POST", base + "/assignments", {"partitions": [{"topic": "nope-x", "partition": 0}]})
    assert r.status == 404 and r.json()["error_code"] == 40401
    r = http.call("POST", base + "/positions/beginning", {"partitions": [{"topic": t, "partition": 1}]})
    assert r.status == 204
    got = _records(http, base, 5, accept=JSONV2)
    assert [x["value"] for x in got] == [0, 1, 2, 3, 4]
    r = http.call("POST", base + "/positions", {"offsets": [{"topic": t, "partition": 1, "offset": 3}]})
    assert r.status == 204
    got = _records(http, base, 2, accept=JSONV2)
    assert [x["offset"] for x in got] == [3, 4]
    r = http.call("POST", base + "/positions/end", {"partitions": [{"topic": t, "partition": 1}]})
    assert r.status == 204
    r = http.call("GET", base + "/records?timeout=0", headers={"Accept": JSONV2})
    assert r.status == 200 and r.json() == []
    r = http.call("POST", base + "/positions", {"offsets": [{"topic": t, "partition": 0, "offset": 0}]})
    assert r.status == 409 and r.json()["error_code"] == 40903  # not assigned
    r = http.call("POST", base + "/positions", raw=b"[", ctype=V2)
    assert r.status == 400 and r.json()["error_code"] == 400
    http.call("DELETE", base)


def test_two_instances_of_a_group_share_the_partitions(http):
    t = http.create_topic(4)
    group = "share-" + t
    for name in ("x", "y"):
        http.call("POST", f"/consumers/{group}", {"name": name, "format": "json", "auto.offset.reset": "earliest"})
        http.call("POST", f"/consumers/{group}/instances/{name}/subscription", {"topics": [t]})
    parts = [{p["partition"] for p in http.call("GET", f"/consumers/{group}/instances/{n}/assignments")
              .json()["partitions"]} for n in ("x", "y")]
    assert parts[0] | parts[1] == {0, 1, 2, 3} and not parts[0] & parts[1] and len(parts[0]) == 2
    for name in ("x", "y"):
        http.call("DELETE", f"/consumers/{group}/instances/{name}")


def test_idle_consumer_instances_expire(tight):
    group = "expire-" + tight.create_topic(1)
    r = tight.call("POST", f"/consumers/{group}", {"name": "old", "format": "binary"})
    assert r.status == 200
    # asking about the instance would keep it alive: watch the server's count instead
    wait_until(lambda: _instances(tight) == 0, 30, "the idle instance to expire")
    r = tight.call("GET", f"/consumers/{group}/instances/old/assignments")
    assert r.status == 404 and r.json()["error_code"] == 40403


def _instances(http) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for f in text_string_to_metric_families(http.call("GET", "/metrics").body.decode()):
        if f.name == "umlog_http_consumer_instances":
            return f.samples[0].value
    raise AssertionError("no umlog_http_consumer_instances")

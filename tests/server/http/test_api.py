"""``/api/`` of a real ``umlog serve``: topics, messages and search, consumer groups (lag,
members, resets refused while a Kafka consumer is in the group), dead letters (a share
consumer's rejections, why each died, redrive one and all exactly once), share groups,
webhooks, MQTT sessions, throughput, and the console's files."""

from __future__ import annotations

import base64
import json
import uuid
from importlib import resources

import pytest
from confluent_kafka import Consumer, TopicPartition
from helpers import scaled, wait_until

from server.kafka.serve_process import ServeProcess

from .conftest import Http

SESSION_MS = int(scaled(10) * 1000)  # tests/README.md rule 8


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def produce(http, topic: str, n: int, partition: int | None = None, key=None, value=None) -> list[dict]:
    out = []
    for i in range(n):
        body = {"key": key if key is not None else f"k{i}", "value": value if value is not None else {"i": i}}
        if partition is not None:
            body["partition"] = partition
        r = http.call("POST", f"/api/topics/{topic}/messages", body, ctype="application/json")
        assert r.status == 200, r
        out.append(r.json())
    return out


def test_topics_create_list_configure_delete(http):
    t = name("api")
    r = http.call("POST", "/api/topics", {"name": t, "partitions": 3, "config": {"retention.ms": "3600000"}},
                  ctype="application/json")
    assert r.status == 201 and r.ctype == "application/json", r
    assert [p["partition"] for p in r.json()["partitions"]] == [0, 1, 2]
    assert r.json()["overrides"]["retention.ms"] == 3600000
    assert http.call("POST", "/api/topics", {"name": t}, ctype="application/json").status == 409
    produce(http, t, 3, partition=1)
    row = next(x for x in http.call("GET", "/api/topics").json() if x["name"] == t)
    assert row["partitions"] == 3 and row["records"] == 3 and row["bytes"] > 0
    d = http.call("GET", f"/api/topics/{t}").json()
    assert d["partitions"][1]["end_offset"] == 3 and d["partitions"][1]["bytes"] > 0
    r = http.call("PATCH", f"/api/topics/{t}", {"config": {"retention.ms": None, "max.message.bytes": "2000"},
                                                "partitions": 4}, ctype="application/json")
    assert r.status == 200, r
    assert "retention.ms" not in r.json()["overrides"] and r.json()["config"]["max.message.bytes"] == 2000
    assert len(r.json()["partitions"]) == 4
    for body, status in (({"config": {"segment.bytes": "x"}}, 422), ({"partitions": 2}, 422), ({}, 422)):
        r = http.call("PATCH", f"/api/topics/{t}", body, ctype="application/json")
        assert r.status == status and "message" in r.json(), r
    assert http.call("POST", "/api/topics", {"name": "bad name!"}, ctype="application/json").status == 422
    assert http.call("POST", "/api/topics", raw=b"{", ctype="application/json").status == 400
    assert http.call("DELETE", f"/api/topics/{t}").status == 200
    r = http.call("GET", f"/api/topics/{t}")
    assert r.status == 404 and r.json()["error_code"] == 40401
    assert http.call("DELETE", "/api/topics/__consumer_offsets").status in (404, 409)


def test_browse_by_partition_offset_and_time(http):
    t = name("browse")
    http.call("POST", "/api/topics", {"name": t, "partitions": 2}, ctype="application/json")
    first = produce(http, t, 5, partition=0)
    stamp = http.call("GET", f"/api/topics/{t}/messages?partition=0&offset=3&limit=1").json()["records"][0]
    produce(http, t, 2, partition=1)
    r = http.call("GET", f"/api/topics/{t}/messages?partition=0&offset=2&limit=2")
    body = r.json()
    assert [x["offset"] for x in body["records"]] == [2, 3] and body["partitions"][0]["next"] == 4
    assert body["records"][0]["value"] == '{"i":2}' and body["records"][0]["key"] == "k2"
    assert [x["offset"] for x in http.call("GET", f"/api/topics/{t}/messages?partition=0&limit=2").json()[
        "records"]] == [3, 4]  # from the end by default
    r = http.call("GET", f"/api/topics/{t}/messages?partition=0&time={stamp['timestamp']}")
    assert r.json()["records"][0]["offset"] <= 3 <= r.json()["records"][-1]["offset"]
    everything = http.call("GET", f"/api/topics/{t}/messages?from=beginning").json()
    assert len(everything["records"]) == 7 and {p["partition"] for p in everything["partitions"]} == {0, 1}
    assert first[0] == {"topic": t, "partition": 0, "offset": 0}
    for q, status in (("partition=9", 404), ("offset=x", 400), ("from=middle", 400), ("time=yesterday", 400)):
        r = http.call("GET", f"/api/topics/{t}/messages?{q}")
        assert r.status == status and r.ctype == "application/json", (q, r)
    # binary values come back base64, and go in so
    raw = base64.b64encode(b"\x00\xff").decode()
    r = http.call("POST", f"/api/topics/{t}/messages", {"value": raw, "encoding": "base64", "partition": 1,
                                                       "headers": {"h": "dg=="}}, ctype="application/json")  # "v"
    got = http.call("GET", f"/api/topics/{t}/messages?partition=1&offset={r.json()['offset']}").json()["records"][0]
    assert got["value"] == raw and got["encoding"] == "base64" and got["headers"] == [["h", "v"]]


def test_search_by_key_substring_and_jmespath_bounded_by_the_scan_limit(http):
    t = name("search")
    http.call("POST", "/api/topics", {"name": t, "partitions": 2}, ctype="application/json")
    for i in range(40):
        http.call("POST", f"/api/topics/{t}/messages", {"key": f"c-{i % 4}", "value": {"amount": i, "note": f"n{i}"},
                                                       "partition": i % 2}, ctype="application/json")
    r = http.call("GET", f"/api/topics/{t}/search?key=c-1&limit=100").json()
    assert len(r["records"]) == 10 and {x["key"] for x in r["records"]} == {"c-1"} and r["done"]
    r = http.call("GET", f"/api/topics/{t}/search?contains=n3").json()  # n3, n30..n39
    assert sorted(json.loads(x["value"])["amount"] for x in r["records"]) == [3, *range(30, 40)]
    r = http.call("GET", "/api/topics/" + t + "/search?jmespath=" + "amount%20%3E%3D%20%6035%60").json()
    assert sorted(json.loads(x["value"])["amount"] for x in r["records"]) == [35, 36, 37, 38, 39]
    # the scan limit bounds the work; `after` goes on where it stopped
    r = http.call("GET", f"/api/topics/{t}/search?contains=amount&scan=10&limit=1000").json()
    assert r["scanned"] == 10 and len(r["records"]) == 10 and not r["done"]
    seen = len(r["records"])
    while not r["done"]:
        r = http.call("GET", f"/api/topics/{t}/search?contains=amount&scan=10&limit=1000&after={r['after']}").json()
        seen += len(r["records"])
    assert seen == 40
    r = http.call("GET", f"/api/topics/{t}/search?jmespath=amount%20%3E")
    assert r.status == 400 and "jmespath" in r.json()["message"]
    assert http.call("GET", f"/api/topics/{t}/search").status == 400


def test_group_lag_members_and_reset_refused_while_a_member_lives(http):
    t = name("lag")
    group = "g-" + t
    http.call("POST", "/api/topics", {"name": t, "partitions": 2}, ctype="application/json")
    produce(http, t, 10, partition=0)
    produce(http, t, 4, partition=1)
    c = Consumer({"bootstrap.servers": http.bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, "session.timeout.ms": SESSION_MS, "heartbeat.interval.ms": 500,
                  "client.id": "api-test"})
    try:
        c.subscribe([t])
        got = []
        wait_until(lambda: got.extend(m for m in [c.poll(0.2)] if m is not None and not m.error()) or len(got) >= 14,
                   30, "14 records")
        c.commit(offsets=[TopicPartition(t, 0, 6), TopicPartition(t, 1, 4)], asynchronous=False)
        g = wait_until(lambda: (b := http.call("GET", f"/api/groups/{group}").json())["members"] and b, 30,
                       "the live member")
        assert g["state"] == "Stable" and g["members"][0]["client_id"] == "api-test"
        assert g["members"][0]["kind"] == "kafka" and sorted(g["members"][0]["assignment"][t]) == [0, 1]
        rows = {r["partition"]: r for r in g["offsets"]}
        assert rows[0]["committed"] == 6 and rows[0]["lag"] == 4 and rows[0]["lag_seconds"] >= 0
        assert rows[1]["lag"] == 0 and rows[1]["lag_seconds"] == 0 and g["lag"] == 4
        listed = next(x for x in http.call("GET", "/api/groups").json() if x["group"] == group)
        assert listed["members"] == 1 and listed["lag"] == 4 and listed["topics"] == [t]
        r = http.call("POST", f"/api/groups/{group}/reset", {"to": "earliest"}, ctype="application/json")
        assert r.status == 409 and "inactive" in r.json()["message"], r
    finally:
        c.close()
    wait_until(lambda: not http.call("GET", f"/api/groups/{group}").json()["members"], 30, "the member gone")
    r = http.call("POST", f"/api/groups/{group}/reset", {"to": "earliest", "dry_run": True}, ctype="application/json")
    assert [(o["partition"], o["before"], o["offset"]) for o in r.json()["offsets"]] == [(0, 6, 0), (1, 4, 0)]
    assert http.call("GET", f"/api/groups/{group}").json()["lag"] == 4  # a dry run changes nothing
    r = http.call("POST", f"/api/groups/{group}/reset", {"to": "offset", "offset": 2, "topic": t, "partitions": [0]},
                  ctype="application/json")
    assert r.status == 200 and r.json()["offsets"] == [{"topic": t, "partition": 0, "before": 6, "offset": 2}]
    c = Consumer({"bootstrap.servers": http.bootstrap, "group.id": group})
    try:  # a Kafka client sees the reset
        got = c.committed([TopicPartition(t, 0), TopicPartition(t, 1)], timeout=scaled(15))
        assert [x.offset for x in got] == [2, 4]
    finally:
        c.close()
    ts = http.call("GET", f"/api/topics/{t}/messages?partition=0&offset=7&limit=1").json()["records"][0]["timestamp"]
    r = http.call("POST", f"/api/groups/{group}/reset", {"to": "time", "time": ts}, ctype="application/json")
    assert {o["partition"]: o["offset"] for o in r.json()["offsets"]}[0] <= 7
    r = http.call("POST", f"/api/groups/{group}/reset", {"to": "latest"}, ctype="application/json")
    assert http.call("GET", f"/api/groups/{group}").json()["lag"] == 0
    for body, status in (({"to": "sideways"}, 422), ({"to": "offset"}, 422), ({"to": "time", "time": "x"}, 400),
                         ({"to": "latest", "topic": "nope-" + t}, 404)):
        assert http.call("POST", f"/api/groups/{group}/reset", body, ctype="application/json").status == status, body
    assert http.call("GET", "/api/groups/no-such-group-" + t).status == 404
    assert http.call("POST", "/api/groups/no-such-group-" + t + "/reset", {"to": "latest"},
                     ctype="application/json").status == 404


def test_dead_letters_why_each_died_and_redrive_exactly_once(http):
    src, dlq = name("orders"), None
    dlq = src + ".dlq"
    http.call("POST", "/api/topics", {"name": src, "partitions": 1}, ctype="application/json")
    http.call("POST", "/api/topics", {"name": dlq, "partitions": 1}, ctype="application/json")
    for i in range(4):
        r = http.call("POST", f"/api/topics/{dlq}/messages", {
            "key": f"k{i}", "value": f"v{i}", "partition": 0,
            "headers": [["kafka_dlt-original-topic", src], ["kafka_dlt-exception-message", f"bad amount {i}"],
                        ["umlog-delivery-count", "5"], ["trace", "t"]]}, ctype="application/json")
        assert r.status == 200
    listed = next(x for x in http.call("GET", "/api/dead-letters").json() if x["topic"] == dlq)
    assert listed["not_redriven"] == 4 and listed["original_topics"] == [src]
    d = http.call("GET", f"/api/dead-letters/{dlq}").json()
    assert [x["reason"] for x in d["dead_letters"]] == [f"bad amount {i}" for i in range(4)]
    assert d["dead_letters"][0]["original_topic"] == src and d["dead_letters"][0]["delivery_count"] == 5
    assert d["dead_letters"][0]["headers"] == [["trace", "t"]] and d["partitions"][0]["next_to_redrive"] == 0
    # one: the next of its partition, and only that one
    r = http.call("POST", f"/api/dead-letters/{dlq}/redrive", {"partition": 0, "offset": 2}, ctype="application/json")
    assert r.status == 409 and "next" in r.json()["message"], r
    r = http.call("POST", f"/api/dead-letters/{dlq}/redrive", {"partition": 0, "offset": 0}, ctype="application/json")
    assert r.status == 200 and r.json()["appended"] == 1 and r.json()["targets"] == {src: 1}, r
    r = http.call("POST", f"/api/dead-letters/{dlq}/redrive", {"partition": 0, "offset": 0}, ctype="application/json")
    assert r.status == 409 and "already" in r.json()["message"]
    d = http.call("GET", f"/api/dead-letters/{dlq}").json()
    assert [x["redriven"] for x in d["dead_letters"]] == [True, False, False, False]
    # all: the rest, once; a second time finds nothing to do
    assert http.call("POST", f"/api/dead-letters/{dlq}/redrive").json()["appended"] == 3
    assert http.call("POST", f"/api/dead-letters/{dlq}/redrive").json()["read"] == 0
    back = http.call("GET", f"/api/topics/{src}/messages?from=beginning").json()["records"]
    assert [(x["key"], x["value"]) for x in back] == [(f"k{i}", f"v{i}") for i in range(4)]
    assert all(x["headers"] == [["trace", "t"]] for x in back)
    assert http.call("POST", f"/api/dead-letters/{dlq}/redrive", {"partition": 3, "offset": 0},
                     ctype="application/json").status == 404
    assert http.call("GET", "/api/dead-letters/nope-" + src).status == 404


def test_share_groups_webhooks_and_no_mqtt(http):
    assert isinstance(http.call("GET", "/api/share-groups").json(), list)
    r = http.call("GET", "/api/share-groups/none-" + uuid.uuid4().hex)
    assert r.status == 404 and r.json()["error_code"] == 40403
    assert http.call("GET", "/api/webhooks").json() == []
    r = http.call("GET", "/api/mqtt/sessions")
    assert r.status == 404 and "MQTT" in r.json()["message"]
    assert http.call("GET", "/api/nothing/here").status == 404


def test_throughput_follows_the_end_offsets(http):
    t = name("rate")
    http.call("POST", "/api/topics", {"name": t, "partitions": 1}, ctype="application/json")
    http.call("GET", "/api/throughput")  # sampling starts with the first request

    def moving():
        produce(http, t, 5)
        s = http.call("GET", f"/api/throughput?topics={t}").json()["series"].get(t, [])
        return any(v > 0 for _, v in s) and s

    wait_until(moving, 30, "a throughput sample above zero", interval=0.2)


def test_console_files_ship_in_the_package_and_are_served(http):
    root = resources.files("umlog.server.http").joinpath("console")
    names = {f.name for f in root.iterdir()}
    assert {"index.html", "app.js", "style.css", "api.js", "util.js", "topics.js", "messages.js", "groups.js",
            "deliveries.js", "chart.js"} <= names
    r = http.call("GET", "/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert r.status == 200 and r.ctype == "text/html" and b'src="/console/app.js"' in r.body
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    for f in sorted(names):
        r = http.call("GET", f"/console/{f}")
        assert r.status == 200 and r.body == root.joinpath(f).read_bytes(), f
        if f.endswith(".js"):
            assert r.ctype == "text/javascript"
            assert "http://" not in r.body.decode() and "https://" not in r.body.decode(), f  # nothing from a CDN
    assert http.call("GET", "/console/nope.js").status == 404
    assert "endpoints" in http.call("GET", "/").json()  # anyone else still gets the JSON list


@pytest.mark.skipif(not hasattr(__import__("confluent_kafka"), "ShareConsumer"), reason="no ShareConsumer")
def test_a_share_consumers_rejections_are_dead_letters_with_their_reason(tmp_path):
    from confluent_kafka import AcknowledgeType, ShareConsumer

    s = ServeProcess(str(tmp_path / "data"), "--share-auto-offset-reset", "earliest", "--share-dead-letter",
                     "{group}.dlq", "--share-heartbeat-interval-ms", "500", "--mqtt", "127.0.0.1:0")
    try:
        http = Http(s)
        t, group = name("jobs"), name("workers")
        http.call("POST", "/api/topics", {"name": t, "partitions": 1}, ctype="application/json")
        produce(http, t, 3, partition=0)
        c = ShareConsumer({"bootstrap.servers": s.bootstrap, "group.id": group,
                           "share.acknowledgement.mode": "explicit"})
        try:
            c.subscribe([t])
            seen = []

            def poll():
                for m in c.poll(0.2):
                    if m.error() is None:
                        c.acknowledge(m, AcknowledgeType.REJECT if m.offset() == 1 else AcknowledgeType.ACCEPT)
                        seen.append(m.offset())
                return len(seen) >= 3

            wait_until(poll, 30, "3 share records")
            c.commit_sync(scaled(30))
            sg = wait_until(lambda: (r := http.call("GET", f"/api/share-groups/{group}")).status == 200
                            and r.json()["partitions"][0]["start_offset"] == 3 and r.json(), 30,
                            "the share group settled")
            assert sg["group"] == group and sg["unacked"] == 0
            assert any(x["group"] == group for x in http.call("GET", "/api/share-groups").json())
        finally:
            c.close()
        dlq = group + ".dlq"
        d = wait_until(lambda: (r := http.call("GET", f"/api/dead-letters/{dlq}")).status == 200
                       and r.json()["dead_letters"] and r.json(), 30, "the dead letter")
        x = d["dead_letters"][0]
        assert (x["original_topic"], x["original_partition"], x["original_offset"]) == (t, 0, 1)
        assert x["reason"] and x["group"] == group
        # the MQTT door runs here: its sessions are listed
        assert http.call("GET", "/api/mqtt/sessions").json() == []
    finally:
        assert s.stop() == 0, s.stderr_text()


def test_bodies_are_json_whatever_the_content_type_says(http):
    t = name("curl")
    r = http.call("POST", "/api/topics", raw=json.dumps({"name": t}).encode(),
                  ctype="application/x-www-form-urlencoded")  # what curl -d sends
    assert r.status == 201, r
    for raw, status in ((b"[1]", 422), (b"{", 400), (b"", 422)):
        r = http.call("POST", "/api/topics", raw=raw, ctype="application/x-www-form-urlencoded")
        assert r.status == status and r.ctype == "application/json", (raw, r)

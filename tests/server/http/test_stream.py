"""Live push from the HTTP door: Server-Sent Events read, dropped and resumed with
``Last-Event-ID`` (nothing lost, nothing repeated), groups, formats, WebSocket read and
produce, and a reader too slow for its buffer being dropped."""

from __future__ import annotations

import asyncio
import base64
import json
import socket

import aiohttp
from confluent_kafka import Consumer, TopicPartition
from helpers import scaled, wait_until

from .conftest import BINARY, JSONV2


async def sse_events(url: str, n: int, headers: dict | None = None) -> list[tuple[str, str]]:
    """The first ``n`` events of an SSE stream as (id, data); the connection then closes."""
    out: list[tuple[str, str]] = []
    async with aiohttp.ClientSession() as s:
        async with s.get(url, headers=headers or {}) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream"), r.status
            ev_id, data = None, []
            while len(out) < n:
                line = (await asyncio.wait_for(r.content.readline(), scaled(20))).decode().rstrip("\n")
                if line == "":
                    if data:
                        out.append((ev_id, "\n".join(data)))
                    ev_id, data = None, []
                elif line.startswith(":"):
                    continue
                elif line.startswith("id: "):
                    ev_id = line[4:]
                elif line.startswith("data: "):
                    data.append(line[6:])
    return out


def produce(http, topic: str, records: list[dict], ctype=JSONV2) -> list[dict]:
    r = http.call("POST", f"/topics/{topic}", {"records": records}, ctype=ctype)
    assert r.status == 200, r
    return r.json()["offsets"]


def test_sse_reads_disconnects_and_resumes_without_loss_or_repeat(http):
    t = http.create_topic(3)
    produce(http, t, [{"value": i, "partition": i % 3} for i in range(12)])
    first = asyncio.run(sse_events(http.url(f"/topics/{t}/events?from=beginning"), 5))
    produce(http, t, [{"value": i, "partition": i % 3} for i in range(12, 20)])
    rest = asyncio.run(sse_events(http.url(f"/topics/{t}/events?from=end"), 15,
                                  headers={"Last-Event-ID": first[-1][0]}))
    seen = [(json.loads(d)["partition"], json.loads(d)["offset"]) for _, d in first + rest]
    assert len(seen) == len(set(seen)) == 20
    assert sorted(int(json.loads(d)["value"]) for _, d in first + rest) == list(range(20))
    # an event is its record: topic, partition, offset, timestamp, key, value, headers; id partition-offset
    ev_id, data = first[0]
    rec = json.loads(data)
    assert set(rec) == {"topic", "partition", "offset", "timestamp", "key", "value", "headers"}
    assert ev_id.split(",")[0] == f"{rec['partition']}-{rec['offset']}" and rec["topic"] == t


def test_sse_from_offsets_times_partitions_and_formats(http):
    t = http.create_topic(2)
    produce(http, t, [{"value": base64.b64encode(v).decode(), "partition": 0}
                      for v in (b"a\nb", b"\xff\xfe", b"c")], ctype=BINARY)
    produce(http, t, [{"value": "p1", "partition": 1}])
    url = http.url(f"/topics/{t}/events?partition=0&from=1")
    ((i, d),) = asyncio.run(sse_events(url, 1))
    rec = json.loads(d)
    assert i == "0-1" and rec["encoding"] == "base64" and base64.b64decode(rec["value"]) == b"\xff\xfe"
    evs = asyncio.run(sse_events(http.url(f"/topics/{t}/events?partition=0&from=beginning&format=text"), 3))
    assert [d for _, d in evs] == ["a\nb", "\ufffd\ufffd", "c"] and [i for i, _ in evs] == ["0-0", "0-1", "0-2"]
    evs = asyncio.run(sse_events(http.url(f"/topics/{t}/events?partition=0&from=2&format=base64"), 1))
    assert evs == [("0-2", base64.b64encode(b"c").decode())]
    evs = asyncio.run(sse_events(http.url(f"/topics/{t}/events?partition=1&from=2000-01-01T00:00:00Z"), 1))
    assert json.loads(evs[0][1])["value"] == '"p1"'
    for q, status, code in (("?from=soon", 400, 400), ("?partition=5", 404, 40402), ("?format=xml", 400, 400)):
        r = http.call("GET", f"/topics/{t}/events{q}")
        assert r.status == status and r.json()["error_code"] == code, (q, r)
    r = http.call("GET", "/topics/no-such/events")
    assert r.status == 404 and r.json()["error_code"] == 40401
    r = http.call("GET", f"/topics/{t}/events", headers={"Last-Event-ID": "garbage"})
    assert r.status == 400 and r.json()["error_code"] == 400


def test_sse_waits_for_appends_from_any_door(http):
    """A stream from the end is woken by a Kafka produce (the hub's waiters, no polling)."""
    t = http.create_topic(1)
    evs = asyncio.run(_first_event_after_connect(http, t))
    assert json.loads(evs[1])["value"] == "from-kafka"


async def _first_event_after_connect(http, t: str):
    """Open the stream, wait for its first comment (connected), then produce through Kafka."""
    from confluent_kafka import Producer

    async with aiohttp.ClientSession() as s:
        async with s.get(http.url(f"/topics/{t}/events")) as r:
            assert (await asyncio.wait_for(r.content.readline(), scaled(20))).startswith(b":")
            p = Producer({"bootstrap.servers": http.bootstrap})
            await asyncio.to_thread(lambda: (p.produce(t, b"from-kafka"), p.flush(scaled(15))))
            ev_id, data = None, None
            while data is None:
                line = (await asyncio.wait_for(r.content.readline(), scaled(20))).decode().rstrip("\n")
                if line.startswith("id: "):
                    ev_id = line[4:]
                elif line.startswith("data: "):
                    data = line[6:]
            return ev_id, data


def test_sse_group_resumes_from_and_commits_the_groups_offsets(http):
    t = http.create_topic(1)
    group = "sse-" + t
    produce(http, t, [{"value": i} for i in range(6)])
    url = http.url(f"/topics/{t}/events?group={group}&from=beginning")
    evs = asyncio.run(sse_events(url, 4))
    assert [json.loads(d)["offset"] for _, d in evs] == [0, 1, 2, 3]

    def committed():
        c = Consumer({"bootstrap.servers": http.bootstrap, "group.id": group})
        try:
            return c.committed([TopicPartition(t, 0)], timeout=scaled(15))[0].offset
        finally:
            c.close()

    # what was written to the connection (one batch of all 6) is committed, not only what the client parsed
    wait_until(lambda: committed() == 6, 20, "the group's commit")
    produce(http, t, [{"value": 6}])
    evs = asyncio.run(sse_events(url, 1))
    assert json.loads(evs[0][1])["offset"] == 6


def test_websocket_reads_and_produces(http):
    t = http.create_topic(2)
    produce(http, t, [{"value": "old", "partition": 0}])

    async def run():
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(http.url(f"/topics/{t}/ws?from=beginning")) as ws:
                first = json.loads((await ws.receive(timeout=scaled(20))).data)
                await ws.send_str(json.dumps({"id": 7, "produce": [
                    {"key": "k", "value": "hello", "partition": 1, "headers": [["h", "v"]]},
                    {"value": base64.b64encode(b"\xff\x01").decode(), "encoding": "base64", "partition": 1}]}))
                await ws.send_str("not json")
                await ws.send_str(json.dumps({"produce": {"value": "x", "partition": 9}}))
                frames = []
                while len(frames) < 5:
                    frames.append(json.loads((await ws.receive(timeout=scaled(20))).data))
                return first, frames

    first, frames = asyncio.run(run())
    assert first["value"] == '"old"' and first["offset"] == 0 and first["partition"] == 0
    acks = [f for f in frames if "produced" in f]
    errors = [f for f in frames if "error" in f]
    records = [f for f in frames if "offset" in f]
    assert acks == [{"produced": [{"partition": 1, "offset": 0}, {"partition": 1, "offset": 1}], "id": 7}]
    assert sorted(e["error"]["error_code"] for e in errors) == [400, 40402]
    assert [(r["key"], r["value"], r["headers"]) for r in records if r["offset"] == 0] == [("k", "hello", [["h", "v"]])]
    assert [(r.get("encoding"), base64.b64decode(r["value"])) for r in records if r["offset"] == 1] == \
        [("base64", b"\xff\x01")]


def test_a_reader_that_does_not_keep_up_is_dropped(tight):
    """Stream buffer 4 KiB: a client that never reads is dropped; producing goes on."""
    t = tight.create_topic(1)
    host, port = tight.server.addresses["http"]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, port))
    sock.sendall(f"GET /topics/{t}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    try:
        def drops() -> float:
            from prometheus_client.parser import text_string_to_metric_families

            for f in text_string_to_metric_families(tight.call("GET", "/metrics").body.decode()):
                if f.name == "umlog_http_stream_drops":
                    return f.samples[0].value
            return 0.0

        before = drops()
        chunk = [{"value": "x" * 10_000}] * 5

        def produced_and_dropped():
            produce(tight, t, chunk)  # every produce is answered: the log is never held back
            return drops() > before

        wait_until(produced_and_dropped, 60, "the slow reader to be dropped")
    finally:
        sock.close()
    assert tight.server.alive()

"""Share groups through the Kafka door with confluent-kafka's ShareConsumer (KIP-932,
librdkafka 2.16) against a real ``umlog serve``: implicit and explicit
acknowledgement, release and reject, a consumer process SIGKILLed with records
held, and competing consumer processes on one queue. (kafka-python and aiokafka
have no share consumer.)"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import uuid

import pytest
from helpers import scaled, subprocess_env, wait_until

from .serve_process import ServeProcess

confluent_kafka = pytest.importorskip("confluent_kafka")
if not hasattr(confluent_kafka, "ShareConsumer"):
    pytest.skip("confluent-kafka without ShareConsumer (2.16+)", allow_module_level=True)

from confluent_kafka import AcknowledgeType, Consumer, Producer, ShareConsumer  # noqa: E402

# A failing test prints librdkafka's share-fetch log (acquired ranges, session
# resets) and the server's log: which delivery came from which response.
# (These tests once failed only on a loaded machine, where the producer split
# the values into several batches and ShareFetch sent the later ones twice;
# test_share_fetch_protocol.py has that case frame by frame.)

CHILD = os.path.join(os.path.dirname(__file__), "share_consumer_child.py")
LOCK_MS = int(scaled(3) * 1000)  # short locks: a killed consumer's records come back soon


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ServeProcess(str(tmp_path_factory.mktemp("share") / "data"), "--share-auto-offset-reset", "earliest",
                     "--share-record-lock-duration-ms", str(LOCK_MS), "--share-dead-letter", "{group}.dlq",
                     "--share-heartbeat-interval-ms", "500", verbose=2)
    yield s
    s.stop()


def names(prefix: str) -> tuple[str, str]:
    u = uuid.uuid4().hex[:8]
    return f"{prefix}-{u}", f"{prefix}-g-{u}"


def produce(bootstrap: str, topic: str, values, partitions: int | None = None, batch: int | None = None) -> None:
    """Append ``values`` (idempotent: a produce retried on a loaded machine never
    writes a value twice); ``batch``: flush after every that many, so the log
    stores them in several batches, as a loaded producer does."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    for i, v in enumerate(values):
        if partitions:
            p.produce(topic, value=v, partition=i % partitions)
        else:
            p.produce(topic, value=v)
        if batch and (i + 1) % batch == 0:
            assert p.flush(scaled(30)) == 0
    assert p.flush(scaled(30)) == 0


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    a = AdminClient({"bootstrap.servers": bootstrap})
    a.create_topics([NewTopic(topic, partitions)])[topic].result(scaled(30))


def share_consumer(bootstrap: str, group: str, topic: str, mode: str = "implicit") -> ShareConsumer:
    """A subscribed ShareConsumer whose share-fetch log (acquired ranges, session
    resets: librdkafka's ``fetch`` debug context) goes to ``CLIENT_LOG``."""
    c = ShareConsumer({"bootstrap.servers": bootstrap, "group.id": group, "share.acknowledgement.mode": mode,
                       "debug": "fetch", "logger": CLIENT_LOG})
    c.subscribe([topic])
    return c


CLIENT_LOG = logging.getLogger("share-consumer-client")
CLIENT_LOG.propagate = False


@pytest.fixture(autouse=True)
def client_log(request):
    """librdkafka's share-fetch log of the test, printed (shown only when the test
    fails) with the server's log: which delivery came from which response."""
    servers = [request.getfixturevalue(n) for n in ("server", "queue_server") if n in request.fixturenames]
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: lines.append(r.getMessage())
    CLIENT_LOG.addHandler(handler)
    CLIENT_LOG.setLevel(logging.DEBUG)
    yield
    CLIENT_LOG.removeHandler(handler)
    wanted = ("Acquired Records", "SHARESESSION", "reply error", "Resetting", "Disconnected", "AcknowledgementError")
    print("\n".join(x for x in lines if any(w in x for w in wanted)))
    for s in servers:
        print(s.stderr_text())


def poll_until(c: ShareConsumer, done, timeout: float = 30.0, each=None) -> list:
    """Poll until ``done(records so far)``; each record is (partition, offset, delivery count, value)."""
    got: list = []

    def step():
        for m in c.poll(0.2):
            assert m.error() is None, m.error()
            got.append((m.partition(), m.offset(), m.delivery_count(), m.value()))
            if each is not None:
                each(c, m)
        return done(got)

    wait_until(step, timeout, "share consumer records", interval=0)
    return got


def describe(data_dir: str, group: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "umlog", "share-groups", "describe", group, "--data-dir", data_dir,
                          "--json"], capture_output=True, text=True, env=subprocess_env(), timeout=scaled(60))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_implicit_mode_accepts_what_was_polled(server):
    topic, group = names("implicit")
    produce(server.bootstrap, topic, [b"v%d" % i for i in range(50)], batch=9)  # one answer, several batches
    c = share_consumer(server.bootstrap, group, topic)
    try:
        got = poll_until(c, lambda g: len(g) >= 50)
        assert sorted(o for _, o, _, _ in got) == list(range(50))
        assert {dc for _, _, dc, _ in got} == {1}
        # the next poll accepted them (implicit mode); commit_sync sends what is left
        c.commit_sync(scaled(30))
    finally:
        c.close()
    produce(server.bootstrap, topic, [b"more"])  # a second consumer sees only the new record
    c = share_consumer(server.bootstrap, group, topic)
    try:
        got = poll_until(c, lambda g: len(g) >= 1)
        assert [(o, dc, v) for _, o, dc, v in got] == [(50, 1, b"more")]
    finally:
        c.close()


def test_explicit_release_redelivers_and_reject_dead_letters(server):
    topic, group = names("explicit")
    produce(server.bootstrap, topic, [b"ok-%d" % i for i in range(8)] + [b"retry", b"poison"], batch=3)
    c = share_consumer(server.bootstrap, group, topic, "explicit")
    kinds = {b"retry": AcknowledgeType.RELEASE, b"poison": AcknowledgeType.REJECT}
    seen: list = []

    def settle(c, m):
        seen.append(m.value())
        kind = kinds.get(m.value(), AcknowledgeType.ACCEPT)
        if m.value() == b"retry" and m.delivery_count() >= 2:
            kind = AcknowledgeType.ACCEPT
        c.acknowledge(m, kind)

    def done(got):
        if got:
            results = c.commit_sync(scaled(30))
            assert all(e is None for e in results.values()), results
        return any(v == b"retry" and dc == 2 for _, _, dc, v in got)

    try:
        got = poll_until(c, done, each=settle)
    finally:
        c.close()
    by_value = {}
    for _, o, dc, v in got:
        by_value.setdefault(v, []).append((o, dc))
    assert by_value[b"retry"] == [(8, 1), (8, 2)], got  # released: the same offset again, one delivery more
    assert by_value[b"poison"] == [(9, 1)]  # rejected: never again
    assert all(by_value[b"ok-%d" % i] == [(i, 1)] for i in range(8))
    # the rejected record is in the group's dead-letter topic, with Spring Kafka's headers
    d = Consumer({"bootstrap.servers": server.bootstrap, "group.id": f"dlq-{group}", "auto.offset.reset": "earliest"})
    d.subscribe([f"{group}.dlq"])
    try:
        msgs: list = []
        wait_until(lambda: msgs.extend(m for m in d.consume(10, 0.2) if m.error() is None) or msgs, 30,
                   "the dead letter")
        [m] = msgs
        headers = dict(m.headers())
        assert m.value() == b"poison" and headers["kafka_dlt-original-topic"] == topic.encode()
        assert headers["umlog-delivery-count"] == b"1"
    finally:
        d.close()


def read_lines(proc: subprocess.Popen, lines: list) -> threading.Thread:
    def run():
        for line in proc.stdout:
            lines.append(json.loads(line))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def child(server, group: str, topic: str, mode: str) -> tuple[subprocess.Popen, list]:
    proc = subprocess.Popen([sys.executable, CHILD, server.bootstrap, group, topic, mode], stdout=subprocess.PIPE,
                            text=True, env=subprocess_env(), cwd=os.path.dirname(server.data_dir))
    lines: list = []
    proc.reader = read_lines(proc, lines)
    return proc, lines


def reap(proc: subprocess.Popen) -> None:
    """Kill if still running, then wait and close its pipe."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(scaled(30))
    proc.reader.join(scaled(10))
    proc.stdout.close()


def test_a_killed_consumers_records_come_back(server):
    topic, group = names("killed")
    produce(server.bootstrap, topic, [b"k%d" % i for i in range(10)])
    proc, lines = child(server, group, topic, "hold")
    try:
        wait_until(lambda: any("held" in x for x in lines), 60, "the child holding records")
        held = {x["got"][1] for x in lines if "got" in x}
        assert held
    finally:
        proc.send_signal(signal.SIGKILL)
        reap(proc)
    c = share_consumer(server.bootstrap, group, topic)
    try:
        got = poll_until(c, lambda g: {o for _, o, _, _ in g} >= set(range(10)), timeout=60)
    finally:
        c.close()
    counts = {o: dc for _, o, dc, _ in got}
    assert all(counts[o] == 2 for o in held), counts  # the second delivery, once the killed one's connection closed
    # The rest were either never acquired, or acquired by the child's client in
    # the background (its fetches go on while the application holds a poll's
    # records) and never shown to it: a first or a second delivery.
    assert all(counts[o] in (1, 2) for o in set(range(10)) - held), counts
    assert len(got) == 10  # each once to the survivor


def test_close_and_kill_release_records_well_before_the_lock(tmp_path):
    """As Kafka: a consumer that closes (its share session ends) or dies (its
    connection goes) gives its records back at once, not after the 2-minute lock."""
    lock_s = 120
    s = ServeProcess(str(tmp_path / "data"), "--share-auto-offset-reset", "earliest",
                     "--share-record-lock-duration-ms", str(lock_s * 1000), verbose=2)
    try:
        topic, group = names("close")
        produce(s.bootstrap, topic, [b"c%d" % i for i in range(5)])
        c = share_consumer(s.bootstrap, group, topic, "explicit")
        try:
            first = c.poll(scaled(30))  # taken, never acknowledged
            assert first and all(m.error() is None for m in first)
        finally:
            c.close()
        proc, lines = child(s, group, topic, "hold")
        try:
            wait_until(lambda: any("held" in x for x in lines), lock_s / 2, "the child holding the records")
            held = {x["got"][1] for x in lines if "got" in x}
            assert held <= set(range(5)) and held
        finally:
            proc.send_signal(signal.SIGKILL)
            reap(proc)
        c = share_consumer(s.bootstrap, group, topic)
        try:
            got = poll_until(c, lambda g: {o for _, o, _, _ in g} >= set(range(5)), timeout=lock_s / 2)
        finally:
            c.close()
        counts = {o: dc for _, o, dc, _ in got}
        assert all(counts[o] >= 2 for o in held), counts  # delivered again after the killed one
        assert all(counts[m.offset()] >= 2 for m in first), counts
    finally:
        s.stop()


@pytest.fixture
def queue_server(tmp_path):
    s = ServeProcess(str(tmp_path / "data"), "--share-auto-offset-reset", "earliest",
                     "--share-heartbeat-interval-ms", "500")
    yield s
    s.stop()


def test_competing_consumer_processes_share_one_queue(queue_server):
    server = queue_server
    topic, group = "jobs", "workers"
    n = 1000
    create_topic(server.bootstrap, topic, 3)
    kids = [child(server, group, topic, "explicit") for _ in range(3)]
    try:
        wait_until(lambda: all(any("ready" in x for x in lines) for _, lines in kids), 60, "3 consumers ready")
        produce(server.bootstrap, topic, [b"job-%d" % i for i in range(n)], partitions=3)

        def acked():
            return sum(len(x["acked"]) for _, lines in kids for x in list(lines) if "acked" in x)

        wait_until(lambda: acked() >= n, 120, f"{n} records acked")
        for proc, _ in kids:
            proc.send_signal(signal.SIGTERM)
        for proc, lines in kids:
            assert proc.wait(scaled(60)) == 0
            wait_until(lambda lines=lines: any("closed" in x for x in lines), 10, "the child's last line")
    finally:
        for proc, _ in kids:
            reap(proc)
    errors = [x for _, lines in kids for x in lines if "error" in x]
    assert errors == []
    deliveries = [tuple(x["got"][:2]) for _, lines in kids for x in lines if "got" in x]
    acks = [tuple(a) for _, lines in kids for x in lines if "acked" in x for a in x["acked"]]
    everything = {(i % 3, i // 3) for i in range(n)}
    # every record delivered once (no lock expired: none went to two consumers), each acked exactly once
    assert len(deliveries) == n and set(deliveries) == everything
    assert len(acks) == n and set(acks) == everything
    per_consumer = [sum(1 for x in lines if "got" in x) for _, lines in kids]
    assert sum(per_consumer) == n
    print("records per consumer", per_consumer)
    server.stop()
    d = describe(server.data_dir, group)
    assert (d["unacked"], d["in_flight"]) == (0, 0)
    assert sorted((r["partition"], r["start_offset"]) for r in d["partitions"]) == [(p, n // 3 + (p < n % 3))
                                                                                   for p in range(3)]

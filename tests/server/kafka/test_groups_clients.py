"""Consumer groups end to end: a real ``umlog serve`` subprocess and real Kafka
clients (librdkafka through confluent-kafka and kcat, kafka-python, aiokafka).

The server's initial rebalance delay is 100 ms (``--group-initial-rebalance-delay-ms``)
so that rounds are quick; the session timeout is 10 s scaled by
UMLOG_TEST_TIME_SCALE, so that a member of a loaded machine that is slow to
heartbeat is not evicted by accident. Every wait is for an event (``wait_until``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
from helpers import scaled, subprocess_env, wait_until

import umlog

from .serve_process import ServeProcess

pytestmark = pytest.mark.clients

KCAT = shutil.which("kcat") or shutil.which("kafkacat")
SESSION_S = 10
SESSION_MS = int(scaled(SESSION_S) * 1000)
DELAY = ("--group-initial-rebalance-delay-ms", "100")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ServeProcess(str(tmp_path_factory.mktemp("groups") / "data"), "--default-partitions", "1", *DELAY)
    yield s
    rc = s.stop()
    assert rc == 0, s.stderr_text()
    assert "Traceback" not in s.stderr_text(), s.stderr_text()


def admin(server):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": server.bootstrap})


def create_topic(server, name, partitions):
    from confluent_kafka.admin import NewTopic

    a = admin(server)  # kept alive until the futures resolve
    for f in a.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)]).values():
        f.result()


def produce(server, topic, values, partitions):
    ck = pytest.importorskip("confluent_kafka")
    p = ck.Producer({"bootstrap.servers": server.bootstrap, "linger.ms": 2})
    for i, v in enumerate(values):
        p.produce(topic, value=v, partition=i % partitions)
    assert p.flush(scaled(30)) == 0


def committed_and_ends(server, group, topic, partitions):
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    a = admin(server)
    tps = [TopicPartition(topic, i) for i in range(partitions)]
    res = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)])[group].result()
    committed = {tp.partition: tp.offset for tp in res.topic_partitions}
    ends = {tp.partition: f.result().offset
            for tp, f in a.list_offsets({tp: OffsetSpec.latest() for tp in tps}).items()}
    return committed, ends


# --- three librdkafka consumers, one SIGKILLed ------------------------------------------------

MEMBER = r"""
import sys, time, json, signal
from confluent_kafka import Consumer, KafkaException
bootstrap, group, topic, strategy, out_path, session_ms = sys.argv[1:7]
out = open(out_path, "a", buffering=1)
def log(kind, **kw):
    out.write(json.dumps({"k": kind, "t": time.time(), **kw}) + "\n")
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
              "enable.auto.commit": False, "session.timeout.ms": int(session_ms), "heartbeat.interval.ms": 500,
              "partition.assignment.strategy": strategy, "topic.metadata.refresh.interval.ms": 2000})
held = set()
def on_assign(consumer, parts):
    held.update(p.partition for p in parts)
    log("assign", parts=sorted(held))
def on_revoke(consumer, parts):
    held.difference_update(p.partition for p in parts)
    log("revoke", parts=sorted(held))
c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
log("start")
while not stop:
    msgs = c.consume(500, 0.2)
    got = [m for m in msgs if m.error() is None]
    for m in got:
        log("m", p=m.partition(), o=m.offset(), v=m.value().decode())
    if got:
        try:
            c.commit(asynchronous=False)
        except KafkaException as e:  # a rebalance took the partitions: the next owner re-reads them
            log("commit_failed", e=str(e))
c.close()
log("closed")
"""


class Member:
    def __init__(self, server, group, topic, strategy, path, session_ms=SESSION_MS):
        self.path = path
        env = subprocess_env()
        self.proc = subprocess.Popen([sys.executable, "-c", MEMBER, server.bootstrap, group, topic, strategy, path,
                                      str(session_ms)],
                                     stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env,
                                     cwd=os.path.dirname(path))

    def events(self):
        try:
            with open(self.path) as f:
                return [json.loads(line) for line in f if line.endswith("\n")]
        except FileNotFoundError:
            return []

    def held(self):
        ev = [e for e in self.events() if e["k"] in ("assign", "revoke")]
        return set(ev[-1]["parts"]) if ev else set()

    def values(self):
        return [e["v"] for e in self.events() if e["k"] == "m"]

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(scaled(20))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky"])
def test_three_consumers_one_killed_the_others_take_over(server, tmp_path, strategy):
    pytest.importorskip("confluent_kafka")
    topic, group, n = f"six-{strategy}", f"fleet-{strategy}", 3000
    create_topic(server, topic, 6)
    # The victim's session is what the survivors wait out, so it is the shortest
    # that still has room; the survivors keep the longer one all along.
    victim_session_s = scaled(6)
    members = [Member(server, group, topic, strategy, str(tmp_path / f"m{i}.jsonl"),
                      session_ms=int(victim_session_s * 1000) if i == 0 else SESSION_MS) for i in range(3)]
    try:
        def balanced():
            helds = [m.held() for m in members]
            return all(len(h) == 2 for h in helds) and set().union(*helds) == set(range(6))

        wait_until(balanced, 30, "6 partitions spread 2/2/2 over 3 members")
        produce(server, topic, [f"a{i}" for i in range(n)], 6)
        wait_until(lambda: len(set().union(*(m.values() for m in members))) == n, 30, "the first half consumed")

        victim, survivors = members[0], members[1:]
        lost = victim.held()
        killed_at = time.time()
        victim.stop(signal.SIGKILL)
        produce(server, topic, [f"b{i}" for i in range(n)], 6)

        def taken_over():
            helds = [m.held() for m in survivors]
            return set().union(*helds) == set(range(6)) and not helds[0] & helds[1]

        wait_until(taken_over, 6 + 30, "the survivors to own all 6 partitions")
        took = max(e["t"] for m in survivors for e in m.events() if e["k"] == "assign") - killed_at
        # Evicted after its session, then one round (two for cooperative), not after
        # any further timeout.
        assert took < victim_session_s + scaled(10), took
        for m in survivors:
            assert len(m.held()) == 3
        assert lost <= set().union(*(m.held() for m in survivors))

        want = {f"a{i}" for i in range(n)} | {f"b{i}" for i in range(n)}
        wait_until(lambda: want <= set().union(*(set(m.values()) for m in members)), 30, "every record consumed")

        def all_committed():
            committed, ends = committed_and_ends(server, group, topic, 6)
            return committed == ends and sum(ends.values()) == 2 * n

        wait_until(all_committed, 20, "committed offsets == log end offsets")
        if strategy == "cooperative-sticky":
            # Incremental: the survivors only gained partitions, never gave theirs up.
            for m in survivors:
                assert not [e for e in m.events() if e["k"] == "revoke" and e["t"] > killed_at]
    finally:
        for m in members:
            m.stop()
    for m in members[1:]:
        assert any(e["k"] == "closed" for e in m.events())
    # Clean leaves: the group is Empty at once, not after a session timeout.
    a = admin(server)
    d = a.describe_consumer_groups([group])[group].result()
    assert d.state.name == "EMPTY" and not d.members


# --- kcat -G -------------------------------------------------------------------------------------


@pytest.mark.usefixtures("kcat_bin")  # skips on a laptop without kcat, fails in CI
def test_kcat_balanced_consumer_commits_and_resumes(server):
    create_topic(server, "kcat-g", 3)
    produce(server, "kcat-g", [f"x{i}" for i in range(30)], 3)

    def run():
        r = subprocess.run([KCAT, "-b", server.bootstrap, "-G", "kg", "kcat-g", "-e", "-f", "%s\n",
                            "-X", "auto.offset.reset=earliest", "-X", f"session.timeout.ms={SESSION_MS}"],
                           capture_output=True, timeout=scaled(60))
        assert r.returncode == 0, r.stderr.decode()
        return r.stdout.decode().split()

    assert sorted(run()) == sorted(f"x{i}" for i in range(30))
    produce(server, "kcat-g", [f"y{i}" for i in range(6)], 3)
    assert sorted(run()) == sorted(f"y{i}" for i in range(6))  # resumed from kcat's commits


# --- kafka-python and aiokafka ----------------------------------------------------------------------


def _drain_kp(consumer, seen, want, stop_at):
    while len(seen) < want and time.monotonic() < stop_at:
        for tp, records in consumer.poll(timeout_ms=200).items():
            for r in records:
                seen[r.value] = (tp.partition, r.offset)
    consumer.commit()


def test_kafka_python_two_members_split_commit_and_a_newcomer_resumes(server):
    kafka = pytest.importorskip("kafka")
    create_topic(server, "kp-g", 4)
    produce(server, "kp-g", [b"v%d" % i for i in range(400)], 4)
    conf = dict(bootstrap_servers=server.bootstrap, group_id="kpg", auto_offset_reset="earliest",
                enable_auto_commit=False, session_timeout_ms=SESSION_MS, heartbeat_interval_ms=500)
    a = kafka.KafkaConsumer("kp-g", **conf)
    b = kafka.KafkaConsumer("kp-g", **conf)
    seen_a, seen_b = {}, {}
    stop = time.monotonic() + scaled(40)
    ta = threading.Thread(target=lambda: _poll_until_split(a, seen_a, stop))
    tb = threading.Thread(target=lambda: _poll_until_split(b, seen_b, stop))
    ta.start(), tb.start()
    ta.join(), tb.join()
    pa = {tp.partition for tp in a.assignment()}
    pb = {tp.partition for tp in b.assignment()}
    assert pa and pb and not pa & pb and pa | pb == {0, 1, 2, 3}
    assert len({**seen_a, **seen_b}) == 400
    assert {p for p, _ in seen_a.values()} <= pa and {p for p, _ in seen_b.values()} <= pb
    a.close()
    b.close()
    produce(server, "kp-g", [b"w%d" % i for i in range(40)], 4)
    c = kafka.KafkaConsumer("kp-g", **conf)
    seen_c = {}
    _drain_kp(c, seen_c, 40, time.monotonic() + scaled(30))
    c.close()
    assert set(seen_c) == {b"w%d" % i for i in range(40)}  # only what came after the commits


def _poll_until_split(consumer, seen, stop_at):
    """Poll until the group has settled on two members and this one has read its share."""
    while time.monotonic() < stop_at:
        for tp, records in consumer.poll(timeout_ms=200).items():
            for r in records:
                seen[r.value] = (tp.partition, r.offset)
        mine = {tp.partition for tp in consumer.assignment()}
        if len(mine) == 2 and {p for p, _ in seen.values()} == mine and len(seen) == 200:
            consumer.commit()
            return


async def test_aiokafka_two_members_split_commit_and_a_newcomer_resumes(server):
    aiokafka = pytest.importorskip("aiokafka")
    topic = f"aio-g-{uuid.uuid4().hex[:8]}"  # runs once per event loop kind
    create_topic(server, topic, 4)
    produce(server, topic, [b"v%d" % i for i in range(400)], 4)
    conf = dict(bootstrap_servers=server.bootstrap, group_id=topic, auto_offset_reset="earliest",
                enable_auto_commit=False, session_timeout_ms=SESSION_MS, heartbeat_interval_ms=500)
    a = aiokafka.AIOKafkaConsumer(topic, **conf)
    b = aiokafka.AIOKafkaConsumer(topic, **conf)
    await a.start()
    await b.start()
    seen = {a: {}, b: {}}

    async def run(c):
        deadline = time.monotonic() + scaled(40)
        while time.monotonic() < deadline:
            batch = await c.getmany(timeout_ms=200)
            for tp, records in batch.items():
                for r in records:
                    seen[c][r.value] = tp.partition
            mine = {tp.partition for tp in c.assignment()}
            if len(mine) == 2 and set(seen[c].values()) == mine and len(seen[c]) == 200:
                await c.commit()
                return

    await asyncio.gather(run(a), run(b))
    pa = {tp.partition for tp in a.assignment()}
    pb = {tp.partition for tp in b.assignment()}
    assert not pa & pb and pa | pb == {0, 1, 2, 3}
    assert len({**seen[a], **seen[b]}) == 400
    await a.stop()
    await b.stop()
    produce(server, topic, [b"w%d" % i for i in range(40)], 4)
    c = aiokafka.AIOKafkaConsumer(topic, **conf)
    await c.start()
    got = set()
    deadline = time.monotonic() + scaled(30)
    while len(got) < 40 and time.monotonic() < deadline:
        for records in (await c.getmany(timeout_ms=200)).values():
            got.update(r.value for r in records)
    await c.commit()
    await c.stop()
    assert got == {b"w%d" % i for i in range(40)}


# --- admin ------------------------------------------------------------------------------------------


def test_admin_lists_and_describes_the_group_with_its_members(server):
    ck = pytest.importorskip("confluent_kafka")
    create_topic(server, "adm-g", 2)
    produce(server, "adm-g", [b"x"] * 10, 2)
    conf = {"bootstrap.servers": server.bootstrap, "group.id": "admg", "session.timeout.ms": SESSION_MS,
            "heartbeat.interval.ms": 500, "auto.offset.reset": "earliest", "client.id": "adm-client"}
    cs = [ck.Consumer(conf) for _ in range(2)]
    try:
        for c in cs:
            c.subscribe(["adm-g"])
        deadline = time.monotonic() + scaled(30)
        while time.monotonic() < deadline and not all(len(c.assignment()) == 1 for c in cs):
            for c in cs:
                c.poll(0.1)
        assert all(len(c.assignment()) == 1 for c in cs)
        a = admin(server)
        listed = {g.group_id: g for g in a.list_consumer_groups().result().valid}
        assert "admg" in listed and listed["admg"].state.name == "STABLE"
        assert not listed["admg"].is_simple_consumer_group
        d = a.describe_consumer_groups(["admg"])["admg"].result()
        assert d.state.name == "STABLE" and d.partition_assignor == "range"
        assert len(d.members) == 2
        assert {m.client_id for m in d.members} == {"adm-client"}
        assert all(m.host == "/127.0.0.1" for m in d.members)
        owned = sorted(tp.partition for m in d.members for tp in m.assignment.topic_partitions)
        assert owned == [0, 1]
        # Not while it has members.
        with pytest.raises(ck.KafkaException):
            a.delete_consumer_groups(["admg"])["admg"].result()
        # The CLI against the server: members, assignments, offsets.
        out = subprocess.run([sys.executable, "-m", "umlog", "groups", "describe", "admg", "--bootstrap",
                              server.bootstrap, "--json"], capture_output=True, timeout=scaled(60),
                             env=subprocess_env(), cwd=str(os.path.dirname(server.data_dir)))
        assert out.returncode == 0, out.stderr.decode()
        desc = json.loads(out.stdout)
        assert desc["state"] == "Stable" and len(desc["members"]) == 2
        assert sorted(tuple(tp) for m in desc["members"] for tp in m["assignment"]) == [("adm-g", 0), ("adm-g", 1)]
    finally:
        for c in cs:
            c.close()
    a = admin(server)
    assert a.delete_consumer_groups(["admg"])["admg"].result() is None
    assert "admg" not in {g.group_id for g in a.list_consumer_groups().result().valid}


# --- the embedded API and Kafka clients share one set of offsets ---------------------------------------


def _consume_ck(bootstrap, group, topic, want, timeout=30):
    """Up to ``want`` records, or what came within ``timeout`` (scaled) seconds."""
    import confluent_kafka as ck

    c = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "latest",
                     "enable.auto.commit": False, "session.timeout.ms": SESSION_MS})
    c.subscribe([topic])
    got = []
    deadline = time.monotonic() + scaled(timeout)
    while len(got) < want and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is not None and m.error() is None:
            got.append((m.partition(), m.offset(), m.value()))
    c.commit(asynchronous=False)
    c.close()
    return got


def test_embedded_commits_and_kafka_commits_are_one_set_of_offsets(tmp_path):
    pytest.importorskip("confluent_kafka")
    data = str(tmp_path / "data")
    with umlog.open(data) as b:
        t = b.create_topic("shared", partitions=2)
        for p in range(2):
            t.append_many([b"%d-%d" % (p, i) for i in range(100)], partition=p)
        b.group("g").commit("shared", 0, 30)
        b.group("g").commit("shared", 1, 40)
    s = ServeProcess(data, *DELAY)
    try:
        got = _consume_ck(s.bootstrap, "g", "shared", 130)
    finally:
        assert s.stop() == 0, s.stderr_text()
    firsts = {p: min(o for q, o, _ in got if q == p) for p in (0, 1)}
    assert firsts == {0: 30, 1: 40}  # where the embedded commits said, not "latest"
    assert len(got) == 130
    with umlog.open(data) as b:
        g = b.group("g")
        assert g.committed_all() == {("shared", 0): 100, ("shared", 1): 100}  # the Kafka client's commits
        b.topic("shared").append_many([b"new"] * 5, partition=1)
        assert [(r.partition, r.offset) for r in b.consume("shared", group="g")] == [(1, o) for o in range(100, 105)]
        assert g.lag() == {("shared", 0): 0, ("shared", 1): 0}


def test_server_restart_keeps_offsets_and_members_rejoin(tmp_path):
    ck = pytest.importorskip("confluent_kafka")
    data = str(tmp_path / "data")
    s = ServeProcess(data, *DELAY)
    port = s.port
    try:
        create_topic(s, "rs", 2)
        produce(s, "rs", [b"a%d" % i for i in range(100)], 2)
        c = ck.Consumer({"bootstrap.servers": s.bootstrap, "group.id": "rsg", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, "session.timeout.ms": SESSION_MS,
                         "heartbeat.interval.ms": 500, "reconnect.backoff.max.ms": 200})
        c.subscribe(["rs"])
        seen = []
        deadline = time.monotonic() + scaled(30)
        while len(seen) < 100 and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                seen.append(m.value())
        c.commit(asynchronous=False)
        # The CLI reads the data dir beside the running server (read-only, no lock).
        out = subprocess.run([sys.executable, "-m", "umlog", "groups", "describe", "rsg", "--data-dir", data,
                              "--json"], capture_output=True, timeout=scaled(60), cwd=str(tmp_path),
                             env=subprocess_env())
        assert out.returncode == 0, out.stderr.decode()
        assert {o["partition"]: o["committed"] for o in json.loads(out.stdout)["offsets"]} == {0: 50, 1: 50}
        assert s.stop() == 0, s.stderr_text()
        s = ServeProcess(data, *DELAY, "--kafka", f"127.0.0.1:{port}")
        produce(s, "rs", [b"b%d" % i for i in range(50)], 2)
        deadline = time.monotonic() + scaled(40)
        while len(seen) < 150 and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                seen.append(m.value())
        c.commit(asynchronous=False)
        c.close()
        assert sorted(seen) == sorted([b"a%d" % i for i in range(100)] + [b"b%d" % i for i in range(50)])
        committed, ends = committed_and_ends(s, "rsg", "rs", 2)
        assert committed == ends
    finally:
        assert s.stop() == 0, s.stderr_text()


# The coordinator's debug log (ServeProcess(verbose=2)).
TRANSITION = re.compile(r"group '(?P<g>[^']+)': (?P<old>\w+) -> (?P<new>\w+) \(\w+\), generation (?P<gen>\d+)")
REPLACED = re.compile(r"group 'staticg': static member '(i\d)' replaces .* \(protocols same, leader (True|False)")


def test_static_member_restarts_without_a_rebalance(tmp_path):
    """Kafka's rule: a static member that comes back (same ``group.instance.id``, no
    member id) within its session gets its old assignment, and the group does not
    rebalance, whether it was the leader or not. Both members restart in turn, so
    one of the two restarts is the leader's. "No rebalance" is read on the
    clients (a rebalance makes the member that stayed give its partitions up
    before the returning one gets any) and in the coordinator's log of state
    changes (-vv), complete once the server has exited."""
    ck = pytest.importorskip("confluent_kafka")
    s = ServeProcess(str(tmp_path / "data"), *DELAY, verbose=2)
    consumers = []
    try:
        create_topic(s, "static-g", 4)
        revoked = {}  # consumer -> how many times it gave partitions up

        def consumer(iid):
            c = ck.Consumer({"bootstrap.servers": s.bootstrap, "group.id": "staticg", "group.instance.id": iid,
                             "session.timeout.ms": SESSION_MS, "heartbeat.interval.ms": 500})
            revoked[c] = 0
            c.subscribe(["static-g"], on_revoke=lambda cons, parts: revoked.__setitem__(c, revoked[c] + 1)
                        if parts else None)
            consumers.append(c)
            return c

        def close(c):
            consumers.remove(c)
            c.close()

        def poll_until(cs, cond, what):
            def step():
                for c in cs:
                    c.poll(0.05)
                return cond()
            wait_until(step, 60, what, interval=0)

        def partitions(c):
            return sorted(tp.partition for tp in c.assignment())

        a, b = consumer("i1"), consumer("i2")
        poll_until([a, b], lambda: len(a.assignment()) == 2 and len(b.assignment()) == 2, "2 + 2 partitions")
        mine = {"i1": partitions(a), "i2": partitions(b)}
        ad = admin(s)  # kept alive until its futures resolve

        def member_ids():
            d = ad.describe_consumer_groups(["staticg"])["staticg"].result()
            return {m.group_instance_id: m.member_id for m in d.members}

        ids_before = member_ids()

        close(a)  # a static member sends no LeaveGroup: its session keeps its place
        a2 = consumer("i1")
        poll_until([a2, b], lambda: len(a2.assignment()) == 2, "i1 back with 2 partitions")
        assert partitions(a2) == mine["i1"]
        assert revoked[b] == 0 and partitions(b) == mine["i2"]

        close(b)
        b2 = consumer("i2")
        poll_until([a2, b2], lambda: len(b2.assignment()) == 2, "i2 back with 2 partitions")
        assert partitions(b2) == mine["i2"]
        assert revoked[a2] == 0 and partitions(a2) == mine["i1"]

        ids_now = member_ids()
        assert set(ids_now) == {"i1", "i2"} and not set(ids_now.values()) & set(ids_before.values())
    finally:
        for c in list(consumers):
            close(c)
        assert s.stop() == 0, s.stderr_text()

    text = s.stderr_text()
    replaced = REPLACED.findall(text)
    assert sorted(iid for iid, _ in replaced) == ["i1", "i2"], text
    assert sorted(leader for _, leader in replaced) == ["False", "True"]  # one restart was the leader's

    def transitions(text):
        return [(m["old"], m["new"]) for m in TRANSITION.finditer(text) if m["g"] == "staticg"]

    # The group was Stable when the first member came back, and changed neither
    # state nor generation after that until the server shut down.
    first = REPLACED.search(text).start()
    assert transitions(text[:first])[-1] == ("CompletingRebalance", "Stable"), text
    assert transitions(text[first:]) == [("Stable", "Dead")], text


"""Consumer-group rebalance time: join to assignment, for 3 members, over loopback.

Starts ``python -m umlog serve`` on a fresh data dir and a free port
(``--group-initial-rebalance-delay-ms`` from ``--delay-ms``, default Kafka's
3000), then measures:

1. **wire, stable group**: 3 members, each on its own connection and thread,
   speaking the group protocol directly (kio-encoded JoinGroup/SyncGroup).
   Once the group is Stable, every round all three rejoin at once with new
   metadata (as members do after a subscription change), the leader computes a
   trivial assignment and all three SyncGroup. Time = from the first JoinGroup
   sent to the last SyncGroup answer received (no join window: a Stable
   group's round ends when every member has rejoined). Median, p90, max over
   ``--rounds``.
2. **wire, new group**: 3 fresh members join an Empty group at once: the
   first round waits the initial rebalance delay (extended once, as Kafka
   does, because members arrived during it). Reported: the join phase, and
   the time from the last JoinGroup answer to the last assignment.
3. **librdkafka**: 3 confluent-kafka consumers subscribe to a 6-partition
   topic (session.timeout.ms=6000, heartbeat.interval.ms=500): subscribe to
   all three assigned; then one leaves (close) and the time until the two
   others own all 6 partitions.

Usage::

    python bench/group_rebalance.py                 # --delay-ms 3000 --rounds 50
    python bench/group_rebalance.py --delay-ms 0 --rounds 200
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_server(data_dir: str, delay_ms: int) -> tuple[subprocess.Popen, str]:
    sys.path.insert(0, ROOT)  # prefer the source tree (after build_ext --inplace)
    import umlog

    parent = os.path.dirname(os.path.dirname(os.path.abspath(umlog.__file__)))
    env = dict(os.environ, PYTHONPATH=parent + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "umlog", "serve", "--data-dir", data_dir,
                             "--kafka", "127.0.0.1:0", "--http", "off",
                             "--group-initial-rebalance-delay-ms", str(delay_ms)],
                            stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(data_dir), env=env)
    line = proc.stdout.readline()
    m = re.search(r"kafka=(\S+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, m.group(1)


# --- a minimal group-protocol client (kio codecs) ---------------------------------------------------


class Wire:
    """One blocking connection speaking JoinGroup v5 / SyncGroup v3 (non-flexible)."""

    def __init__(self, bootstrap: str) -> None:
        from kio.index import load_request_schema, load_response_schema
        from kio.serial import entity_reader, entity_writer

        host, port = bootstrap.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._corr = 0
        self._r, self._w = entity_reader, entity_writer
        self.join_cls = load_request_schema(11, 5)
        self.join_resp = load_response_schema(11, 5)
        self.sync_cls = load_request_schema(14, 3)
        self.sync_resp = load_response_schema(14, 3)
        mods = sys.modules
        self.JoinProtocol = mods[self.join_cls.__module__].JoinGroupRequestProtocol
        self.SyncAssignment = mods[self.sync_cls.__module__].SyncGroupRequestAssignment
        from kio.schema.request_header.v1.header import RequestHeader

        self.Header = RequestHeader

    def call(self, body, resp_cls):
        self._corr += 1
        out = io.BytesIO()
        cls = type(body)
        self._w(self.Header)(out, self.Header(request_api_key=cls.__api_key__, request_api_version=cls.__version__,
                                              correlation_id=self._corr, client_id="bench"))
        self._w(cls)(out, body)
        data = out.getvalue()
        self.sock.sendall(struct.pack(">i", len(data)) + data)
        (n,) = struct.unpack(">i", self._exact(4))
        frame = self._exact(n)
        resp, _ = self._r(resp_cls)(memoryview(frame)[4:].toreadonly(), 0)
        return resp

    def _exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
        return bytes(buf)

    def join(self, group: str, member_id: str, metadata: bytes):
        import datetime

        body = self.join_cls(group_id=group, session_timeout=datetime.timedelta(milliseconds=30_000),
                             rebalance_timeout=datetime.timedelta(milliseconds=30_000), member_id=member_id,
                             group_instance_id=None, protocol_type="consumer",
                             protocols=(self.JoinProtocol(name="range", metadata=metadata),))
        return self.call(body, self.join_resp)

    def sync(self, group: str, generation: int, member_id: str, assignments: dict):
        body = self.sync_cls(group_id=group, generation_id=generation, member_id=member_id, group_instance_id=None,
                             assignments=tuple(self.SyncAssignment(member_id=m, assignment=a)
                                               for m, a in assignments.items()))
        return self.call(body, self.sync_resp)


def subscription(tag: int) -> bytes:
    """ConsumerProtocolSubscription v0: topics ["bench"], user data = the round number."""
    ud = struct.pack(">q", tag)
    return struct.pack(">hih", 0, 1, 5) + b"bench" + struct.pack(">i", len(ud)) + ud


class Member:
    def __init__(self, bootstrap: str, group: str) -> None:
        self.w = Wire(bootstrap)
        self.group = group
        self.member_id = ""

    def round(self, tag: int) -> tuple[float, float]:
        """Join (handshake if needed) and sync; (time of the join answer, of the assignment)."""
        r = self.w.join(self.group, self.member_id, subscription(tag))
        if r.error_code.value == 79:  # MEMBER_ID_REQUIRED
            self.member_id = r.member_id
            r = self.w.join(self.group, self.member_id, subscription(tag))
        if r.error_code.value != 0:
            raise RuntimeError(f"JoinGroup: {r.error_code!r}")
        joined = time.perf_counter()
        self.member_id = r.member_id
        assignments = {m.member_id: b"A" + m.member_id.encode() for m in r.members}  # leader only
        s = self.w.sync(self.group, r.generation_id, self.member_id, assignments)
        if s.error_code.value != 0:
            raise RuntimeError(f"SyncGroup: {s.error_code!r}")
        return joined, time.perf_counter()


def run_rounds(members: list[Member], tag: int) -> tuple[float, list]:
    """All members run one round at once; (start time, [(joined, assigned)])."""
    barrier = threading.Barrier(len(members) + 1)
    out: list = [None] * len(members)
    errors: list = []

    def go(i: int) -> None:
        barrier.wait()
        try:
            out[i] = members[i].round(tag)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(members))]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return t0, out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def bench_wire(bootstrap: str, rounds: int) -> dict:
    members = [Member(bootstrap, "bench-stable") for _ in range(3)]
    run_rounds(members, 0)  # the first round (waits the initial delay)
    times = []
    for i in range(1, rounds + 1):
        t0, res = run_rounds(members, i)
        times.append(max(a for _, a in res) - t0)
    return {"median": statistics.median(times), "p90": pct(times, 0.9), "max": max(times)}


def bench_new_group(bootstrap: str) -> dict:
    members = [Member(bootstrap, "bench-new") for _ in range(3)]
    t0, res = run_rounds(members, 0)
    last_join = max(j for j, _ in res)
    last_assign = max(a for _, a in res)
    return {"join_phase": last_join - t0, "after_join": last_assign - last_join, "total": last_assign - t0}


def bench_librdkafka(bootstrap: str) -> dict | None:
    try:
        import confluent_kafka as ck
        from confluent_kafka.admin import AdminClient, NewTopic
    except ImportError:
        return None
    a = AdminClient({"bootstrap.servers": bootstrap})
    for f in a.create_topics([NewTopic("bench-rk", num_partitions=6, replication_factor=1)]).values():
        f.result()
    conf = {"bootstrap.servers": bootstrap, "group.id": "bench-rk", "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500}
    cs = [ck.Consumer(conf) for _ in range(3)]
    t0 = time.perf_counter()
    for c in cs:
        c.subscribe(["bench-rk"])

    def settle(consumers, want_each, limit=60.0):
        deadline = time.perf_counter() + limit
        while time.perf_counter() < deadline:
            for c in consumers:
                c.poll(0.01)
            if all(len(c.assignment()) == want_each for c in consumers):
                return time.perf_counter()
        raise SystemExit("librdkafka consumers did not settle")

    assigned = settle(cs, 2)
    t1 = time.perf_counter()
    cs[0].close()
    reassigned = settle(cs[1:], 3)
    for c in cs[1:]:
        c.close()
    return {"subscribe_to_assigned": assigned - t0, "leave_to_reassigned": reassigned - t1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--delay-ms", type=int, default=3000, help="group.initial.rebalance.delay.ms of the server")
    ap.add_argument("--rounds", type=int, default=50)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="umlog-bench-groups-")
    proc, bootstrap = start_server(os.path.join(tmp, "data"), args.delay_ms)
    try:
        wire = bench_wire(bootstrap, args.rounds)
        new = bench_new_group(bootstrap)
        rk = bench_librdkafka(bootstrap)
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    ms = lambda s: f"{s * 1000:,.1f} ms"  # noqa: E731
    print(f"server: group.initial.rebalance.delay.ms={args.delay_ms}")
    print("| what (3 members) | time |")
    print("|---|---:|")
    print(f"| stable group, all rejoin -> all assigned: median ({args.rounds} rounds) | {ms(wire['median'])} |")
    print(f"| same, p90 / max | {ms(wire['p90'])} / {ms(wire['max'])} |")
    print(f"| new group: join phase (initial delay, extended once) | {ms(new['join_phase'])} |")
    print(f"| new group: last join answer -> last assignment | {ms(new['after_join'])} |")
    if rk is not None:
        print(f"| librdkafka: subscribe -> 3 consumers assigned (incl. the join window) "
              f"| {ms(rk['subscribe_to_assigned'])} |")
        print(f"| librdkafka: one consumer closes -> 2 others own all 6 partitions | {ms(rk['leave_to_reassigned'])} |")


if __name__ == "__main__":
    main()

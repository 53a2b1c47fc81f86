"""MQTT fan-out and latency, umlog against mosquitto in the same run.

Two measurements, each against ``umlog serve --mqtt`` (fresh data dir) and
then Debian's ``mosquitto`` (no persistence), with the same raw asyncio
clients (MQTT 3.1.1, the door's own codec; cheaper than paho, so the clients
take less of the 2 cores):

* **fan-out**: ``--topics`` (10,000) subscribers, each on its own topic
  ``fan/t<i>`` at QoS 0, plus one subscriber of ``#``; one publisher sends
  ``-n`` QoS 1 messages round-robin over the topics (up to 1,000 in flight).
  Every message is delivered twice (its topic's subscriber and ``#``). Shows
  delivered messages/s and the broker's utime+stime per million deliveries,
  measured from the first PUBLISH to the last delivery (connecting the
  subscribers is not counted).
* **latency**: one subscriber of ``lat/x`` at QoS 1 (it PUBACKs each), one
  publisher sending QoS 1 at ``--rate`` (10,000) messages/s for
  ``--seconds``; each payload carries the send time (CLOCK_MONOTONIC), the
  subscriber takes the difference on arrival. p50/p99/max over the messages
  after the first second, and the broker's CPU per million.

Subscribers, publisher and latency clients are separate processes (this file
with ``--role``). Usage::

    python bench/mqtt_fanout.py                       # 10,000 topics, 200,000 messages; 10 s at 10,000/s
    python bench/mqtt_fanout.py --topics 1000 -n 50000 --seconds 5

Needs ``apt-get install mosquitto``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import child_env, cpu_s  # noqa: E402

PAYLOAD = 100


# --- clients (run as --role children) ---------------------------------------------------------

def _frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Take the whole MQTT packets off the front of ``buf``: (first byte, body) each."""
    out = []
    i, n = 0, len(buf)
    while i < n:
        j, length, shift = i + 1, 0, 0
        while j < n and shift < 28:
            b = buf[j]
            length |= (b & 0x7F) << shift
            shift += 7
            j += 1
            if not b & 0x80:
                break
        else:
            break  # the remaining length is not all here yet
        if j + length > n:
            break
        out.append((buf[i], bytes(buf[j:j + length])))
        i = j + length
    del buf[:i]
    return out


class _Client(asyncio.Protocol):
    """One MQTT 3.1.1 connection: CONNECT, SUBSCRIBE, then ``on_packet`` per packet."""

    def __init__(self, client_id: str, filters: list[tuple[str, int]], on_packet) -> None:
        from umlog.server.mqtt.codec import Connect, Subscribe, Subscription, encode

        self.hello = encode(Connect(client_id, keep_alive=0))
        if filters:
            self.hello += encode(Subscribe(1, [Subscription(f, q) for f, q in filters]))
        self.on_packet = on_packet
        self.ready_on = 9 if filters else 2  # ready at SUBACK, or at CONNACK without filters
        self.buf = bytearray()
        self.ready = asyncio.get_running_loop().create_future()
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.hello)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        for first, body in _frames(self.buf):
            kind = first >> 4
            if kind in (2, 9):  # CONNACK, SUBACK
                if kind == self.ready_on and not self.ready.done():
                    self.ready.set_result(None)
                continue
            self.on_packet(self, first, body)

    def connection_lost(self, exc) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed: {exc}"))


async def _connect(port: int, client_id: str, filters, on_packet) -> _Client:
    loop = asyncio.get_running_loop()
    _, c = await loop.create_connection(lambda: _Client(client_id, filters, on_packet), "127.0.0.1", port)
    await c.ready
    return c


async def role_subscribers(port: int, topics: int, n: int) -> None:
    """``topics`` subscribers and one of ``#``; prints 'ready', then 'done <deliveries> <s>'
    once 2n messages arrived (or nothing came for 30 s)."""
    got = [0]
    last = [time.monotonic()]
    first = [None]

    def count(c, first_byte, body):
        got[0] += 1
        now = time.monotonic()
        last[0] = now
        if first[0] is None:
            first[0] = now

    sem = asyncio.Semaphore(50)  # under the brokers' listen backlog (100): no SYN dropped and retried

    async def one(i):
        async with sem:
            return await _connect(port, f"fan-{i}", [(f"fan/t{i}", 0)], count)

    conns = await asyncio.gather(*(one(i) for i in range(topics)))
    conns.append(await _connect(port, "fan-all", [("#", 0)], count))
    print("ready", flush=True)
    while got[0] < 2 * n and time.monotonic() - last[0] < 30:
        await asyncio.sleep(0.05)
    print(f"done {got[0]} {last[0] - (first[0] or last[0]):.3f}", flush=True)
    for c in conns:
        c.transport.close()


async def role_fan_publisher(port: int, topics: int, n: int) -> None:
    """n QoS 1 PUBLISHes round-robin over fan/t<i>, at most 1,000 unacknowledged."""
    acked = [0]
    room = asyncio.Event()

    def on_ack(c, first_byte, body):
        acked[0] += 1
        room.set()

    c = await _connect(port, "fan-pub", [], on_ack)
    names = [struct.pack(">H", len(t)) + t for t in (f"fan/t{i}".encode() for i in range(topics))]
    payload = b"x" * PAYLOAD
    sent = 0
    while sent < n:
        window = min(n - sent, 1000 - (sent - acked[0]))
        if window <= 0:
            room.clear()
            await room.wait()
            continue
        chunk = []
        for k in range(sent, sent + window):
            body = names[k % topics] + struct.pack(">H", k % 65535 + 1) + payload
            chunk.append(bytes((0x32,)) + _varint(len(body)) + body)
        c.transport.write(b"".join(chunk))
        sent += window
        await asyncio.sleep(0)
    while acked[0] < n:
        room.clear()
        await room.wait()
    c.transport.close()


async def role_latency_subscriber(port: int, expect: int) -> None:
    """QoS 1 on lat/x; PUBACKs each; prints 'ready', then the latencies (µs) on one line."""
    lat: list[int] = []
    last = [time.monotonic()]

    def on_publish(c, first_byte, body):
        now = time.monotonic_ns()
        tlen = struct.unpack_from(">H", body)[0]
        pid = body[2 + tlen:4 + tlen]
        sent_ns = struct.unpack_from(">Q", body, 4 + tlen)[0]
        lat.append((now - sent_ns) // 1000)
        c.transport.write(b"\x40\x02" + pid)
        last[0] = time.monotonic()

    c = await _connect(port, "lat-sub", [("lat/x", 1)], on_publish)
    print("ready", flush=True)
    while len(lat) < expect and time.monotonic() - last[0] < 30:
        await asyncio.sleep(0.05)
    print(" ".join(map(str, lat)), flush=True)
    c.transport.close()


async def role_latency_publisher(port: int, rate: int, seconds: float) -> None:
    """QoS 1 PUBLISHes to lat/x at ``rate`` per second, the send time in each payload."""
    acked = [0]
    c = await _connect(port, "lat-pub", [], lambda c, f, b: acked.__setitem__(0, acked[0] + 1))
    topic = struct.pack(">H", 5) + b"lat/x"
    pad = b"x" * (PAYLOAD - 8)
    n = int(rate * seconds)
    sent = 0
    t0 = time.monotonic()
    while sent < n:
        due = min(n, int((time.monotonic() - t0) * rate) + 1)
        if due > sent:
            chunk = []
            now = struct.pack(">Q", time.monotonic_ns())
            for k in range(sent, due):
                body = topic + struct.pack(">H", k % 65535 + 1) + now + pad
                chunk.append(bytes((0x32,)) + _varint(len(body)) + body)
            c.transport.write(b"".join(chunk))
            sent = due
        await asyncio.sleep(0.0005)
    deadline = time.monotonic() + 30
    while acked[0] < n and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    c.transport.close()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


# --- brokers --------------------------------------------------------------------------------

def start_umlog(work: str) -> tuple[subprocess.Popen, int]:
    """``bench/mqtt.py``'s umlog serve, with room for the 10,001 connections."""
    from mqtt import start_umlog as start

    return start(os.path.join(work, "data"), "never", "--max-connections", "15000")


def start_mosquitto_drained(work: str) -> tuple[subprocess.Popen, int]:
    """``bench/mqtt.py``'s mosquitto, its stderr read as it comes: it logs every
    connection, and 10,000 of them fill a pipe nobody reads (mosquitto then blocks)."""
    from mqtt import start_mosquitto

    proc, port = start_mosquitto(work)
    threading.Thread(target=proc.stderr.read, daemon=True).start()
    return proc, port


def _child(role: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), "--role", role, *map(str, args)],
                            stdout=subprocess.PIPE, text=True, env=child_env())


def fan_out(port: int, pid: int, topics: int, n: int) -> tuple[int, float, float]:
    """(deliveries, seconds, broker CPU-s) of one fan-out run."""
    subs = _child("subscribers", port, topics, n)
    if subs.stdout.readline().strip() != "ready":
        raise SystemExit("the subscribers did not get ready")
    cpu0 = cpu_s(pid)
    pub = _child("fan-publisher", port, topics, n)
    if pub.wait() != 0:
        raise SystemExit("the fan-out publisher failed")
    done = subs.stdout.readline().split()
    cpu = cpu_s(pid) - cpu0
    subs.wait()
    return int(done[1]), float(done[2]), cpu


def latency(port: int, pid: int, rate: int, seconds: float) -> tuple[list[int], float]:
    """(latencies in µs after the first second, broker CPU-s) of one latency run."""
    n = int(rate * seconds)
    sub = _child("latency-subscriber", port, n)
    if sub.stdout.readline().strip() != "ready":
        raise SystemExit("the latency subscriber did not get ready")
    cpu0 = cpu_s(pid)
    pub = _child("latency-publisher", port, rate, seconds)
    lat = [int(x) for x in sub.stdout.readline().split()]
    pub.wait()
    cpu = cpu_s(pid) - cpu0
    sub.wait()
    if len(lat) < n:
        print(f"  (only {len(lat):,} of {n:,} latency messages arrived)")
    return lat[rate:], cpu


def _pct(xs: list[int], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] / 1000 if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--topics", type=int, default=10_000, help="subscribers on distinct topics")
    ap.add_argument("-n", type=int, default=200_000, help="fan-out messages published")
    ap.add_argument("--rate", type=int, default=10_000, help="latency run: messages/s")
    ap.add_argument("--seconds", type=float, default=10.0, help="latency run: seconds")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 10,000 sockets a side; children inherit it
    if args.role:
        role, *rest = args.role
        fn = {"subscribers": role_subscribers, "fan-publisher": role_fan_publisher,
              "latency-subscriber": role_latency_subscriber, "latency-publisher": role_latency_publisher}[role]
        asyncio.run(fn(*(float(x) if "." in x else int(x) for x in rest)))
        return
    if args.topics + 50 > hard:
        raise SystemExit(f"{args.topics} subscribers need more file descriptors than the limit {hard}")
    if not shutil.which("mosquitto"):
        raise SystemExit("mosquitto is not installed (apt-get install mosquitto)")
    rows = []
    for name, start in (("umlog", start_umlog), ("mosquitto", start_mosquitto_drained)):
        with tempfile.TemporaryDirectory(prefix="umlog-bench-mqtt-fan-") as work:
            proc, port = start(work)
            try:
                delivered, secs, fcpu = fan_out(port, proc.pid, args.topics, args.n)
                lat, lcpu = latency(port, proc.pid, args.rate, args.seconds)
            finally:
                proc.terminate()
                proc.wait()
        rows.append((name, delivered, secs, fcpu, lat, lcpu))
    n_lat = int(args.rate * args.seconds)
    print(f"fan-out: {args.topics:,} subscribers on distinct topics + one '#', {args.n:,} QoS 1 messages of "
          f"{PAYLOAD} B round-robin (QoS 0 deliveries, 2 per message)")
    print(f"{'broker':<11} {'delivered':>10} {'deliveries/s':>13} {'CPU-s/1M deliveries':>20}")
    for name, delivered, secs, fcpu, _, _ in rows:
        if not delivered or not secs:
            print(f"{name:<11} {delivered:>10,} (nothing to measure)")
            continue
        print(f"{name:<11} {delivered:>10,} {delivered / secs:>13,.0f} {fcpu / delivered * 1e6:>20.2f}")
    print(f"latency: QoS 1 at {args.rate:,}/s for {args.seconds:g} s to one QoS 1 subscriber "
          f"(first second left out)")
    print(f"{'broker':<11} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'CPU-s/1M':>9}")
    for name, _, _, _, lat, lcpu in rows:
        print(f"{name:<11} {_pct(lat, 0.5):>8.2f} {_pct(lat, 0.99):>8.2f} {_pct(lat, 1.0):>8.2f} "
              f"{lcpu / n_lat * 1e6:>9.2f}")


if __name__ == "__main__":
    main()

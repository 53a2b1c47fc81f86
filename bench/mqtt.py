"""The MQTT door against mosquitto, same run, same clients: server CPU per million.

For each broker (``umlog serve --mqtt`` on a fresh data dir, then Debian's
``mosquitto`` on loopback with a config of its own), one ``mosquitto_sub``
subscribes to ``bench/#`` at QoS 1 and counts N messages, and one publisher
sends N messages of S bytes at QoS 1 to ``bench/x``:

* ``--publisher raw`` (the default): a pipelining MQTT 3.1.1 client, as a
  gateway or a log shipper publishes: the PUBLISH frames are made once, then
  written 100 to a write with up to ``--window`` (1,000) unacknowledged,
  reading PUBACKs as they come. It is cheap enough that the brokers, not the
  client, set the pace.
* ``--publisher paho``: paho-mqtt with 100 in flight, one write per PUBLISH;
  it manages about 8,000 messages/s here, so the broker mostly waits for it
  and gets one message per read.

(``mosquitto_pub -l`` would be cheaper, but it stops reading its input early
when the broker acknowledges slower than it reads.) The
broker's utime+stime (``/proc/<pid>/stat``) is read before and after; the table
shows messages/s and the broker's CPU seconds per million messages (each
message is published once and delivered once). The clients share the machine with the broker, so
messages/s are for the pair; the broker's CPU per million, and its ratio
between the brokers, are the numbers to read.

Usage::

    python bench/mqtt.py                  # 1,000,000 x 100 B, the pipelining publisher
    python bench/mqtt.py -n 200000 --publisher paho
    python bench/mqtt.py -n 200000 --persistent   # the subscriber's session kept (clean session off)
    python bench/mqtt.py -n 200000 --fsync always

Needs ``apt-get install mosquitto mosquitto-clients``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from harness import child_env, cpu_s  # noqa: E402


def start_umlog(data_dir: str, fsync: str, *options: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "umlog", "serve", "--data-dir", data_dir, "--kafka",
                             "127.0.0.1:0", "--mqtt", "127.0.0.1:0", "--http", "off", "--fsync", fsync, *options],
                            stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(data_dir), env=child_env())
    line = proc.stdout.readline()
    m = re.search(r"mqtt=\S+:(\d+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"umlog serve did not get ready: {line!r}")
    return proc, int(m.group(1))


def start_mosquitto(work: str) -> tuple[subprocess.Popen, int]:
    import socket

    # mosquitto takes its port from the config only: ask the OS for one and
    # retry if another process took it meanwhile.
    for _ in range(5):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        conf = os.path.join(work, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 0\nmax_inflight_messages 100\n")
        proc = subprocess.Popen(["mosquitto", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return proc, port
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.05)
        proc.kill()
    raise SystemExit("mosquitto did not start")


PUBLISHER = """
import sys, threading, paho.mqtt.client as mqtt
port, n, size = map(int, sys.argv[1:4])
acked = 0
cond = threading.Condition()

def on_publish(client, userdata, mid, rc, props):
    global acked
    with cond:
        acked += 1
        cond.notify()

c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-pub")
c.max_inflight_messages_set(100)
c.on_publish = on_publish
c.connect("127.0.0.1", port)
c.loop_start()
payload = b"x" * size
for i in range(n):
    with cond:  # at most 1,000 queued in the client
        cond.wait_for(lambda: i - acked < 1000)
    c.publish("bench/x", payload, 1)
with cond:
    cond.wait_for(lambda: acked >= n, 600)
c.disconnect()
c.loop_stop()
"""


RAW_PUBLISHER = """
import socket, sys
from umlog.server.mqtt.codec import Connack, Connect, Disconnect, PacketReader, encode, encode_publish
port, n, size, window = map(int, sys.argv[1:5])
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.sendall(encode(Connect("bench-pub", clean_start=True, keep_alive=60)))
reader = PacketReader()
while True:
    reader.feed(s.recv(64))
    got = list(reader.packets())
    if got:
        break
if not isinstance(got[0], Connack) or got[0].reason:
    raise SystemExit(f"CONNECT refused: {got[0]!r}")
payload = b"x" * size
frames = [encode_publish("bench/x", payload, 1, packet_id=pid) for pid in range(1, 65536)]
sent = acked = 0
rest = b""
while acked < n:
    room = min(window - (sent - acked), n - sent)
    if room > 0:
        k = min(room, 100)
        s.sendall(b"".join(frames[(sent + i) % 65535] for i in range(k)))
        sent += k
        s.setblocking(sent - acked >= window or sent >= n)  # wait for PUBACKs only when the window is full
    else:
        s.setblocking(True)
    try:
        data = s.recv(65536)
    except BlockingIOError:
        continue
    if not data:
        raise SystemExit("the broker closed the connection")
    rest += data
    acked += len(rest) // 4  # PUBACKs: 4 bytes each
    rest = rest[len(rest) // 4 * 4:]
s.setblocking(True)
s.sendall(encode(Disconnect()))
s.close()
"""


def run(port: int, pid: int, n: int, size: int, publisher: str, window: int,
        persistent: bool) -> tuple[float, float]:
    ready = "bench/ready"
    subprocess.run(["mosquitto_pub", "-p", str(port), "-t", ready, "-m", "r", "-r", "-q", "1"], check=True)
    session = ["-c", "-i", "bench-sub"] if persistent else []  # a session kept, its messages in it
    sub = subprocess.Popen(["mosquitto_sub", "-p", str(port), "-t", "bench/#", "-q", "1", "-C", str(n + 1), *session],
                           stdout=subprocess.PIPE)
    first = sub.stdout.readline()  # the retained message: the subscription is live
    assert first.strip() == b"r", first
    cpu0, t0 = cpu_s(pid), time.perf_counter()
    if publisher == "raw":
        argv = ["-c", RAW_PUBLISHER, str(port), str(n), str(size), str(window)]
    else:
        argv = ["-c", PUBLISHER, str(port), str(n), str(size)]
    subprocess.run([sys.executable, *argv], check=True, env=child_env())
    for _ in sub.stdout:
        pass
    if sub.wait() != 0:
        raise SystemExit(f"mosquitto_sub failed (exit {sub.returncode})")
    return time.perf_counter() - t0, cpu_s(pid) - cpu0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=1_000_000, help="messages")
    ap.add_argument("-s", "--size", type=int, default=100, help="payload bytes")
    ap.add_argument("--fsync", default="never", choices=["never", "interval", "always"])
    ap.add_argument("--publisher", default="raw", choices=["raw", "paho"], help="the publishing client")
    ap.add_argument("--window", type=int, default=1000, help="the raw publisher's messages in flight")
    ap.add_argument("--persistent", action="store_true",
                    help="the subscriber keeps its session (clean session off): umlog records what it has in flight")
    args = ap.parse_args()
    for tool in ("mosquitto", "mosquitto_pub", "mosquitto_sub"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed (apt-get install mosquitto mosquitto-clients)")
    with tempfile.TemporaryDirectory(prefix="umlog-bench-mqtt-") as work:
        rows = []
        proc, port = start_umlog(os.path.join(work, "data"), args.fsync)
        try:
            wall, cpu = run(port, proc.pid, args.n, args.size, args.publisher, args.window, args.persistent)
            rows.append((f"umlog (fsync={args.fsync})", wall, cpu))
        finally:
            proc.terminate()
            proc.wait()
        proc, port = start_mosquitto(work)
        try:
            wall, cpu = run(port, proc.pid, args.n, args.size, args.publisher, args.window, args.persistent)
            rows.append(("mosquitto (no persistence)", wall, cpu))
        finally:
            proc.terminate()
            proc.wait()
    who = f"the pipelining publisher ({args.window} in flight)" if args.publisher == "raw" else "one paho publisher"
    sub = "one mosquitto_sub with a persistent session" if args.persistent else "one mosquitto_sub"
    print(f"{args.n:,} QoS 1 messages of {args.size} B, {who} to {sub}")
    print(f"{'broker':<28} {'msgs/s':>10} {'CPU-s/1M':>10} {'vs mosquitto':>13}")
    base = rows[-1][2] / args.n * 1e6
    for name, wall, cpu in rows:
        per = cpu / args.n * 1e6
        print(f"{name:<28} {args.n / wall:>10,.0f} {per:>10.2f} {per / base:>12.2f}x")


if __name__ == "__main__":
    main()

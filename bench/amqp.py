"""The AMQP door against RabbitMQ, same run, same client: msgs/s and server CPU per million.

For each broker (``umlog serve --amqp`` on a fresh data dir, then Debian's
``rabbitmq-server`` on loopback with a node and config of its own, skipped
with a message when it is not installed), one process publishes N persistent
messages of S bytes with publisher confirms (a window of 1,000 unconfirmed,
pika's select connection) to a durable queue while another consumes them
with prefetch 1,000 and acks every 100 (multiple). The broker's utime+stime
(``/proc/<pid>/stat``, the whole process tree for RabbitMQ) is read before
and after; the table shows messages/s end to end and the broker's CPU
seconds per million messages (each published once and delivered once). The
clients are Python and share the machine's 2 cores with the broker, so the
ratio between the brokers is the number to read.

Usage::

    python bench/amqp.py                  # 200,000 x 100 B
    python bench/amqp.py -n 50000 --fsync always
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

CLIENT = r'''
import sys, time, pika
role, port, queue, n, size = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
params = pika.ConnectionParameters("127.0.0.1", port, heartbeat=0)
if role == "consume":
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1000)
    got = 0
    for m, p, b in ch.consume(queue, inactivity_timeout=120):
        if m is None:
            break
        got += 1
        if got % 100 == 0 or got == n:
            ch.basic_ack(m.delivery_tag, multiple=True)
        if got == n:
            break
    print(got, flush=True)
    sys.exit(0)
body = b"x" * size
props = pika.BasicProperties(delivery_mode=2)
state = {"sent": 0, "acked": 0}
def on_open(conn):
    conn.channel(on_open_callback=on_channel)
def on_channel(ch):
    def on_confirm(frame):
        m = frame.method
        if m.multiple:
            state["acked"] = m.delivery_tag
        else:
            state["acked"] = max(state["acked"], m.delivery_tag)
        pump(ch)
    ch.confirm_delivery(on_confirm, callback=lambda _: pump(ch))
def pump(ch):
    while state["sent"] < n and state["sent"] - state["acked"] < 1000:
        ch.basic_publish("", queue, body, props)
        state["sent"] += 1
    if state["acked"] >= n:
        ch.connection.close()
conn = pika.SelectConnection(params, on_open_callback=on_open)
conn.add_on_close_callback(lambda *a: conn.ioloop.stop())
conn.ioloop.start()
print(state["acked"], flush=True)
'''


def start_umlog(data_dir: str, fsync: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "umlog", "serve", "--data-dir", data_dir, "--kafka",
                             "127.0.0.1:0", "--amqp", "127.0.0.1:0", "--http", "off", "--fsync", fsync],
                            stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(data_dir), env=child_env())
    line = proc.stdout.readline()
    m = re.search(r"amqp=127\.0\.0\.1:(\d+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"umlog serve did not start: {line!r}")
    return proc, int(m.group(1))


def start_rabbitmq(tmp: str) -> tuple[subprocess.Popen, int] | None:
    # Debian's /usr/sbin/rabbitmq-server re-runs itself as the rabbitmq user (su),
    # which cannot write this run's directories: the script it wraps runs as us.
    lib = "/usr/lib/rabbitmq/bin/rabbitmq-server"
    server = lib if os.path.exists(lib) else shutil.which("rabbitmq-server")
    if server is None:
        print("rabbitmq-server is not installed (apt-get install rabbitmq-server): RabbitMQ skipped")
        return None
    import socket

    with socket.socket() as s:  # a bench, not a test: the port is only ours for a moment
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = os.path.join(tmp, "rabbit")
    os.makedirs(base)
    with open(os.path.join(base, "rabbitmq.conf"), "w") as f:
        f.write(f"listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n"
                "disk_free_limit.absolute = 50MB\n")
    env = dict(os.environ, RABBITMQ_BASE=base, RABBITMQ_MNESIA_BASE=os.path.join(base, "mnesia"),
               RABBITMQ_LOG_BASE=os.path.join(base, "log"), RABBITMQ_CONFIG_FILE=os.path.join(base, "rabbitmq"),
               RABBITMQ_NODENAME=f"bench{os.getpid()}@localhost", RABBITMQ_NODE_PORT=str(port),
               RABBITMQ_DIST_PORT=str(port + 20000 if port < 45000 else port - 20000),
               RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(base, "enabled_plugins"), HOME=base)
    with open(os.path.join(base, "enabled_plugins"), "w") as f:
        f.write("[].\n")
    proc = subprocess.Popen([server], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.5)
    import signal

    os.killpg(proc.pid, signal.SIGKILL)
    print("rabbitmq-server did not listen within 60 s: RabbitMQ skipped")
    return None


def tree_cpu(pid: int) -> float:
    """utime+stime of ``pid`` and its descendants (RabbitMQ is a shell, then beam)."""
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            total += cpu_s(p)
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            pass
    return total


def run(label: str, pid: int, port: int, n: int, size: int) -> None:
    import pika

    queue = f"bench-{os.getpid()}-{label}"
    with pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port)) as c:
        c.channel().queue_declare(queue, durable=True)
    cpu0, t0 = tree_cpu(pid), time.perf_counter()
    cons = subprocess.Popen([sys.executable, "-c", CLIENT, "consume", str(port), queue, str(n), str(size)],
                            stdout=subprocess.PIPE, text=True, env=child_env())
    pub = subprocess.run([sys.executable, "-c", CLIENT, "publish", str(port), queue, str(n), str(size)],
                         capture_output=True, text=True, env=child_env(), timeout=3600)
    out, _ = cons.communicate(timeout=3600)
    dt, cpu = time.perf_counter() - t0, tree_cpu(pid) - cpu0
    if pub.stdout.strip() != str(n) or out.strip() != str(n):
        raise SystemExit(f"{label}: published {pub.stdout.strip()!r}, consumed {out.strip()!r} of {n}: "
                         f"{pub.stderr[-500:]}")
    print(f"| {label} | {n:,} | {n / dt:,.0f} | {cpu / n * 1e6:.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--fsync", default="never", choices=("never", "interval", "always"))
    a = ap.parse_args()
    print(f"{a.n:,} persistent messages of {a.size} B, confirms (window 1,000) + acks (prefetch 1,000), "
          f"umlog --fsync {a.fsync}\n")
    print("| broker | messages | msgs/s (publish+consume) | server CPU-s per million |")
    print("| --- | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        proc, port = start_umlog(os.path.join(tmp, "data"), a.fsync)
        try:
            run("umlog", proc.pid, port, a.n, a.size)
        finally:
            proc.terminate()
            proc.wait(30)
        started = start_rabbitmq(tmp)
        if started is not None:
            rproc, rport = started
            try:
                run("rabbitmq", rproc.pid, rport, a.n, a.size)
            finally:
                import signal

                os.killpg(rproc.pid, signal.SIGTERM)
                rproc.wait(60)


if __name__ == "__main__":
    main()

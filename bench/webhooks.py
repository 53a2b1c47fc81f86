"""Webhook deliveries per second to a local aiohttp receiver, and the server's CPU per million.

For each case: a fresh data dir gets N records appended (embedded, before the
server starts), then ``python -m umlog serve --config`` starts with one
``[[webhook]]`` (start = "earliest") pointing at an aiohttp receiver in this
process (its own thread; it answers 204 at once and does not verify
signatures, so its CPU stays small). Measured from the first request the
receiver sees to the N-th 2xx: deliveries/s, and the server process's
user+system CPU over the same span (from /proc), as CPU-seconds per million
deliveries. Goal: >= 5,000 deliveries/s.

The baseline, in the same run against the same receiver: a plain aiohttp
client in a child process (one session, ``concurrency`` connections, the same
body and a fixed set of headers of the same size, no signing, no log, no
share group) POSTs N requests; its rate is what the receiver and aiohttp's
client can do on this machine, its CPU per million what aiohttp alone costs
a sender.

Usage::

    python bench/webhooks.py                 # 20,000 records per case
    python bench/webhooks.py --records 50000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

from aiohttp import web

import umlog
from umlog.delivery.webhook import DEFAULTS

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CLK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


class Receiver:
    def __init__(self) -> None:
        self.count = 0
        self.first: float | None = None
        self.last = 0.0
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        now = time.monotonic()
        if self.first is None:
            self.first = now
        self.count += 1
        self.last = now
        return web.Response(status=204)


VALUE = b'{"event": "x", "padding": "' + b"p" * 60 + b'"}'

PLAIN_CLIENT = """
import asyncio, sys, aiohttp
url, n, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
body = sys.argv[4].encode()
headers = {"webhook-id": "events/0/12345", "webhook-timestamp": "1700000000",
           "webhook-signature": "v1," + "A" * 44, "content-type": "application/octet-stream",
           "umlog-topic": "events", "umlog-partition": "0", "umlog-offset": "12345",
           "umlog-timestamp": "1700000000000", "umlog-delivery-count": "1"}

async def main():
    left = n
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        async def worker():
            nonlocal left
            while left > 0:
                left -= 1
                async with s.post(url, data=body, headers=headers) as r:
                    await r.read()
        await asyncio.gather(*(worker() for _ in range(concurrency)))

asyncio.run(main())
"""


def measure(rx: Receiver, proc: subprocess.Popen, records: int) -> tuple[float, float, int]:
    """Wait for the first request, then for ``records``: (per second, CPU-s per million of proc, count)."""
    while rx.first is None:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited {proc.returncode} before its first request")
        time.sleep(0.001)
    cpu0, t0 = cpu_s(proc.pid), rx.first
    deadline = time.monotonic() + 300
    while rx.count < records and time.monotonic() < deadline:
        time.sleep(0.005)
    cpu1, t1 = cpu_s(proc.pid), rx.last
    return rx.count / max(t1 - t0, 1e-9), (cpu1 - cpu0) / max(rx.count, 1) * 1e6, rx.count


def run_plain(rx: Receiver, records: int, concurrency: int) -> dict:
    rx.count, rx.first = 0, None
    proc = subprocess.Popen([sys.executable, "-c", PLAIN_CLIENT, rx.url, str(records), str(concurrency),
                             VALUE.decode()])
    try:
        per_s, cpu_per_m, n = measure(rx, proc, records)
    finally:
        proc.kill()
        proc.wait(30)
    return {"ordering": "plain aiohttp client", "concurrency": concurrency, "keys": "-", "records": n,
            "per_s": per_s, "cpu_per_m": cpu_per_m, "acked": "-"}


def run_case(rx: Receiver, records: int, ordering: str, concurrency: int, keys: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        with umlog.open(data) as b:
            t = b.create_topic("events", 1)
            for i in range(0, records, 1000):
                n = min(1000, records - i)
                t.append_many([VALUE] * n, [str((i + j) % keys).encode() for j in range(n)] if keys else None,
                              partition=0)
        cfg = os.path.join(tmp, "umlog.toml")
        with open(cfg, "w") as f:
            f.write(f'[[webhook]]\nname = "bench"\ntopic = "events"\nurl = "{rx.url}"\n'
                    f'secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"\nstart = "earliest"\n'
                    f'ordering = "{ordering}"\nconcurrency = {concurrency}\n')
        rx.count, rx.first = 0, None
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen([sys.executable, "-m", "umlog", "serve", "--data-dir", data, "--kafka", "127.0.0.1:0",
                                 "--http", "off", "--config", cfg], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env, cwd=tmp)
        try:
            proc.stdout.readline()  # umlog ready ...
            per_s, cpu_per_m, n = measure(rx, proc, records)
        finally:
            proc.terminate()
            proc.wait(30)
        status = json.load(open(os.path.join(data, "meta", "webhooks-status.json")))["webhooks"]["bench"]
    default = " (default)" if concurrency == DEFAULTS["concurrency"] else ""
    return {"ordering": ordering, "concurrency": f"{concurrency}{default}",
            "keys": keys or "-", "records": n, "per_s": per_s, "cpu_per_m": cpu_per_m, "acked": status["delivered"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=20_000)
    args = ap.parse_args()
    rx = Receiver()
    cases = [("none", 8, 0), ("none", 32, 0), ("key", 32, 100)]
    rows = [run_plain(rx, args.records, 32)]
    rows += [run_case(rx, args.records, *c) for c in cases]
    rows.append(run_plain(rx, args.records, 32))  # again: did the machine change meanwhile?
    print("| ordering | concurrency | keys | deliveries | deliveries/s | server CPU-s per million | acked |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        acked = r["acked"] if isinstance(r["acked"], str) else f"{r['acked']:,}"
        print(f"| {r['ordering']} | {r['concurrency']} | {r['keys']} | {r['records']:,} | {r['per_s']:,.0f} "
              f"| {r['cpu_per_m']:,.0f} | {acked} |")


if __name__ == "__main__":
    main()

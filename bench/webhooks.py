"""Webhook deliveries per second to a local aiohttp receiver, and the server's CPU per million.

For each case: a fresh data dir gets N records appended (embedded, before the
server starts), then ``python -m umlog serve --config`` starts with one
``[[webhook]]`` (start = "earliest") pointing at an aiohttp receiver in this
process (its own thread; it answers 204 at once and does not verify
signatures, so its CPU stays small). Measured from the first request the
receiver sees to the N-th 2xx: deliveries/s, and the server process's
user+system CPU over the same span (from /proc), as CPU-seconds per million
deliveries. Goal: >= 5,000 deliveries/s.

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


def run_case(rx: Receiver, records: int, ordering: str, concurrency: int, keys: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        with umlog.open(data) as b:
            t = b.create_topic("events", 1)
            value = b'{"event": "x", "padding": "' + b"p" * 60 + b'"}'
            for i in range(0, records, 1000):
                n = min(1000, records - i)
                t.append_many([value] * n, [str((i + j) % keys).encode() for j in range(n)] if keys else None,
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
            while rx.first is None:
                time.sleep(0.001)
            cpu0, t0 = cpu_s(proc.pid), rx.first
            deadline = time.monotonic() + 300
            while rx.count < records and time.monotonic() < deadline:
                time.sleep(0.005)
            cpu1, t1 = cpu_s(proc.pid), rx.last
        finally:
            proc.terminate()
            proc.wait(30)
        status = json.load(open(os.path.join(data, "meta", "webhooks-status.json")))["webhooks"]["bench"]
    secs = max(t1 - t0, 1e-9)
    return {"ordering": ordering, "concurrency": concurrency, "keys": keys or "-", "records": rx.count,
            "per_s": rx.count / secs, "cpu_per_m": (cpu1 - cpu0) / max(rx.count, 1) * 1e6,
            "acked": status["delivered"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=20_000)
    args = ap.parse_args()
    rx = Receiver()
    cases = [("none", 8, 0), ("none", 32, 0), ("key", 32, 100)]
    rows = [run_case(rx, args.records, *c) for c in cases]
    print("| ordering | concurrency | keys | deliveries | deliveries/s | server CPU-s per million | acked |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['ordering']} | {r['concurrency']} | {r['keys']} | {r['records']:,} | {r['per_s']:,.0f} "
              f"| {r['cpu_per_m']:,.0f} | {r['acked']:,} |")


if __name__ == "__main__":
    main()

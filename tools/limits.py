"""Measure the server's limits: RSS with many idle connections, RSS under slow consumers,
maximum connections, idle timeout and maximum request size.

Each measurement starts its own ``umlog serve`` (harness.Server) and prints one
line; ``tests/hardening/test_limits.py`` runs them with assertions.

* ``idle_connections(n)``: RSS before and after ``n`` connections that each
  sent one ApiVersions and then stay silent (``--idle-timeout-ms 0``);
* ``slow_consumers(conns, requests)``: a partition holding ``--data-mb`` of
  records; ``conns`` connections each send ``requests`` Fetch requests asking
  for 2 GiB and never read; RSS is sampled for a few seconds. What bounds it:
  ``--fetch-max-bytes`` (each answer), the answer-at-a-time task with reading
  paused while the transport is not drained (protocol.py);
* ``max_connections(limit)``: ``limit`` connections work, the next one is
  accepted and closed at once, and one works again after one closes;
* ``idle_timeout(ms)``: a silent connection is closed after about ``ms``, a
  busy one and a long-polling Fetch are not.

Usage::

    python tools/limits.py                     # all of them, default sizes
    python tools/limits.py --idle 5000         # 5,000 idle connections
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import shutil
import socket
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fuzz_kafka import request_bytes
from harness import Server
from kio.index import load_request_schema, load_response_schema
from kio.serial import entity_reader

import umlog


def raise_own_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        target = hard if hard == resource.RLIM_INFINITY else min(hard, max(need, soft))
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < need:
        raise RuntimeError(f"need {need} open files in this process; the hard limit is {hard}")


def frame(body, corr: int = 1) -> bytes:
    raw = request_bytes(type(body), body, corr)
    return struct.pack(">i", len(raw)) + raw


def api_versions() -> bytes:
    return frame(load_request_schema(18, 3)(client_software_name="limits", client_software_version="1"))


def fetch(topic: str, offset: int = 0, max_bytes: int = 2**31 - 1, max_wait_ms: int = 0, corr: int = 1) -> bytes:
    cls = load_request_schema(1, 12)
    m = sys.modules[cls.__module__]
    body = cls(max_wait=datetime.timedelta(milliseconds=max_wait_ms), min_bytes=1, max_bytes=max_bytes,
               isolation_level=0, session_id=0, session_epoch=-1, topics=(m.FetchTopic(topic=topic, partitions=(
                   m.FetchPartition(partition=0, fetch_offset=offset, partition_max_bytes=max_bytes),)),),
               forgotten_topics_data=(), rack_id="")
    return frame(body, corr)


def recv_frame(sock: socket.socket) -> bytes | None:
    def exact(n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            chunk = sock.recv(min(n - len(buf), 1 << 20))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    head = exact(4)
    return None if head is None else exact(struct.unpack(">i", head)[0])


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def handshake(sock: socket.socket) -> None:
    """One ApiVersions round trip: the connection is fully set up on the server."""
    sock.sendall(api_versions())
    f = recv_frame(sock)
    assert f is not None, "closed by the server"
    resp, _ = entity_reader(load_response_schema(18, 3))(f, 4)
    assert resp.error_code == 0


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


# --- measurements -----------------------------------------------------------------------------


def idle_connections(work: str, n: int = 1000) -> dict:
    raise_own_nofile(n + 200)
    s = Server(os.path.join(work, "idle"), "--idle-timeout-ms", "0")
    s.start()
    socks: list[socket.socket] = []
    try:
        warm = connect(s.port)
        handshake(warm)
        warm.close()
        time.sleep(0.2)
        before = s.rss_kb()
        for _ in range(n):
            c = connect(s.port)
            handshake(c)
            socks.append(c)
        time.sleep(0.5)
        after = s.rss_kb()
        # Every one of them still works.
        for c in socks[:: max(1, n // 20)]:
            handshake(c)
        assert s.alive()
    finally:
        for c in socks:
            c.close()
        rc = s.stop()
    assert rc == 0, s.log_text()[-2000:]
    return {"connections": n, "rss_before_mb": round(before / 1024, 1), "rss_after_mb": round(after / 1024, 1),
            "kib_per_connection": round((after - before) / n, 1)}


def _fill(data_dir: str, topic: str, mb: int) -> int:
    """A partition holding ``mb`` MiB of 1 KiB records in 256 KiB batches; returns the record count."""
    with umlog.open(data_dir) as b:
        t = b.create_topic(topic)
        value = b"v" * 1000
        n = 0
        while n * 1024 < mb << 20:
            t.append_many([value] * 256, partition=0)
            n += 256
    return n


def slow_consumers(work: str, conns: int = 8, requests: int = 200, data_mb: int = 64,
                   fetch_max_bytes: int = 1 << 20, seconds: float = 3.0) -> dict:
    data = os.path.join(work, "slow")
    _fill(data, "big", data_mb)
    s = Server(data, "--fetch-max-bytes", str(fetch_max_bytes), "--idle-timeout-ms", "0")
    s.start()
    socks: list[socket.socket] = []
    try:
        c = connect(s.port)
        handshake(c)
        c.close()
        before = s.rss_kb()
        one = len(fetch("big"))
        req = b"".join(fetch("big", corr=i) for i in range(requests))
        sent = []
        for _ in range(conns):
            c = connect(s.port)
            c.setblocking(False)
            n = 0
            try:
                while n < len(req):  # as much as the server lets in; never read
                    n += c.send(req[n:])
            except BlockingIOError:
                pass
            sent.append(n)
            socks.append(c)
        peak = before
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            peak = max(peak, s.rss_kb())
            time.sleep(0.05)
        # A good client is still served meanwhile.
        good = connect(s.port)
        good.sendall(fetch("big", offset=12345, max_bytes=1 << 16, corr=7))
        f = recv_frame(good)
        assert f is not None and struct.unpack_from(">i", f)[0] == 7
        good.close()
        # One slow consumer finally reads: every answer arrives, in order, each capped.
        slow = socks[0]
        slow.setblocking(True)
        slow.settimeout(30)
        sizes = []
        for i in range(min(sent[0] // one, 50)):
            f = recv_frame(slow)
            assert f is not None and struct.unpack_from(">i", f)[0] == i, "answers out of order"
            sizes.append(len(f))
        assert max(sizes) <= fetch_max_bytes + 4096, max(sizes)
        assert s.alive()
    finally:
        for c in socks:
            c.close()
        rc = s.stop()
    assert rc == 0, s.log_text()[-2000:]
    return {"slow_connections": conns, "fetches_sent": sum(sent) // one, "data_mb": data_mb,
            "fetch_max_bytes": fetch_max_bytes, "rss_before_mb": round(before / 1024, 1),
            "rss_peak_mb": round(peak / 1024, 1), "largest_answer": max(sizes)}


def max_connections(work: str, limit: int = 20) -> dict:
    s = Server(os.path.join(work, "maxconn"), "--max-connections", str(limit))
    s.start()
    socks: list[socket.socket] = []
    try:
        for _ in range(limit):
            c = connect(s.port)
            handshake(c)
            socks.append(c)
        extra = connect(s.port)
        refused = closed_by_server(extra, 5)
        extra.close()
        socks.pop().close()
        time.sleep(0.2)
        again = connect(s.port)
        handshake(again)  # room again
        socks.append(again)
        assert all(not closed_by_server(c, 0.01) for c in socks)
        assert s.alive()
    finally:
        for c in socks:
            c.close()
        rc = s.stop()
    assert rc == 0
    lines = [ln for ln in s.log_text().splitlines() if "refused:" in ln]
    return {"limit": limit, "extra_refused": refused, "log_lines": len(lines)}


def idle_timeout(work: str, ms: int = 400) -> dict:
    data = os.path.join(work, "idlet")
    with umlog.open(data) as b:
        b.create_topic("lp")
    s = Server(data, "--idle-timeout-ms", str(ms))
    s.start()
    try:
        silent = connect(s.port)
        handshake(silent)
        busy = connect(s.port)
        handshake(busy)
        poll = connect(s.port)
        handshake(poll)
        poll.sendall(fetch("lp", max_wait_ms=3 * ms, corr=5))  # a long poll longer than the timeout
        t0 = time.monotonic()
        closed_after = None
        long_poll_ok = None
        while time.monotonic() - t0 < 6 * ms / 1000:
            handshake(busy)
            if closed_after is None and closed_by_server(silent, 0.02):
                closed_after = time.monotonic() - t0
            if long_poll_ok is None and time.monotonic() - t0 > 3 * ms / 1000 + 0.3:
                poll.settimeout(2)
                f = recv_frame(poll)
                long_poll_ok = f is not None and struct.unpack_from(">i", f)[0] == 5
            time.sleep(ms / 8000)
        busy_alive = not closed_by_server(busy, 0.01)
        for c in (silent, busy, poll):
            c.close()
    finally:
        rc = s.stop()
    assert rc == 0
    return {"idle_timeout_ms": ms, "silent_closed_after_s": closed_after and round(closed_after, 2),
            "busy_kept": busy_alive, "long_poll_answered": long_poll_ok}


def max_request_size(work: str, limit: int = 65536) -> dict:
    from fuzz_kafka import produce_request

    from umlog._native.core import encode_batch

    data = os.path.join(work, "maxreq")
    with umlog.open(data) as b:
        b.create_topic("big-req")
    s = Server(data, "--max-request-size", str(limit))
    s.start()
    try:
        ok = connect(s.port)
        body = produce_request("big-req", 0, encode_batch([b"x" * (limit - 2000)]))
        ok.sendall(frame(body, 1))
        f = recv_frame(ok)
        resp, _ = entity_reader(load_response_schema(0, 9))(f, 5)
        small_code = resp.responses[0].partition_responses[0].error_code
        ok.close()
        big = connect(s.port)
        body = produce_request("big-req", 0, encode_batch([b"x" * (limit + 10)]))
        try:
            big.sendall(frame(body, 2))
        except (BrokenPipeError, ConnectionResetError):
            pass
        big_closed = closed_by_server(big, 5)
        big.close()
        assert s.alive()
    finally:
        rc = s.stop()
    assert rc == 0
    lines = [ln for ln in s.log_text().splitlines() if "bad frame length" in ln]
    return {"limit": limit, "under_limit_error_code": small_code, "over_limit_closed": big_closed,
            "log_lines": len(lines)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--idle", type=int, default=1000, help="idle connections to open")
    ap.add_argument("--slow", type=int, default=8, help="slow consumer connections")
    ap.add_argument("--data-mb", type=int, default=64)
    ap.add_argument("--fetch-max-bytes", type=int, default=1 << 20)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="umlog-limits-")
    try:
        for name, fn in (("max_request_size", lambda: max_request_size(work)),
                         ("max_connections", lambda: max_connections(work)),
                         ("idle_timeout", lambda: idle_timeout(work)),
                         ("idle_connections", lambda: idle_connections(work, a.idle)),
                         ("slow_consumers", lambda: slow_consumers(work, a.slow, data_mb=a.data_mb,
                                                                  fetch_max_bytes=a.fetch_max_bytes))):
            r = fn()
            print(name, " ".join(f"{k}={v}" for k, v in r.items()), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

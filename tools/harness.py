"""Shared pieces of the hardening tools (and of ``tests/hardening``, which import them).

* ``Server``: a ``python -m umlog serve`` child on a FIXED loopback port (so
  clients reconnect to the same address after a SIGKILL and restart), with its
  stderr in a file, ``kill()`` (SIGKILL), ``stop()`` (SIGTERM, exit code),
  ``rss_kb()`` and ``cpu_s()`` from /proc;
* ``free_port()``; ``check_data_dir()``: every segment of a data dir scanned
  batch by batch with CRCs (what a stopped server left on disk must be whole);
* ``read_all()``: every record of a topic, read with the embedded API.

Everything talks to 127.0.0.1 only. Nothing here starts a process it does not
also stop: callers use ``with Server(...)`` or ``try/finally: server.stop()``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # tools run from a checkout: prefer its built tree (build_ext --inplace)
    sys.path.append(ROOT)

import umlog  # noqa: E402

# The directory holding the umlog the child must import (this process's one).
UMLOG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(umlog.__file__)))
READY = re.compile(r"umlog ready kafka=\S+:(\d+)")
CLK_TCK = os.sysconf("SC_CLK_TCK")

__all__ = ["Server", "free_port", "check_data_dir", "read_all", "rss_kb", "cpu_s", "ROOT"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def child_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = UMLOG_PARENT + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONSAFEPATH"] = "1"  # an unbuilt checkout in the cwd must not shadow the installed package
    if extra:
        env.update(extra)
    return env


class Server:
    """``umlog serve --data-dir DIR --kafka 127.0.0.1:PORT ARGS...``; restartable.

    ``start()`` returns once the child printed its ready line, with
    ``startup_s`` set to the time that took (interpreter start included).
    """

    def __init__(self, data_dir: str, *args: str, port: int | None = None, env: dict | None = None,
                 log_path: str | None = None) -> None:
        self.data_dir = data_dir
        self.args = list(args)
        # port=0: the OS picks one (read back from the ready line; kept for restarts).
        self.port = free_port() if port is None else port
        self.env = env
        self.log_path = log_path or (os.path.abspath(data_dir).rstrip("/") + ".server.log")
        self.proc: subprocess.Popen | None = None
        self.startup_s = 0.0
        self.starts = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 120.0) -> Server:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        os.makedirs(os.path.dirname(os.path.abspath(self.data_dir)), exist_ok=True)
        log = open(self.log_path, "a")
        log.write(f"--- start {self.starts} ---\n")
        log.flush()
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "umlog", "serve", "--data-dir", self.data_dir,
             "--kafka", f"127.0.0.1:{self.port}", "--http", "127.0.0.1:0", *self.args],
            stdout=subprocess.PIPE, stderr=log, text=True, env=child_env(self.env),
            cwd=os.path.dirname(os.path.abspath(self.data_dir)),
        )
        log.close()
        self.starts += 1
        deadline = t0 + timeout
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = READY.search(line)
            if m:
                self.port = int(m.group(1))
                self.startup_s = time.monotonic() - t0
                return self
        self.kill()
        raise RuntimeError(f"umlog serve did not get ready: {line!r}\n{self.log_text()[-3000:]}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL (an unclean stop: no flush, no ``.clean``)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._close_pipes()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait (SIGKILL after ``timeout``); the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_pipes()
        return self.proc.returncode

    def _close_pipes(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def log_text(self) -> str:
        try:
            with open(self.log_path) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def rss_kb(self) -> int:
        return rss_kb(self.pid)

    def cpu_s(self) -> float:
        return cpu_s(self.pid)

    def __enter__(self) -> Server:
        return self.start() if not self.alive() else self

    def __exit__(self, *exc) -> None:
        self.stop()


def check_data_dir(data_dir: str) -> dict:
    """Scan every ``.log`` under ``data_dir`` with CRC checks: every byte must
    belong to a whole, valid batch, and offsets must be dense within a
    partition. Returns {"batches", "bytes", "partitions"}; raises AssertionError."""
    from umlog._native.core import scan_batches

    batches = total = parts = 0
    for entry in sorted(os.listdir(data_dir)):
        d = os.path.join(data_dir, entry)
        if entry == "meta" or not os.path.isdir(d):
            continue
        parts += 1
        expect = None
        for name in sorted(n for n in os.listdir(d) if n.endswith(".log")):
            with open(os.path.join(d, name), "rb") as f:
                data = f.read()
            if not data:
                continue
            # Offsets must follow on from the segment's name (its base offset)
            # and from the previous segment: dense, as the engine promises.
            base = int(name[:20])
            assert expect is None or base == expect, f"{d}/{name}: named {base}, previous ends at {expect}"
            res = scan_batches(data, 0, len(data), base, True)
            assert res.error is None and res.valid_end == len(data), (
                f"{d}/{name}: bad batch at position {res.valid_end} of {len(data)}: {res.error}")
            expect = int(res.next_offset)
            batches += res.count
            total += len(data)
    return {"batches": batches, "bytes": total, "partitions": parts}


def read_all(data_dir: str, topic: str) -> list[dict[int, bytes]]:
    """{offset: value} for every partition of ``topic`` (opened read-only)."""
    b = umlog.open(data_dir, readonly=True)
    try:
        t = b.topic(topic)
        return [{r.offset: r.value for r in p.read(p.start_offset)} for p in t.partitions]
    finally:
        b.close()

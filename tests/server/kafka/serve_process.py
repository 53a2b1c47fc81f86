"""Run ``python -m umlog serve`` as a subprocess on a free loopback port (tests only)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

from helpers import scaled, subprocess_env

# The child runs the same umlog the tests import (subprocess_env), from a
# neutral working directory.
READY = re.compile(r"umlog ready kafka=127\.0\.0\.1:(\d+)")


class ServeProcess:
    """A ``umlog serve`` child: ``.port``, ``.pid``, ``.stderr_text()``; ``stop()`` sends SIGTERM."""

    def __init__(self, data_dir: str, *args: str, timeout: float = 30.0, verbose: int = 0) -> None:
        self.data_dir = data_dir
        env = subprocess_env()
        # -vv logs the group coordinator's joins and state changes: what a test
        # waits on when the clients cannot show it (e.g. a generation).
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "umlog", *["-v"] * verbose, "serve", "--data-dir", data_dir,
             "--kafka", "127.0.0.1:0", "--http", "127.0.0.1:0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=os.path.dirname(data_dir) or ".", env=env,
        )
        self._err: list[str] = []
        self._t = threading.Thread(target=self._drain_stderr, daemon=True)
        self._t.start()
        deadline = time.monotonic() + scaled(timeout)
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = READY.search(line)
            if m:
                self.port = int(m.group(1))
                # every door's address: {"kafka": ("127.0.0.1", 9092), "mqtt": ..., "http": ...}
                # (HTTP is on by default: it listens on a port of the OS's here, never 8080)
                self.addresses = {k: (h, int(p)) for k, h, p in re.findall(r"([\w-]+)=(\S+):(\d+)", line)}
                return
        self.proc.kill()
        self.proc.wait()
        self._t.join(scaled(2))
        self.proc.stdout.close()
        self.proc.stderr.close()
        raise RuntimeError(f"umlog serve did not get ready: {line!r}\n{self.stderr_text()}")

    def _drain_stderr(self) -> None:
        for line in self.proc.stderr:
            self._err.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stderr_text(self) -> str:
        return "".join(self._err)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(scaled(timeout))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._t.join(scaled(2))
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        return self.proc.returncode

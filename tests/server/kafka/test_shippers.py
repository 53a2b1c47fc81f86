"""A real log pipeline: rsyslog's Kafka output (omkafka, librdkafka inside)
ships syslog lines into a topic of a real ``umlog serve``; every line is read back.

Needs the Debian packages rsyslog and rsyslog-kafka (``.ci/run`` installs them).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time

import pytest

import umlog

from .serve_process import ServeProcess

pytestmark = pytest.mark.clients

RSYSLOGD = shutil.which("rsyslogd") or ("/usr/sbin/rsyslogd" if os.path.exists("/usr/sbin/rsyslogd") else None)
OMKAFKA = any(
    os.path.exists(os.path.join(d, "omkafka.so"))
    for d in ("/usr/lib/x86_64-linux-gnu/rsyslog", "/usr/lib/aarch64-linux-gnu/rsyslog", "/usr/lib/rsyslog")
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not (RSYSLOGD and OMKAFKA), reason="needs rsyslog and rsyslog-kafka (apt-get install)")
@pytest.mark.parametrize("codec", ["none", "snappy"])
def test_rsyslog_ships_lines_into_a_topic(tmp_path, codec):
    server = ServeProcess(str(tmp_path / "data"), "--default-partitions", "2")
    work = tmp_path / "rsyslog"
    work.mkdir()
    port = free_port()
    conf = work / "rsyslog.conf"
    conf.write_text(f"""
global(workDirectory="{work}")
module(load="imtcp")
module(load="omkafka")
template(name="msgonly" type="string" string="%msg:2:$%")
ruleset(name="tokafka") {{
  action(type="omkafka" broker=["{server.bootstrap}"] topic="syslog" template="msgonly"
         partitions.auto="on" confParam=["compression.codec={codec}", "queue.buffering.max.ms=10"])
}}
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="tokafka")
""")
    rsyslog = subprocess.Popen(
        [RSYSLOGD, "-n", "-f", str(conf), "-i", str(work / "rsyslogd.pid")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(work),
    )
    n = 2000
    try:
        deadline = time.monotonic() + 20
        while True:  # wait for rsyslog's listener
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                assert rsyslog.poll() is None, rsyslog.stdout.read().decode()
                assert time.monotonic() < deadline, "rsyslog did not listen"
                time.sleep(0.05)
        with sock:
            lines = b"".join(
                b"<13>Nov 26 12:00:00 host app[42]: line %d of the pipeline\n" % i for i in range(n)
            )
            sock.sendall(lines)
        # Read back through a read-only tailer of the server's data dir.
        deadline = time.monotonic() + 30
        got: list[bytes] = []
        while time.monotonic() < deadline:
            with umlog.open(server.data_dir, readonly=True) as r:
                if "syslog" in r.topics():
                    t = r.topic("syslog")
                    got = [rec.value for p in t.partitions for rec in p.read()]
            if len(got) >= n:
                break
            time.sleep(0.2)
        assert sorted(got) == sorted(b"line %d of the pipeline" % i for i in range(n))
    finally:
        rsyslog.terminate()
        try:
            rsyslog.wait(10)
        except subprocess.TimeoutExpired:
            rsyslog.kill()
            rsyslog.wait()
        rsyslog.stdout.close()
        assert server.stop() == 0, server.stderr_text()
    assert "Traceback" not in server.stderr_text()

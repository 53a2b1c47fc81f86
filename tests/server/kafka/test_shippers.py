"""A real log pipeline: rsyslog's Kafka output (omkafka, librdkafka inside)
ships syslog lines into a topic of a real ``umlog serve``; every line is read back.

Needs the Debian packages rsyslog and rsyslog-kafka (``.ci/run`` installs them).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest
from helpers import require_tool, scaled, wait_until

import umlog

from .serve_process import ServeProcess

pytestmark = pytest.mark.clients

RSYSLOGD = shutil.which("rsyslogd") or ("/usr/sbin/rsyslogd" if os.path.exists("/usr/sbin/rsyslogd") else None)
OMKAFKA = any(
    os.path.exists(os.path.join(d, "omkafka.so"))
    for d in ("/usr/lib/x86_64-linux-gnu/rsyslog", "/usr/lib/aarch64-linux-gnu/rsyslog", "/usr/lib/rsyslog")
)


@pytest.mark.parametrize("codec", ["none", "snappy"])
def test_rsyslog_ships_lines_into_a_topic(tmp_path, codec):
    require_tool(RSYSLOGD, "rsyslogd", "apt-get install rsyslog")
    require_tool("omkafka" if OMKAFKA else None, "rsyslog's omkafka module", "apt-get install rsyslog-kafka")
    server = ServeProcess(str(tmp_path / "data"), "--default-partitions", "2")
    work = tmp_path / "rsyslog"
    work.mkdir()
    port_file = work / "imtcp.port"
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
input(type="imtcp" address="127.0.0.1" port="0" listenPortFileName="{port_file}" ruleset="tokafka")
""")
    rsyslog = subprocess.Popen(
        [RSYSLOGD, "-n", "-f", str(conf), "-i", str(work / "rsyslogd.pid")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(work),
    )
    n = 2000
    try:
        # Port 0: the OS picks a free port and rsyslog writes it down once it listens.
        def listening():
            assert rsyslog.poll() is None, rsyslog.stdout.read().decode()
            text = port_file.read_text().strip() if port_file.exists() else ""
            return int(text) if text.isdigit() else None

        port = wait_until(listening, 20, "rsyslog's listener")
        with socket.create_connection(("127.0.0.1", port), timeout=scaled(10)) as sock:
            lines = b"".join(
                b"<13>Nov 26 12:00:00 host app[42]: line %d of the pipeline\n" % i for i in range(n)
            )
            sock.sendall(lines)
        # Read back through a read-only tailer of the server's data dir.
        got: list[bytes] = []

        def shipped():
            nonlocal got
            with umlog.open(server.data_dir, readonly=True) as r:
                if "syslog" in r.topics():
                    got = [rec.value for p in r.topic("syslog").partitions for rec in p.read()]
            return len(got) >= n

        wait_until(shipped, 60, f"{n} lines in the topic", interval=0.2)
        assert sorted(got) == sorted(b"line %d of the pipeline" % i for i in range(n))
    finally:
        rsyslog.terminate()
        try:
            rsyslog.wait(scaled(10))
        except subprocess.TimeoutExpired:
            rsyslog.kill()
            rsyslog.wait()
        rsyslog.stdout.close()
        assert server.stop() == 0, server.stderr_text()
    assert "Traceback" not in server.stderr_text()

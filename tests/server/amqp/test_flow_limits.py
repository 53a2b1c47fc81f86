"""What holds AMQP traffic back or ends it, against a real ``umlog serve``:
channel.flow, connection.blocked/unblocked when the data dir's disk runs low,
x-expires deleting an unused queue, and missed heartbeats closing a connection."""

from __future__ import annotations

import os
import time

import pika
from helpers import scaled, wait_until
from pamqp import commands as cmd

from server.amqp.amqp_helpers import Raw, connect, name
from server.kafka.serve_process import ServeProcess


def test_channel_flow_stops_and_resumes_deliveries(server):
    q = name("flow")
    got = []
    with connect(server) as c:
        ch = c.channel()
        ch.queue_declare(q)
        for i in range(3):
            ch.basic_publish("", q, b"m%d" % i)
        assert ch.flow(False) is False
        ch.basic_consume(q, lambda _ch, m, p, b: got.append(b), auto_ack=True)
        c.process_data_events(time_limit=scaled(1.0))
        assert got == []
        assert ch.flow(True) is True
        deadline = time.monotonic() + scaled(10)
        while len(got) < 3 and time.monotonic() < deadline:
            c.process_data_events(time_limit=0.1)
    assert got == [b"m0", b"m1", b"m2"]


def _exists(c: pika.BlockingConnection, q: str) -> bool:
    ch = c.channel()
    try:
        ch.queue_declare(q, passive=True)
    except pika.exceptions.ChannelClosedByBroker as e:
        assert e.reply_code == 404
        return False
    ch.close()
    return True


def test_x_expires_deletes_a_queue_unused_that_long(server):
    idle, used = name("expires-idle"), name("expires-used")
    with connect(server) as c:
        ch = c.channel()
        t0 = time.monotonic()
        ch.queue_declare(idle, arguments={"x-expires": 600})
        ch.queue_declare(used, arguments={"x-expires": 600})
        tag = ch.basic_consume(used, lambda *a: None)
        # a passive declare renews the lease too (as RabbitMQ's redeclare): look less often than it lasts
        wait_until(lambda: not _exists(c, idle), 10, "the unused queue deleted", interval=1.0)
        assert time.monotonic() - t0 >= 0.5
        time.sleep(scaled(1.0))  # a queue with a consumer is in use
        assert _exists(c, used)
        ch.basic_cancel(tag)
        t1 = time.monotonic()
        wait_until(lambda: not _exists(c, used), 10, "the queue deleted once its consumer went", interval=1.0)
        assert time.monotonic() - t1 >= 0.5


def _heartbeat_client(server, heartbeat: int) -> Raw:
    r = Raw(server)
    r.handshake(heartbeat=heartbeat)
    return r


def test_a_client_that_misses_heartbeats_is_disconnected(server):
    silent, beating = _heartbeat_client(server, 1), _heartbeat_client(server, 1)
    try:
        t0 = time.monotonic()
        silent.sock.settimeout(scaled(10))
        frames = []
        while True:
            f = silent.frame()
            if f is None:
                break
            frames.append(f)
        # closed after two intervals without a frame from it, not at the first one missed
        assert time.monotonic() - t0 >= 1.5
        assert frames and all(type(f).__name__ == "Heartbeat" for f in frames)
        # one that sends its heartbeats stays, and still answers
        for _ in range(6):
            beating.send(b"\x08\x00\x00\x00\x00\x00\x00\xce")
            time.sleep(0.5)
        beating.method(1, cmd.Channel.Open())
        while True:
            f = beating.frame()
            assert f is not None, "the server closed a connection that sent heartbeats"
            if isinstance(f, cmd.Channel.OpenOk):
                break
    finally:
        silent.close()
        beating.close()


def _free_mb(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize // 2**20


def _fill(path: str, mb: int) -> None:
    """Take ``mb`` of the file system's free space (allocated, not written, where it can)."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, mb * 2**20)
        except OSError:  # a file system without fallocate: write it
            chunk = b"\0" * 2**20
            for _ in range(mb):
                os.write(fd, chunk)
    finally:
        os.close(fd)


def test_publishers_are_blocked_while_the_disk_is_low_and_unblocked_after(tmp_path):
    data = str(tmp_path / "data")
    os.makedirs(data)
    free = _free_mb(data)
    margin = min(1024, free // 4)  # room for other writers of the disk meanwhile, either way
    limit = free - margin
    s = ServeProcess(data, "--amqp", "127.0.0.1:0", "--amqp-disk-free-limit-mb", str(limit))
    filler = str(tmp_path / "filler")
    events: list[str] = []
    q = name("disk")
    try:
        with connect(s) as pub, connect(s) as sub:
            pub.add_on_connection_blocked_callback(lambda *a: events.append("blocked"))
            pub.add_on_connection_unblocked_callback(lambda *a: events.append("unblocked"))
            pch, sch = pub.channel(), sub.channel()
            sch.queue_declare(q)
            pch.basic_publish("", q, b"before")
            assert wait_until(lambda: sch.basic_get(q, auto_ack=True)[2], 10, "the first message") == b"before"
            _fill(filler, 3 * margin)

            def wait_for(what):
                deadline = time.monotonic() + scaled(10)
                while what not in events and time.monotonic() < deadline:
                    pub.process_data_events(time_limit=0.1)
                assert what in events, f"no connection.{what} (events: {events})"

            wait_for("blocked")
            pch.basic_publish("", q, b"while blocked")  # sent, but not read by the server until unblocked
            # a connection that first publishes during the alarm is held from that publish on
            late = connect(s)
            lch = late.channel()
            lch.basic_publish("", q, b"late 1")
            late.process_data_events(time_limit=0.5)
            lch.basic_publish("", q, b"late 2")
            sub.process_data_events(time_limit=scaled(1.5))
            assert sch.basic_get(q, auto_ack=True)[2] in (None, b"late 1")
            assert sch.basic_get(q, auto_ack=True)[0] is None
            os.unlink(filler)
            wait_for("unblocked")
            got = set()
            wait_until(lambda: got.add(sch.basic_get(q, auto_ack=True)[2]) or {b"while blocked", b"late 2"} <= got,
                       10, "the messages published while blocked")
            late.close()
        assert events == ["blocked", "unblocked"]
        assert "blocking publishers" in s.stderr_text()
    finally:
        if os.path.exists(filler):
            os.unlink(filler)
        s.stop()


"""The hub under the doors: a second door, written here in a few lines, shares
wake-ups, connection limits and the durability gate with the Kafka door."""

from __future__ import annotations

import asyncio
import threading

import pytest
from helpers import scaled

import umlog
from umlog.server.door import Door
from umlog.server.hub import Hub
from umlog.server.kafka import KafkaDoor
from umlog.server.settings import Setting, parse_hostport


class LineDoor(Door):
    """A toy protocol: a client sends ``WAIT <topic> <partition>`` and gets
    ``NEW <end offset>`` at the next append to that partition, by anyone."""

    name = "line"
    settings = (Setting("line", "listen", "hostport", None, "toy door"),)

    async def start(self) -> str:
        host, port = parse_hostport(self.options["listen"])
        self._server = await asyncio.start_server(self._serve, host, port)
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def drain(self) -> None:
        self._server.close()

    async def close(self) -> None:
        self._server.close()

    async def _serve(self, reader, writer) -> None:
        conn = LineConnection(self, writer)
        if not self.hub.admit(conn):
            writer.close()
            return
        try:
            while line := await reader.readline():
                _, topic, index = line.decode().split()
                fut = asyncio.get_running_loop().create_future()
                self.hub.add_waiter([(topic, int(index))], fut)
                await fut
                writer.write(b"NEW %d\n" % self.hub.broker.topic(topic).partition(int(index)).end_offset)
                await writer.drain()
        finally:
            self.hub.forget(conn)
            writer.close()


class LineConnection:
    def __init__(self, door, writer) -> None:
        self.door, self.writer, self.peer = door, writer, str(writer.get_extra_info("peername"))
        self.idle, self.last_active = True, 0.0

    def close(self) -> None:
        self.writer.close()

    def close_idle(self, seconds: float) -> None:
        self.close()


@pytest.fixture
def broker(tmp_path):
    with umlog.open(str(tmp_path / "data")) as b:
        b.create_topic("t")
        yield b


def _produce_with_librdkafka(bootstrap: str, value: bytes) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "socket.timeout.ms": int(scaled(10_000))})
    p.produce("t", value, partition=0)
    assert p.flush(scaled(20)) == 0


def test_a_second_door_is_woken_by_kafka_and_embedded_appends_and_shares_the_connection_limit(broker):
    async def main():
        hub = Hub(broker, max_connections=3)
        kafka = KafkaDoor(hub, {"listen": "127.0.0.1:0"})
        line = LineDoor(hub, {"listen": "127.0.0.1:0"})
        kafka_addr, line_addr = await kafka.start(), await line.start()
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection(*parse_hostport(line_addr))

        async def next_wake(append) -> bytes:
            writer.write(b"WAIT t 0\n")
            await writer.drain()
            while not hub.waiters:  # the door has registered its waiter
                await asyncio.sleep(0.01)
            await loop.run_in_executor(None, append)
            return await asyncio.wait_for(reader.readline(), scaled(20))

        # an append through the Kafka door, by a real client
        assert await next_wake(lambda: _produce_with_librdkafka(kafka_addr, b"k")) == b"NEW 1\n"
        # an append through the embedded API, from another thread of this process
        assert await next_wake(lambda: broker.topic("t").append_many([b"e1", b"e2"], partition=0)) == b"NEW 3\n"

        # one line connection is open; with a raw Kafka connection that makes 2
        # of 3; the third (to either door) is the last admitted, the fourth refused
        k_reader, k_writer = await asyncio.open_connection(*parse_hostport(kafka_addr))
        while len(hub.connections) < 2:
            await asyncio.sleep(0.01)
        assert {c.door.name for c in hub.connections} == {"kafka", "line"}
        r3, w3 = await asyncio.open_connection(*parse_hostport(line_addr))
        while len(hub.connections) < 3:
            await asyncio.sleep(0.01)
        r4, w4 = await asyncio.open_connection(*parse_hostport(kafka_addr))
        assert await asyncio.wait_for(r4.read(), scaled(10)) == b""  # closed at once
        assert hub.refused_total == 1 and len(hub.connections) == 3
        for w in (writer, k_writer, w3, w4):
            w.close()
        await hub.drain([kafka, line], 1.0)
        hub.close()

    asyncio.run(asyncio.wait_for(main(), scaled(60)))


def test_fsync_always_appends_from_other_threads_sync_before_they_return(tmp_path):
    # The loop's thread defers its syncs to the hub's gate; any other thread's
    # embedded append is durable when it returns, as without a server.
    with umlog.open(str(tmp_path / "data"), fsync="always") as b:
        t = b.create_topic("t")

        async def main():
            hub = Hub(b)
            p = t.partition(0)
            t.append_many([b"on the loop"], partition=0)
            assert p.flushed_offset == 0  # deferred: the loop never waits on a disk
            await hub.durable({p: p.end_offset})
            assert p.flushed_offset == 1
            done = []
            th = threading.Thread(target=lambda: done.append((t.append_many([b"thread"], partition=0),
                                                               p.flushed_offset)))
            th.start()
            await asyncio.get_running_loop().run_in_executor(None, th.join)
            (offsets, flushed), = done
            assert list(offsets) == [1] and flushed == 2
            hub.close()

        asyncio.run(main())


def test_a_failing_fdatasync_fails_the_waiters_and_the_gate_keeps_working(tmp_path, monkeypatch):
    with umlog.open(str(tmp_path / "data"), fsync="always") as b:
        t = b.create_topic("t")
        p = t.partition(0)
        real = p.sync_through
        calls = []

        def flaky(offset):
            calls.append(offset)
            if len(calls) == 1:
                raise OSError(5, "Input/output error (injected)")
            return real(offset)

        monkeypatch.setattr(p, "sync_through", flaky)

        async def main():
            hub = Hub(b)
            t.append_many([b"a"], partition=0)
            with pytest.raises(OSError):
                await hub.durable({p: p.end_offset})
            t.append_many([b"b"], partition=0)
            await hub.durable({p: p.end_offset})
            assert p.flushed_offset == 2
            hub.close()

        asyncio.run(main())

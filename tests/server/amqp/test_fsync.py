"""Under fsync=always a publisher confirm means the message is fdatasynced: the
door in-process over an engine whose segment syncs are watched, aio-pika as the
client on the same loop."""

from __future__ import annotations

import asyncio

import aio_pika
from helpers import scaled

import umlog
from umlog.server.amqp import AmqpDoor
from umlog.server.hub import Hub


def test_a_confirm_comes_after_an_fdatasync_that_started_after_the_append(tmp_path, monkeypatch):
    from umlog.log import segment as segment_mod

    started, watched = [], []
    real = segment_mod.LogSegment.sync

    def spy(seg):
        if watched:  # the default exchange's end offset when this fdatasync started
            started.append(watched[0].end_offset)
        return real(seg)

    monkeypatch.setattr(segment_mod.LogSegment, "sync", spy)
    b = umlog.open(str(tmp_path / "d"), fsync="always")

    async def main():
        hub = Hub(b)
        door = AmqpDoor(hub, {"listen": "127.0.0.1:0"})
        host, port = (await door.start()).rsplit(":", 1)
        try:
            conn = await aio_pika.connect(f"amqp://guest:guest@{host}:{port}/", timeout=scaled(10))
            async with conn:
                ch = await conn.channel(publisher_confirms=True)
                await ch.declare_queue("durable", durable=True)
                p = b.topic("amq.default").partition(0)
                watched.append(p)
                for n in (1, 2, 3):
                    await ch.default_exchange.publish(aio_pika.Message(b"m%d" % n, delivery_mode=2), "durable")
                    assert p.flushed_offset >= p.end_offset == n
                    assert started and started[-1] >= n
        finally:
            await door.close()
            hub.close()

    try:
        asyncio.run(asyncio.wait_for(main(), scaled(60)))
    finally:
        b.close()

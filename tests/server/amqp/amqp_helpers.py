"""pika helpers and a raw frame client for the AMQP door tests."""

from __future__ import annotations

import socket
import struct
import uuid

import pika
from helpers import scaled
from pamqp import commands as cmd
from pamqp import frame as pframe


def params(server, **kw) -> pika.ConnectionParameters:
    host, port = server.addresses["amqp"]
    return pika.ConnectionParameters(host, port, credentials=pika.PlainCredentials("guest", "guest"),
                                     blocked_connection_timeout=scaled(30), socket_timeout=scaled(10), **kw)


def connect(server, **kw) -> pika.BlockingConnection:
    return pika.BlockingConnection(params(server, **kw))


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def drain(ch, queue: str, n: int, timeout: float = 10.0, auto_ack: bool = False) -> list:
    """n messages from ``queue`` through basic.consume: [(method, properties, body)]."""
    got = []
    for m, p, b in ch.consume(queue, auto_ack=auto_ack, inactivity_timeout=scaled(timeout)):
        if m is None:
            break
        got.append((m, p, b))
        if len(got) == n:
            break
    ch.cancel()
    return got


class Raw:
    """A socket speaking AMQP frame by frame (the error paths)."""

    def __init__(self, server) -> None:
        self.sock = socket.create_connection(server.addresses["amqp"], timeout=scaled(10))
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def method(self, ch: int, m) -> None:
        self.send(pframe.marshal(m, ch))

    def read_raw(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def frame(self):
        head = self.read_raw(7)
        if len(head) < 7:
            return None
        _, _, size = struct.unpack(">BHI", head)
        rest = self.read_raw(size + 1)
        return pframe.unmarshal(head + rest)[2]

    def closed(self) -> bool:
        """True once the server closed the socket."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except OSError:
            return True

    def handshake(self, frame_max: int = 131072, heartbeat: int = 0, user: str = "guest",
                  password: str = "guest") -> None:
        self.send(b"AMQP\x00\x00\x09\x01")
        assert isinstance(self.frame(), cmd.Connection.Start)
        self.method(0, cmd.Connection.StartOk(client_properties={}, mechanism="PLAIN",
                                              response=f"\0{user}\0{password}"))
        tune = self.frame()
        assert isinstance(tune, cmd.Connection.Tune)
        self.method(0, cmd.Connection.TuneOk(channel_max=tune.channel_max, frame_max=frame_max,
                                             heartbeat=heartbeat))
        self.method(0, cmd.Connection.Open(virtual_host="/"))
        assert isinstance(self.frame(), cmd.Connection.OpenOk)

    def close(self) -> None:
        self.sock.close()

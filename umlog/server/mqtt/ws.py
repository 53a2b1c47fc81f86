"""MQTT over WebSocket: aiohttp's WebSocket server on the door's loop.

Theory of operation
-------------------
Any path is accepted; the client must offer the subprotocol ``mqtt`` (MQTT's
section 6), which the answer selects (else HTTP 400). Binary messages carry
MQTT bytes: a message may hold several packets or part of one, so the bytes
are fed to the same ``MqttConnection`` a TCP client gets, through
``WsTransport``, which gives it the few transport methods it uses. A text
message is a protocol error and closes the connection.

Writes are buffered and sent by one writer task per connection, in order, one
binary message per batch of frames; ``close`` sends what is buffered, then the
WebSocket close. ``pause_reading`` stops reading messages until
``resume_reading``.
"""

from __future__ import annotations

import asyncio
import logging

__all__ = ["WebSocketListener", "WsTransport"]

log = logging.getLogger("umlog.server.mqtt")


class WsTransport:
    """The asyncio transport methods ``MqttConnection`` uses, over an aiohttp WebSocket."""

    def __init__(self, ws, peer) -> None:
        self.ws = ws
        self.peer = peer
        self._buf = bytearray()
        self._wake = asyncio.Event()
        self._readable = asyncio.Event()
        self._readable.set()
        self._closing = False
        self._aborted = False
        self.done = asyncio.Event()

    def get_extra_info(self, name: str, default=None):
        return self.peer if name == "peername" else default

    def write(self, data: bytes) -> None:
        if not self._closing:
            self._buf += data
            self._wake.set()

    def is_closing(self) -> bool:
        return self._closing

    def can_write_eof(self) -> bool:
        return False  # a WebSocket closes with a close frame, never half

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        self._readable.set()

    def abort(self) -> None:
        self._aborted = True
        self.close()

    def pause_reading(self) -> None:
        self._readable.clear()

    def resume_reading(self) -> None:
        self._readable.set()

    def is_reading(self) -> bool:
        return self._readable.is_set()

    async def writer(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._buf and not self._aborted:
                    data = bytes(self._buf)
                    self._buf.clear()
                    await self.ws.send_bytes(data)
                if self._closing and not self._buf:
                    break
        except (ConnectionError, RuntimeError):  # the peer went away
            pass
        finally:
            self._closing = True
            if not self.ws.closed:
                try:
                    await self.ws.close()
                except (ConnectionError, RuntimeError):
                    pass
            self.done.set()


class WebSocketListener:
    """The ``ws_listen`` listener of one door."""

    def __init__(self, door) -> None:
        self.door = door
        self.runner = None
        self.site = None
        self.serving = False
        self.transports: set[WsTransport] = set()

    async def start(self, host: str, port: int, ssl_context=None):
        """Listen (``wss://`` with an ``ssl_context``); the address bound."""
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/{path:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        self.site = web.TCPSite(self.runner, host, port, reuse_address=True, shutdown_timeout=1.0,
                                ssl_context=ssl_context)
        await self.site.start()
        self.serving = True
        return self.site._server.sockets[0].getsockname()

    def stop_accepting(self) -> None:
        self.serving = False
        if self.site is not None and self.site._server is not None:
            self.site._server.close()

    async def close(self) -> None:
        self.stop_accepting()
        for t in list(self.transports):  # the hub closes their connections; the writers end them
            t.close()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def _handle(self, request):
        from aiohttp import WSMsgType, web

        from .protocol import MqttConnection

        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if "mqtt" not in offered:
            return web.Response(status=400, text="MQTT over WebSocket needs the subprotocol mqtt\n")
        if not self.serving:
            return web.Response(status=503, text="shutting down\n")
        ws = web.WebSocketResponse(protocols=("mqtt",), max_msg_size=self.door.max_packet_size + 16,
                                   autoping=True)
        await ws.prepare(request)
        t = WsTransport(ws, request.transport.get_extra_info("peername") if request.transport else None)
        conn = MqttConnection(self.door)
        conn.connection_made(t)
        writer = asyncio.get_running_loop().create_task(t.writer())
        self.transports.add(t)
        try:
            while not t.is_closing():
                if not t.is_reading():
                    await t._readable.wait()
                    continue
                msg = await ws.receive()
                if msg.type == WSMsgType.BINARY:
                    conn.data_received(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    log.info("mqtt-ws %s: a text message; closing connection", conn.peer)
                    break
                else:  # CLOSE, CLOSING, CLOSED, ERROR
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.transports.discard(t)
            conn.connection_lost(None)
            t.close()
            await writer
        return ws

"""One Kafka client connection: framing, ordering, backpressure.

Theory of operation
-------------------
Kafka requests are size-prefixed frames (``int32 length | header | body``).

* ``data_received`` is synchronous and cheap: it appends to a receive buffer,
  cuts whole frames out of it (each frame becomes its own ``bytearray``, so the
  Produce path can hand writable views of it to the engine), appends them to a
  deque and wakes the connection's task. A length below 8 or above
  ``max_request_size`` closes the connection (one log line).
* One task per connection takes frames in order and awaits each answer before
  the next one, so responses keep request order (Kafka itself "mutes" a channel
  while one of its requests is in flight; a long-polling Fetch therefore delays
  the requests behind it on the same connection, as in Kafka).
* Backpressure: reading pauses while more than ``door.max_queued_bytes``
  (default ``MAX_QUEUED_BYTES``) of frames wait, and resumes when the task has
  caught up; it also pauses while the transport's write buffer is over its
  high-water mark (``pause_writing``), until the client has read our answers
  (``resume_writing``). ``pause_writing`` / ``resume_writing`` also gate a drain
  future, awaited before the next request is answered. So a client that sends
  requests and never reads costs at most one answer (a Fetch answer is bounded
  by ``--fetch-max-bytes``) plus the frames read before the pause.
* Limits, kept by the hub for every door together: past ``--max-connections``
  a new connection is accepted and closed at once (``hub.admit`` logs it); a
  connection waiting for a request with no byte received for
  ``--idle-timeout-ms`` is closed by the hub's sweep (``close_idle``).
* ``connection_lost`` cancels the task; a long poll waiting in it is cancelled
  with it, which removes its waiters.

Security (``door.security`` set): ``principal`` is who the connection acts
as. On a SASL listener it is None until SaslAuthenticate succeeds (and
requests other than ApiVersions and the SASL ones close the connection,
``check_authenticated``); on any other listener it is the client
certificate's subject (mTLS) or ``User:ANONYMOUS``. A SASL session with a
lifetime (``connections_max_reauth_ms``, KIP-368) must be re-authenticated on
the same connection before it ends, or the next request closes it.

Errors: a frame that cannot be parsed, an unknown API key or an unsupported
version of an API kio has no schema for closes this connection only, with one
log line. Failures inside a handler become error codes (see ``dispatch``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
from typing import TYPE_CHECKING

from umlog.errors import RemoteProtocolError

from .dispatch import dispatch
from .handlers._share import close_connection_sessions

if TYPE_CHECKING:
    from .door import KafkaDoor

__all__ = ["KafkaProtocol", "MAX_QUEUED_BYTES"]

log = logging.getLogger("umlog.server.kafka")

# Pause reading above this many bytes of parsed-but-unanswered frames (one frame
# larger than this is still accepted: the bound is checked after queueing).
MAX_QUEUED_BYTES = 16 * 1024 * 1024
# Compact the receive buffer once this much of its head has been consumed.
_COMPACT_AT = 1 * 1024 * 1024


class KafkaProtocol(asyncio.Protocol):
    """asyncio protocol for one connection. Not thread-safe; lives on the door's loop."""

    def __init__(self, door: KafkaDoor, listener=None) -> None:
        self.door = door
        self.listener = listener  # door.KafkaListener (None: made by a test)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.host = "*"  # the client's IP address, as ACLs name hosts
        self.principal: str | None = None
        self.sasl = None  # the SASL exchange in progress (handlers/sasl_*.py)
        self.session_expires: float | None = None  # loop time a SASL session ends (KIP-368)
        self.close_after_answer = False  # a failed SASL authentication: answer, then close
        self._rbuf = bytearray()
        self._rpos = 0
        self._frames: collections.deque[bytearray] = collections.deque()
        self._queued = 0
        self._reading_paused = False
        self._wakeup: asyncio.Future | None = None
        self._drain: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self._writing_paused = False
        self.last_active = 0.0  # loop.time() of the last byte received or answer written

    # --- asyncio callbacks -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if isinstance(peer, tuple):
            self.host = peer[0]
        if self.door.security is not None and not (self.listener is not None and self.listener.sasl):
            from ..security import ANONYMOUS
            from ..security.tls import cert_principal

            self.principal = cert_principal(transport) or ANONYMOUS
        loop = asyncio.get_running_loop()
        self.last_active = loop.time()
        if not self.door.hub.admit(self):
            self._closing = True
            transport.close()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover - exotic sockets
                pass
        self._task = loop.create_task(self._run())

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self.door.hub.forget(self)
        if self.door.share_sessions:
            close_connection_sessions(self.door, self)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = asyncio.get_running_loop().create_future()
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._writing_paused = False
        self._update_reading()

    def _update_reading(self) -> None:
        """Pause reading while the client does not read our answers, or while
        more than max_queued_bytes of requests wait (resumed at half of it)."""
        limit = self.door.max_queued_bytes
        queued_over = self._queued > (limit // 2 if self._reading_paused else limit)
        pause = self._writing_paused or queued_over
        if pause == self._reading_paused or self._closing or self.transport is None:
            return
        self._reading_paused = pause
        if pause:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self.last_active = asyncio.get_running_loop().time()
        buf = self._rbuf
        buf += data
        pos = self._rpos
        end = len(buf)
        limit = self.door.max_request_size
        while end - pos >= 4:
            size = int.from_bytes(buf[pos:pos + 4], "big", signed=True)
            if size < 8 or size > limit:
                self.abort(f"bad frame length {size} (limit {limit})")
                return
            if end - pos - 4 < size:
                break
            frame = buf[pos + 4:pos + 4 + size]  # a copy: the frame owns its bytes
            pos += 4 + size
            self._frames.append(frame)
            self._queued += size
        if pos == end:
            buf.clear()
            pos = 0
        elif pos >= _COMPACT_AT:
            del buf[:pos]
            pos = 0
        self._rpos = pos
        if self._frames and self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)
        if self._queued > self.door.max_queued_bytes and not self._reading_paused:
            self._update_reading()

    def eof_received(self) -> bool | None:
        return None  # close the transport once the peer half-closes

    # --- the connection's task -------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self._closing:
                if not self._frames:
                    self._wakeup = loop.create_future()
                    await self._wakeup
                    self._wakeup = None
                    continue
                frame = self._frames.popleft()
                self._queued -= len(frame)
                if self._reading_paused:
                    self._update_reading()
                try:
                    pieces = await dispatch(self, frame)
                except RemoteProtocolError as e:
                    self.abort(str(e))
                    return
                del frame
                if pieces is not None and not self._closing:
                    self.transport.writelines(pieces)  # type: ignore[union-attr]
                    self.last_active = loop.time()
                    if self.close_after_answer:
                        self.close()
                        return
                    if self._drain is not None and not self._drain.done():
                        await self._drain
        except asyncio.CancelledError:
            pass
        except Exception as e:  # a bug of ours: close this client, keep the server
            log.error("kafka %s: internal error, closing: %r", self.peer, e,
                      exc_info=log.isEnabledFor(logging.DEBUG))
            self.abort(None)

    def check_authenticated(self, what: str) -> None:
        """Raise RemoteProtocolError (closing the connection) unless a principal is
        established and its SASL session, if it has a lifetime, has not ended."""
        if self.principal is None:
            raise RemoteProtocolError(f"{what} before SASL authentication")
        if self.session_expires is not None and asyncio.get_running_loop().time() > self.session_expires:
            raise RemoteProtocolError(f"{what} after the SASL session of {self.principal} expired "
                                      "(connections_max_reauth_ms)")

    def abort(self, reason: str | None) -> None:
        """Close this connection (one log line), leaving everyone else alone."""
        if reason is not None and not self._closing:
            log.warning("kafka %s: %s; closing connection", self.peer, reason)
        self._closing = True
        self._frames.clear()
        if self.transport is not None:
            self.transport.abort()

    def close_idle(self, idle_s: float) -> None:
        """Closed by the door's idle sweep (``--idle-timeout-ms``)."""
        log.info("kafka %s: idle for %.0f s; closing connection", self.peer, idle_s)
        self.close()

    def close(self) -> None:
        """Graceful close used at shutdown: stop reading, drop queued frames, close."""
        self._closing = True
        self._frames.clear()
        if self.transport is not None:
            self.transport.close()

    @property
    def idle(self) -> bool:
        return self._wakeup is not None and not self._frames

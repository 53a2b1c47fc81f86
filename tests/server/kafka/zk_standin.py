"""A minimal ZooKeeper server for tests: enough of the protocol for Burrow's own
bookkeeping (it connects, creates its root path and pings; go-zookeeper's
client), in a thread, on a port the OS picks.

The wire format (ZooKeeper's jute; all big-endian, every packet int32-length
prefixed): a session starts with ConnectRequest {protocolVersion int32,
lastZxidSeen int64, timeOut int32, sessionId int64, passwd buffer[, readOnly
bool]} answered by ConnectResponse {protocolVersion int32, timeOut int32,
sessionId int64, passwd buffer}. Then requests {xid int32, type int32, body}
are answered by {xid int32, zxid int64, err int32, body}. Handled: create (1;
answers the path, with a sequence number when flags ask for one, or
NODEEXISTS -110; ephemeral nodes are kept like the others), exists (3; a zero Stat, or NONODE
-101), delete (2), getData (4; empty data), getChildren (8) and getChildren2 (12;
a zero Stat), ping (11),
closeSession (-11). Anything else: UNIMPLEMENTED (-6). Watches never fire.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading

_STAT = bytes(68)  # czxid, mzxid, ctime, mtime, version, cversion, aversion, ephemeralOwner, dataLength, ...


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def _read_packet(sock: socket.socket) -> bytes:
    (n,) = struct.unpack(">i", _read_exact(sock, 4))
    return _read_exact(sock, n)


def _string(buf: bytes, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from(">i", buf, pos)
    pos += 4
    if n < 0:
        return "", pos
    return buf[pos:pos + n].decode(), pos + n


def _put_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">i", len(b)) + b


class ZkStandIn:
    """``ZkStandIn()`` serves until ``close()``; ``address`` is "127.0.0.1:PORT";
    ``nodes`` the paths created (what a test asserts)."""

    def __init__(self) -> None:
        self.nodes: set[str] = {"/"}
        self.lock = threading.Lock()
        self._zxid = 0
        self._seq = 0
        self.unhandled: list[int] = []  # opcodes answered UNIMPLEMENTED
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                try:
                    owner._session(self.request)
                except (ConnectionError, OSError, struct.error):
                    pass

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _session(self, sock: socket.socket) -> None:
        req = _read_packet(sock)
        _proto, _zxid, timeout, _sid = struct.unpack_from(">iqiq", req, 0)
        resp = struct.pack(">iiq", 0, timeout, 0x5A11) + struct.pack(">i", 16) + bytes(16)
        sock.sendall(struct.pack(">i", len(resp)) + resp)
        while True:
            pkt = _read_packet(sock)
            xid, op = struct.unpack_from(">ii", pkt, 0)
            err, body = self._op(op, pkt, 8)
            with self.lock:
                self._zxid += 1
                zxid = self._zxid
            out = struct.pack(">iqi", xid, zxid, err) + body
            sock.sendall(struct.pack(">i", len(out)) + out)
            if op == -11:
                return

    def _op(self, op: int, pkt: bytes, pos: int) -> tuple[int, bytes]:
        if op in (11, -11):  # ping, closeSession
            return 0, b""
        if op == 1:  # create: path, data, acl, flags
            path, at = _string(pkt, pos)
            (n,) = struct.unpack_from(">i", pkt, at)  # data
            at += 4 + max(n, 0)
            (n,) = struct.unpack_from(">i", pkt, at)  # acl: [perms int32, scheme string, id string]
            at += 4
            for _ in range(max(n, 0)):
                _s, at = _string(pkt, at + 4)
                _s, at = _string(pkt, at)
            (flags,) = struct.unpack_from(">i", pkt, at)
            with self.lock:
                if flags & 2:  # sequential: a 10-digit counter after the name (locks)
                    self._seq += 1
                    path = f"{path}{self._seq:010d}"
                if path in self.nodes:
                    return -110, b""
                parent = path.rsplit("/", 1)[0] or "/"
                if parent not in self.nodes:
                    return -101, b""
                self.nodes.add(path)
            return 0, _put_string(path)
        if op == 2:  # delete
            path, _ = _string(pkt, pos)
            with self.lock:
                if path not in self.nodes:
                    return -101, b""
                self.nodes.discard(path)
            return 0, b""
        if op == 3:  # exists
            path, _ = _string(pkt, pos)
            with self.lock:
                found = path in self.nodes
            return (0, _STAT) if found else (-101, b"")
        if op == 4:  # getData: empty data and a zero Stat
            path, _ = _string(pkt, pos)
            with self.lock:
                found = path in self.nodes
            return (0, struct.pack(">i", 0) + _STAT) if found else (-101, b"")
        if op in (8, 12):  # getChildren, getChildren2 (children, and a zero Stat for 12)
            path, _ = _string(pkt, pos)
            prefix = path.rstrip("/") + "/"
            with self.lock:
                if path not in self.nodes:
                    return -101, b""
                kids = sorted(n[len(prefix):] for n in self.nodes
                              if n.startswith(prefix) and "/" not in n[len(prefix):] and n != prefix)
            body = struct.pack(">i", len(kids)) + b"".join(_put_string(k) for k in kids)
            return 0, body + (_STAT if op == 12 else b"")
        self.unhandled.append(op)
        return -6, b""

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

"""Test helpers: build request frames with kio (the oracle) and read response frames."""

from __future__ import annotations

import datetime
import io
import socket
import struct

from helpers import scaled
from kio.index import load_request_schema, load_response_schema
from kio.schema.request_header.v1.header import RequestHeader as RequestHeaderV1
from kio.schema.request_header.v2.header import RequestHeader as RequestHeaderV2
from kio.serial import entity_reader, entity_writer


def request_frame(body, correlation_id: int = 1, client_id: str | None = "test") -> bytes:
    """A size-prefixed request frame for a kio request entity."""
    cls = type(body)
    hcls = RequestHeaderV2 if cls.__flexible__ else RequestHeaderV1
    out = io.BytesIO()
    entity_writer(hcls)(out, hcls(request_api_key=cls.__api_key__, request_api_version=cls.__version__,
                                  correlation_id=correlation_id, client_id=client_id))
    entity_writer(cls)(out, body)
    data = out.getvalue()
    return struct.pack(">i", len(data)) + data


def read_response(frame: bytes, api_key: int, version: int):
    """(correlation_id, decoded kio response) of a response frame without its size prefix."""
    cls = load_response_schema(api_key, version)
    (corr,) = struct.unpack_from(">i", frame, 0)
    pos = 4
    if cls.__flexible__ and api_key != 18:
        assert frame[pos] == 0, "response header tagged fields"
        pos += 1
    resp, used = entity_reader(cls)(frame, pos)
    assert pos + used == len(frame), f"{len(frame) - pos - used} trailing bytes in response"
    return corr, resp


def request_class(api_key: int, version: int, name: str | None = None):
    cls = load_request_schema(api_key, version)
    if name is None:
        return cls
    import sys

    return getattr(sys.modules[cls.__module__], name)


def ms(n: int) -> datetime.timedelta:
    return datetime.timedelta(milliseconds=n)


class Conn:
    """A blocking test client: send frames, read whole response frames."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=scaled(timeout))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    def recv_frame(self) -> bytes:
        (n,) = struct.unpack(">i", self._exact(4))
        return self._exact(n)

    def call(self, body, correlation_id: int = 1):
        self.send(request_frame(body, correlation_id))
        corr, resp = read_response(self.recv_frame(), type(body).__api_key__, type(body).__version__)
        assert corr == correlation_id
        return resp

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        self.sock.settimeout(scaled(timeout))
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()

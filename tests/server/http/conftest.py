"""HTTP door fixtures: a real ``umlog serve`` (HTTP on an OS port) and a small
client over aiohttp's, run synchronously (each call its own event loop)."""

from __future__ import annotations

import asyncio
import json
import uuid

import aiohttp
import pytest
from helpers import scaled

from server.kafka.serve_process import ServeProcess

V2 = "application/vnd.kafka.v2+json"
BINARY = "application/vnd.kafka.binary.v2+json"
JSONV2 = "application/vnd.kafka.json.v2+json"


class Answer:
    def __init__(self, status: int, headers, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def ctype(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0]

    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.ctype!r}, {self.body[:300]!r})"


async def acall(method: str, url: str, body=None, ctype: str | None = None, headers: dict | None = None,
                raw: bytes | None = None) -> Answer:
    h = dict(headers or {})
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        h.setdefault("Content-Type", ctype or V2)
    elif ctype is not None:
        h["Content-Type"] = ctype
    timeout = aiohttp.ClientTimeout(total=scaled(30))
    async with aiohttp.ClientSession(timeout=timeout) as s:
        async with s.request(method, url, data=data, headers=h) as r:
            return Answer(r.status, r.headers, await r.read())


def call(method: str, url: str, body=None, ctype: str | None = None, headers: dict | None = None,
         raw: bytes | None = None) -> Answer:
    return asyncio.run(acall(method, url, body, ctype, headers, raw))


class Http:
    """The base URL of a server's HTTP door, and its Kafka bootstrap."""

    def __init__(self, server: ServeProcess) -> None:
        self.server = server
        host, port = server.addresses["http"]
        self.base = f"http://{host}:{port}"
        self.bootstrap = server.bootstrap

    def url(self, path: str) -> str:
        return self.base + path

    def call(self, method: str, path: str, body=None, **kw) -> Answer:
        return call(method, self.url(path), body, **kw)

    def create_topic(self, partitions: int = 1, prefix: str = "t") -> str:
        from confluent_kafka.admin import AdminClient, NewTopic

        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for f in admin.create_topics([NewTopic(name, partitions, 1)], request_timeout=scaled(15)).values():
            f.result(scaled(15))
        return name


@pytest.fixture(scope="module")
def http(tmp_path_factory):
    s = ServeProcess(str(tmp_path_factory.mktemp("http") / "data"))
    try:
        yield Http(s)
    finally:
        assert s.stop() == 0, s.stderr_text()


@pytest.fixture(scope="module")
def tight(tmp_path_factory):
    """A server with small limits: 64 KiB bodies, a 4 KiB stream buffer, consumer instances
    expiring after 1 s idle."""
    s = ServeProcess(str(tmp_path_factory.mktemp("http-tight") / "data"), "--http-max-body-bytes", "65536",
                     "--http-stream-buffer-bytes", "4096", "--http-consumer-instance-timeout-ms", "1000")
    try:
        yield Http(s)
    finally:
        assert s.stop() == 0, s.stderr_text()

"""An S3 for the tiered-storage tests: moto's server on a loopback port of the
OS, and a proxy in front of it that a test can take down and bring back (the
store unreachable while its data stays)."""

from __future__ import annotations

import socket
import threading

import pytest

BUCKET = "umlog-tiered"


class Proxy:
    """TCP forwarder to ``target``; while ``down``, connections are cut at once."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.down = False
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self._sock.accept()
            except OSError:
                return
            if self.down:
                c.close()
                continue
            try:
                u = socket.create_connection(self.target)
            except OSError:
                c.close()
                continue
            with self._lock:
                self._conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                data = a.recv(65536)
                if not data or self.down:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.close()
            except OSError:
                pass

    def set_down(self, down: bool) -> None:
        self.down = down
        if down:
            with self._lock:
                conns, self._conns = self._conns, []
            for s in conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self._sock.close()
        self.set_down(True)


@pytest.fixture
def s3(monkeypatch):
    """{"endpoint": the proxy's URL, "proxy": Proxy, "uri": s3://BUCKET}; AWS credentials in the environment."""
    pytest.importorskip("moto")
    import boto3
    from moto.server import ThreadedMotoServer

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    proxy = Proxy((host, port))
    try:
        yield {"endpoint": f"http://127.0.0.1:{proxy.port}", "proxy": proxy, "uri": f"s3://{BUCKET}",
               "direct": f"http://{host}:{port}"}
    finally:
        proxy.close()
        server.stop()

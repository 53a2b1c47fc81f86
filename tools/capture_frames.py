"""Record the Kafka frames real clients send (and what the server answers).

A small TCP proxy: clients connect to ``--listen``, bytes go on to
``--upstream`` unchanged, and every size-prefixed frame is written to
``--out/<client id>/`` as ``<api>_request_v<N>_<nnn>.bin`` /
``<api>_response_v<N>_<nnn>.bin`` (the frame without its 4-byte size). Start the server
with ``--advertise`` set to the proxy's address, or clients will connect to
the server directly after their first Metadata request::

    umlog serve --kafka 127.0.0.1:9093 --advertise 127.0.0.1:9092 &
    python tools/capture_frames.py --listen 127.0.0.1:9092 --upstream 127.0.0.1:9093 --out /tmp/frames
    kcat -b 127.0.0.1:9092 -L

tests/data/golden/ holds frames captured this way (see tests/server/kafka/test_golden.py).
Loopback only: it is a debugging tool, not a production proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import struct
import sys

from kio.index import load_request_schema

_counter: dict[str, int] = {}


def api_name(key: int) -> str:
    """produce, fetch, api_versions, ... (from kio's schema class names)."""
    for version in range(20):
        try:
            cls = load_request_schema(key, version)
        except Exception:
            continue
        return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__.removesuffix("Request")).lower()
    return f"api{key}"


def client_id(frame: bytes) -> str:
    """The request header's client id (a nullable int16-length string at byte 8)."""
    (n,) = struct.unpack_from(">h", frame, 8)
    raw = frame[10:10 + n] if n > 0 else b"anonymous"
    return re.sub(r"[^A-Za-z0-9._-]", "_", raw.decode("utf-8", "replace"))


def save(out: str, client: str, key: int, version: int, kind: str, frame: bytes, limit: int) -> None:
    stem = os.path.join(client, f"{api_name(key)}_{kind}_v{version}")
    n = _counter.get(stem, 0)
    if n >= limit:
        return
    _counter[stem] = n + 1
    os.makedirs(os.path.join(out, client), exist_ok=True)
    with open(os.path.join(out, f"{stem}_{n:03d}.bin"), "wb") as f:
        f.write(frame)


async def pump(reader, writer, on_frame) -> None:
    buf = bytearray()
    try:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                break
            writer.write(data)
            buf += data
            while len(buf) >= 4:
                (size,) = struct.unpack_from(">i", buf, 0)
                if size < 0 or len(buf) < 4 + size:
                    break
                on_frame(bytes(buf[4:4 + size]))
                del buf[:4 + size]
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1:9092")
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, default=3, help="frames kept per api/kind/version")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    lhost, lport = a.listen.rsplit(":", 1)
    uhost, uport = a.upstream.rsplit(":", 1)

    async def handle(creader, cwriter):
        try:
            sreader, swriter = await asyncio.open_connection(uhost, int(uport))
        except OSError as e:
            print(f"upstream {a.upstream}: {e}", file=sys.stderr)
            cwriter.close()
            return
        pending: dict[int, tuple[str, int, int]] = {}  # correlation id -> (client, api key, version)

        def request(frame: bytes) -> None:
            key, version, corr = struct.unpack_from(">hhi", frame, 0)
            client = client_id(frame)
            pending[corr] = (client, key, version)
            save(a.out, client, key, version, "request", frame, a.limit)

        def response(frame: bytes) -> None:
            (corr,) = struct.unpack_from(">i", frame, 0)
            if corr in pending:
                client, key, version = pending.pop(corr)
                save(a.out, client, key, version, "response", frame, a.limit)

        await asyncio.gather(pump(creader, swriter, request), pump(sreader, cwriter, response))

    server = await asyncio.start_server(handle, lhost, int(lport))
    print(f"capturing on {a.listen} -> {a.upstream} into {a.out}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass

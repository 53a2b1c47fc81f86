"""Live push: ``GET /topics/{t}/events`` (Server-Sent Events) and ``/topics/{t}/ws`` (WebSocket).

Query parameters, both paths:

* ``from``: ``beginning``, ``end`` (the default), an offset (clamped to each
  partition's range) or an ISO 8601 time (the first record at or after it;
  a time without a zone is UTC);
* ``partition``: one partition only (default: every partition, and partitions
  added while streaming from their start);
* ``group``: start each partition at the group's committed offset (``from``
  for partitions without one) and commit the group's offsets as records are
  written to the connection;
* ``format`` (SSE): ``json`` (the default: ``records.record_json``), ``text``
  (the value as UTF-8 text) or ``base64`` (the value).

Each SSE event is one record with ``id: <partition>-<offset>``. On a stream of
several partitions the id goes on with ``,<partition>-<offset>`` of the last
record sent of every other partition (offset ``start - 1`` for none yet), so a
``Last-Event-ID`` (which wins over ``from`` and ``group``) resumes every
partition exactly after what was sent: nothing lost, nothing repeated. A
comment line ``: heartbeat`` goes out after ``heartbeat_ms`` without records.

The WebSocket sends each record as one JSON text frame of the same shape and
takes frames ``{"produce": RECORD or [RECORD, ...], "id": any}``, RECORD
``{"key", "value", "partition", "headers": [[name, value], ...], "encoding":
"base64"}`` (``encoding`` applies to key, value and header values; without it
they are UTF-8 text), answered ``{"produced": [{"partition", "offset"}],
"id"}`` once durable, or ``{"error": {"error_code", "message"}, "id"}``.

Streams are woken by the hub's append waiters, whichever door appended, never
by polling. Before each write the connection's unsent bytes are looked at: past
``stream_buffer_bytes`` the client is dropped (logged and counted in
``umlog_http_stream_drops_total``), so a reader that does not keep up costs
bounded memory and never slows the log.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from datetime import UTC, datetime
from typing import Any

from umlog import errors

from .door import RestError
from .records import record_json

__all__ = ["add_routes", "Tail"]

log = logging.getLogger("umlog.server.http")

BATCH_RECORDS = 500
FORMATS = ("json", "text", "base64")


class _Dropped(Exception):
    """The client fell behind by more than the stream buffer."""


def add_routes(app, door) -> None:
    app.router.add_get("/topics/{topic}/events", lambda request: sse(door, request))
    app.router.add_get("/topics/{topic}/ws", lambda request: websocket(door, request))


def _parse_from(value: str) -> Any:
    """"beginning", "end", an int offset, or epoch ms of an ISO time ("time", ms)."""
    if value in ("beginning", "end"):
        return value
    try:
        return int(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise RestError(400, 400, f"from={value!r}: give beginning, end, an offset or an ISO 8601 time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return ("time", int(dt.timestamp() * 1000))


class Tail:
    """One stream's cursor over a topic: positions per partition, woken by the hub."""

    def __init__(self, door, request) -> None:
        self.door = door
        self.hub = door.hub
        q = request.query
        name = request.match_info["topic"]
        try:
            self.topic = door.broker.topic(name)
        except (errors.UnknownTopicError, ValueError):
            raise RestError(404, 40401, f"Topic {name} not found.") from None
        self.name = name
        self.fixed: int | None = None
        if "partition" in q:
            try:
                self.fixed = int(q["partition"])
            except ValueError:
                self.fixed = -1
            if not 0 <= self.fixed < self.topic.num_partitions:
                raise RestError(404, 40402, f"Partition {q['partition']} of topic {name} not found.")
        self.group = q.get("group") or None
        self.start = _parse_from(q.get("from", "end"))
        self.positions: dict[int, int] = {}
        for i in self._indexes():
            self.positions[i] = self._initial(i)
        resume = request.headers.get("Last-Event-ID") or q.get("last_event_id")
        if resume:
            for i, o in _parse_event_id(resume).items():
                if i in self.positions:
                    p = self.topic.partitions[i]
                    self.positions[i] = min(max(o + 1, p.start_offset), p.end_offset)

    def _indexes(self) -> list[int]:
        return [self.fixed] if self.fixed is not None else list(range(self.topic.num_partitions))

    def _initial(self, i: int, added: bool = False) -> int:
        p = self.topic.partitions[i]
        if self.group is not None:
            from umlog.groups.offsets import OFFSETS_TOPIC

            if OFFSETS_TOPIC in self.door.broker.topics(internal=True):
                c = self.door.broker.offsets.committed(self.group, self.name, i)
                if c is not None:
                    return min(max(c.offset, p.start_offset), p.end_offset)
        s = "beginning" if added else self.start
        if s == "beginning":
            return p.start_offset
        if s == "end":
            return p.end_offset
        if isinstance(s, int):
            return min(max(s, p.start_offset), p.end_offset)
        found = p.offset_for_time(s[1])
        return p.end_offset if found is None else found

    def event_id(self, partition: int, offset: int) -> str:
        parts = [f"{partition}-{offset}"]
        if len(self.positions) > 1:
            parts += [f"{i}-{o - 1}" for i, o in self.positions.items() if i != partition]
        return ",".join(parts)

    def read(self) -> list:
        """Records past the positions (up to BATCH_RECORDS), positions not moved."""
        if self.fixed is None and self.topic.num_partitions > len(self.positions):
            for i in range(len(self.positions), self.topic.num_partitions):
                self.positions[i] = self._initial(i, added=True)
        out: list = []
        for i, pos in self.positions.items():
            p = self.topic.partitions[i]
            if pos < p.start_offset:  # retention passed us: go on from the start
                pos = self.positions[i] = p.start_offset
            if pos >= p.end_offset:
                continue
            try:
                out.extend(p.read(pos, max_records=BATCH_RECORDS - len(out)))
            except errors.OffsetOutOfRangeError:
                self.positions[i] = p.start_offset
            if len(out) >= BATCH_RECORDS:
                break
        return out

    async def next(self, timeout: float) -> list:
        """Records past the positions; [] after ``timeout`` seconds without any."""
        out = self.read()
        if out:
            return out
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        keys = [(self.name, i) for i in self.positions]
        if self.fixed is None:  # a partition added meanwhile wakes nothing: the heartbeat reads it
            pass
        self.hub.add_waiter(keys, fut)
        try:
            out = self.read()  # appended between the first look and the waiter
            if out:
                return out
            try:
                await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                return []
            return self.read()
        finally:
            self.hub.remove_waiter(keys, fut)

    def commit(self, moved: set[int]) -> None:
        if self.group is None or not moved:
            return
        self.door.broker.offsets.commit(self.group, {(self.name, i): self.positions[i] for i in moved})


def _parse_event_id(value: str) -> dict[int, int]:
    out = {}
    try:
        for item in value.split(","):
            p, _, o = item.strip().partition("-")
            out[int(p)] = int(o)
    except ValueError:
        raise RestError(400, 400, f"Last-Event-ID {value!r} is not <partition>-<offset>[,...]") from None
    return out


def _unpaused(transport) -> None:
    """Never pause writing on this stream's transport: a paused one makes aiohttp's
    writes wait for the client, and the stream could not see it fall behind.
    ``_check_room`` bounds the buffer instead (to the limit plus one batch)."""
    if transport is not None:
        transport.set_write_buffer_limits(high=1 << 60)


def _check_room(door, transport) -> None:
    if transport is None or transport.is_closing():
        raise ConnectionResetError("closed")
    if transport.get_write_buffer_size() > door.stream_buffer:
        raise _Dropped()


def _sse_data(fmt: str, topic: str, r) -> str:
    if fmt == "json":
        return "data: " + json.dumps(record_json(topic, r), separators=(",", ":"), ensure_ascii=False) + "\n"
    if fmt == "base64":
        return "data: " + ("" if r.value is None else base64.b64encode(bytes(r.value)).decode("ascii")) + "\n"
    text = "" if r.value is None else bytes(r.value).decode("utf-8", "replace")
    return "".join(f"data: {line}\n" for line in (text.split("\n") if text else [""]))


async def _streaming(door, request, run):
    """Run ``run()`` as a stream of the door (cancelled at shutdown), counting drops."""
    task = asyncio.current_task()
    door.streams.add(task)
    try:
        return await run()
    except _Dropped:
        door.stream_drops += 1
        log.warning("http %s %s: dropped: more than %d bytes unsent (a reader that does not keep up)",
                    request.remote, request.path, door.stream_buffer)
        if request.transport is not None:
            request.transport.abort()
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        door.streams.discard(task)
    return None


async def sse(door, request):
    from aiohttp import web

    fmt = request.query.get("format", "json")
    if fmt not in FORMATS:
        raise RestError(400, 400, f"format={fmt!r}: give json, text or base64")
    tail = Tail(door, request)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                       "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    _unpaused(request.transport)

    async def run():
        await resp.write(b": umlog\n\n")
        while not door.hub.shutting_down:
            records = await tail.next(door.heartbeat_s)
            _check_room(door, request.transport)
            if not records:
                await resp.write(b": heartbeat\n\n")
                continue
            chunks = []
            moved = set()
            for r in records:
                tail.positions[r.partition] = r.offset + 1
                moved.add(r.partition)
                chunks.append(f"id: {tail.event_id(r.partition, r.offset)}\n{_sse_data(fmt, tail.name, r)}\n")
            await resp.write("".join(chunks).encode())
            tail.commit(moved)

    await _streaming(door, request, run)
    return resp


async def websocket(door, request):
    from aiohttp import WSMsgType, web

    tail = Tail(door, request)
    ws = web.WebSocketResponse(heartbeat=door.heartbeat_s, max_msg_size=door.max_body)
    await ws.prepare(request)
    _unpaused(request.transport)

    async def send_loop():
        while not door.hub.shutting_down and not ws.closed:
            records = await tail.next(door.heartbeat_s)
            if not records:
                continue
            _check_room(door, request.transport)
            moved = set()
            for r in records:
                tail.positions[r.partition] = r.offset + 1
                moved.add(r.partition)
                await ws.send_str(json.dumps(record_json(tail.name, r), separators=(",", ":"), ensure_ascii=False))
            tail.commit(moved)

    async def run():
        sender = asyncio.get_running_loop().create_task(send_loop())
        try:
            async for msg in ws:
                if sender.done():
                    break
                if msg.type == WSMsgType.TEXT:
                    await ws.send_str(json.dumps(await _ws_produce(door, tail, msg.data), separators=(",", ":")))
                elif msg.type == WSMsgType.BINARY:
                    await ws.send_str(json.dumps({"error": {"error_code": 400, "message": "send JSON text frames"}}))
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            if not sender.done():
                sender.cancel()
            try:
                await sender  # raises _Dropped: the stream's drop
            except asyncio.CancelledError:
                pass

    await _streaming(door, request, run)
    if not ws.closed:
        await ws.close()
    return ws


def _field(v: Any, b64: bool, what: str) -> bytes | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise RestError(422, 42205, f"{what} must be a string or null")
    if b64:
        try:
            return base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            raise RestError(422, 42205, f"{what} is not valid base64") from None
    return v.encode("utf-8")


async def _ws_produce(door, tail: Tail, text: str) -> dict:
    frame_id = None
    try:
        try:
            frame = json.loads(text)
        except ValueError as e:
            raise RestError(400, 400, f"Malformed JSON: {e}") from None
        if not isinstance(frame, dict) or "produce" not in frame:
            raise RestError(400, 400, 'a frame is {"produce": RECORD or [RECORD, ...], "id": any}')
        frame_id = frame.get("id")
        recs = frame["produce"]
        recs = recs if isinstance(recs, list) else [recs]
        rows = []
        for i, rec in enumerate(recs):
            if not isinstance(rec, dict):
                raise RestError(422, 42205, f"produce[{i}] must be an object")
            b64 = rec.get("encoding") == "base64"
            key = _field(rec.get("key"), b64, f"produce[{i}].key")
            value = _field(rec.get("value"), b64, f"produce[{i}].value")
            headers = []
            for h in rec.get("headers") or ():
                if not (isinstance(h, list) and len(h) == 2 and isinstance(h[0], str)):
                    raise RestError(422, 42205, f"produce[{i}].headers: each is [name, value]")
                headers.append((h[0], _field(h[1], b64, f"produce[{i}].headers")))
            rows.append((value, key, headers or None, rec.get("partition")))
        out = await door.rest.append(tail.topic, rows)
        return {"produced": out, "id": frame_id}
    except RestError as e:
        return {"error": {"error_code": e.code, "message": e.message}, "id": frame_id}

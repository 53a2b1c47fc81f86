"""Confluent's REST Proxy API v2 over the engine: topics, produce, consumer instances.

Paths, bodies, content types, status codes and ``{"error_code", "message"}``
error bodies are REST Proxy v2's, so its clients work unchanged:

* ``GET /topics``, ``GET /topics/{t}``, ``GET /topics/{t}/partitions[/{p}]``,
  ``GET /topics/{t}/partitions/{p}/offsets``;
* ``POST /topics/{t}`` and ``POST /topics/{t}/partitions/{p}`` with
  ``application/vnd.kafka.json.v2+json`` (key and value are JSON, stored as
  their compact JSON text), ``vnd.kafka.binary.v2+json`` (base64) or
  ``vnd.kafka.v2+json`` / ``application/json`` (as json). Every record is
  checked before any is appended (a bad one fails the request, nothing is
  stored); the answer comes after the hub's durability gate, with each
  record's partition and offset. Records without a partition go to their key's
  murmur2 partition, keyless ones round robin.
* consumer instances, ``/consumers/{g}[/instances/{i}/...]``: positions are kept
  in memory per instance; commits go to the group's offsets in
  ``__consumer_offsets``, the ones every door and ``broker.group(g)`` see. As
  REST Proxy does, ``POST .../offsets`` with explicit offsets commits each
  ``offset + 1`` (the offset given is the last record consumed), and without a
  body commits the positions (after the records fetched so far).

Subscriptions are balanced among the REST instances of a group in this server
(partitions of the subscribed topics dealt round robin, in instance-id order,
on every fetch); REST instances do not take part in the Kafka group protocol,
so a Kafka consumer in the same group is not told about them. Instances expire
after ``consumer_instance_timeout_ms`` without a request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import time
from typing import Any

from umlog import errors

from .door import RestError, json_response

__all__ = ["Rest", "Instance", "V2"]

log = logging.getLogger("umlog.server.http")

V2 = "application/vnd.kafka.v2+json"
BINARY = "application/vnd.kafka.binary.v2+json"
JSONV2 = "application/vnd.kafka.json.v2+json"
_EMBEDDED = {BINARY: "binary", JSONV2: "json", V2: "json", "application/json": "json"}
_FORMATS = ("binary", "json")
MAX_FETCH_RECORDS = 2000
DEFAULT_FETCH_BYTES = 4 * 1024 * 1024
MAX_FETCH_TIMEOUT_MS = 30_000


def _topic_not_found(name: str) -> RestError:
    return RestError(404, 40401, f"Topic {name} not found.")


def _partition_not_found(name: str, p: Any) -> RestError:
    return RestError(404, 40402, f"Partition {p} of topic {name} not found.")


def _unprocessable(message: str, code: int = 42205) -> RestError:
    return RestError(422, code, message)


async def read_json(request, required: bool = True) -> Any:
    """The request's JSON body (None when empty and not ``required``); 415 for a
    content type that is not JSON, 400 for JSON that does not parse."""
    ctype = request.content_type
    body = await request.read()  # 413 past client_max_size (the door's middleware)
    if not body.strip():
        if required:
            raise RestError(422, 42200, "Request body is missing.")
        return None
    if ctype and ctype not in _EMBEDDED and ctype != "application/octet-stream" \
            and not (ctype.startswith("application/vnd.kafka.") and ctype.endswith("+json")):
        raise RestError(415, 415, f"HTTP 415 Unsupported Media Type: {ctype}")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RestError(400, 400, f"Malformed JSON: {e}") from None


def _int_field(d: dict, key: str, what: str) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _unprocessable(f"{what}: {key} must be an integer, not {v!r}")
    return v


def _decode(v: Any, fmt: str, what: str) -> bytes | None:
    if v is None:
        return None
    if fmt == "binary":
        if not isinstance(v, str):
            raise _unprocessable(f"{what} must be a base64 string")
        try:
            return base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            raise _unprocessable(f"{what} is not valid base64") from None
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode()


def _encode(b, fmt: str) -> Any:
    if b is None:
        return None
    b = bytes(b)
    if fmt == "binary":
        return base64.b64encode(b).decode("ascii")
    try:
        return json.loads(b)
    except (ValueError, UnicodeDecodeError):  # not JSON: its text, else base64
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(b).decode("ascii")


def _partition_info(i: int) -> dict:
    return {"partition": i, "leader": 0, "replicas": [{"broker": 0, "leader": True, "in_sync": True}]}


class Instance:
    """One REST consumer instance (in memory; see the module docstring)."""

    def __init__(self, group: str, name: str, fmt: str, reset: str, auto_commit: bool) -> None:
        self.group = group
        self.name = name
        self.format = fmt
        self.reset = reset
        self.auto_commit = auto_commit
        self.topics: list[str] | None = None  # subscribed topics
        self.pattern: re.Pattern | None = None  # or a subscribed pattern
        self.manual: list[tuple[str, int]] | None = None  # or assigned partitions
        self.positions: dict[tuple[str, int], int] = {}
        self.last_used = time.monotonic()
        self.fetching = False

    @property
    def subscribed(self) -> bool:
        return self.topics is not None or self.pattern is not None

    def wants(self, topic: str) -> bool:
        if self.topics is not None:
            return topic in self.topics
        return self.pattern is not None and self.pattern.fullmatch(topic) is not None


class Rest:
    """The REST Proxy v2 routes of one HTTP door."""

    def __init__(self, door) -> None:
        self.door = door
        self.hub = door.hub
        self.broker = door.broker
        self.instances: dict[tuple[str, str], Instance] = {}
        self._sticky = 0
        self._sweeper: asyncio.TimerHandle | None = None

    def add_routes(self, app) -> None:
        r = app.router
        r.add_get("/topics", self.list_topics)
        r.add_get("/topics/{topic}", self.get_topic)
        r.add_post("/topics/{topic}", self.produce)
        r.add_get("/topics/{topic}/partitions", self.list_partitions)
        r.add_get("/topics/{topic}/partitions/{partition}", self.get_partition)
        r.add_post("/topics/{topic}/partitions/{partition}", self.produce)
        r.add_get("/topics/{topic}/partitions/{partition}/offsets", self.partition_offsets)
        r.add_post("/consumers/{group}", self.create_instance)
        base = "/consumers/{group}/instances/{instance}"
        r.add_delete(base, self.delete_instance)
        r.add_post(base + "/subscription", self.subscribe)
        r.add_get(base + "/subscription", self.get_subscription)
        r.add_delete(base + "/subscription", self.unsubscribe)
        r.add_post(base + "/assignments", self.assign)
        r.add_get(base + "/assignments", self.get_assignments)
        r.add_post(base + "/positions", self.seek)
        r.add_post(base + "/positions/beginning", self.seek_beginning)
        r.add_post(base + "/positions/end", self.seek_end)
        r.add_get(base + "/records", self.records)
        r.add_post(base + "/offsets", self.commit)
        r.add_get(base + "/offsets", self.committed)

    def start(self) -> None:
        self._schedule_sweep()

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def _schedule_sweep(self) -> None:
        interval = min(max(self.door.instance_timeout_s / 4, 0.25), 30.0)
        self._sweeper = asyncio.get_running_loop().call_later(interval, self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        for key, inst in list(self.instances.items()):
            if now - inst.last_used >= self.door.instance_timeout_s:
                log.info("http: consumer instance %s of group %s expired", inst.name, inst.group)
                del self.instances[key]
        if not self.hub.shutting_down:
            self._schedule_sweep()

    # --- topics -------------------------------------------------------------------------------

    def _topic(self, name: str):
        try:
            return self.broker.topic(name)
        except errors.UnknownTopicError:
            raise _topic_not_found(name) from None
        except ValueError:  # not a valid topic name
            raise _topic_not_found(name) from None

    def _partition_index(self, t, raw: str) -> int:
        try:
            i = int(raw)
        except ValueError:
            raise _partition_not_found(t.name, raw) from None
        if not 0 <= i < t.num_partitions:
            raise _partition_not_found(t.name, i)
        return i

    async def list_topics(self, request):
        return json_response(self.broker.topics(), content_type=V2)

    async def get_topic(self, request):
        t = self._topic(request.match_info["topic"])
        configs = {k: ("" if v is None else str(v).lower() if isinstance(v, bool) else str(v))
                   for k, v in t.config.as_dict().items()}
        return json_response({"name": t.name, "configs": configs,
                              "partitions": [_partition_info(i) for i in range(t.num_partitions)]}, content_type=V2)

    async def list_partitions(self, request):
        t = self._topic(request.match_info["topic"])
        return json_response([_partition_info(i) for i in range(t.num_partitions)], content_type=V2)

    async def get_partition(self, request):
        t = self._topic(request.match_info["topic"])
        return json_response(_partition_info(self._partition_index(t, request.match_info["partition"])),
                             content_type=V2)

    async def partition_offsets(self, request):
        t = self._topic(request.match_info["topic"])
        p = t.partitions[self._partition_index(t, request.match_info["partition"])]
        return json_response({"beginning_offset": p.start_offset, "end_offset": p.end_offset}, content_type=V2)

    # --- produce ------------------------------------------------------------------------------

    async def produce(self, request):
        ctype = request.content_type
        fmt = _EMBEDDED.get(ctype)
        if fmt is None:
            raise RestError(415, 415, f"HTTP 415 Unsupported Media Type: {ctype or 'none'} (served: "
                                      f"{BINARY}, {JSONV2}, {V2})")
        t = self._topic(request.match_info["topic"])
        fixed = None
        if "partition" in request.match_info:
            fixed = self._partition_index(t, request.match_info["partition"])
        body = await read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("records"), list):
            raise _unprocessable("The request body must be an object with a list of records.", 42200)
        rows = []
        for i, rec in enumerate(body["records"]):
            if not isinstance(rec, dict):
                raise _unprocessable(f"records[{i}] must be an object")
            key = _decode(rec.get("key"), fmt, f"records[{i}].key")
            value = _decode(rec.get("value"), fmt, f"records[{i}].value")
            rows.append((value, key, None, fixed if fixed is not None else rec.get("partition")))
        results = await self.append(t, rows)
        for r in results:
            r["error_code"] = r["error"] = None
        return json_response({"key_schema_id": None, "value_schema_id": None, "offsets": results}, content_type=V2)

    async def append(self, t, rows: list[tuple]) -> list[dict]:
        """Append ``(value, key, headers, partition or None)`` rows to topic ``t``, one
        batch per partition; ``[{"partition", "offset"}]`` in row order, once
        durable. Every row is checked before anything is appended."""
        from umlog._native.core import partition_for_key

        n = t.num_partitions
        groups: dict[int, tuple[list, list, list, list[int]]] = {}
        for i, (value, key, headers, p) in enumerate(rows):
            if p is not None:
                if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < n:
                    raise _partition_not_found(t.name, p)
            elif key is not None:
                p = partition_for_key(key, n)
            else:
                self._sticky = p = (self._sticky + 1) % n
            g = groups.setdefault(p, ([], [], [], []))
            g[0].append(value)
            g[1].append(key)
            g[2].append(headers)
            g[3].append(i)
        results: list[dict] = [{} for _ in rows]
        touched = {}
        try:
            for p, (values, keys, headers, idx) in groups.items():
                part = t.partitions[p]
                offsets = part.append_many(values, keys if any(k is not None for k in keys) else None,
                                           headers if any(h for h in headers) else None)
                touched[part] = offsets.stop
                for i, o in zip(idx, offsets):
                    results[i] = {"partition": p, "offset": o}
            await self.hub.durable(touched)
        except errors.InvalidRecordError as e:
            raise _unprocessable(str(e)) from None
        except errors.UmlogError as e:
            raise RestError(500, 50002, f"Kafka error: {e}") from None
        except OSError as e:
            log.error("http produce to %s failed: %r", t.name, e)
            raise RestError(500, 50002, f"Kafka error: storage: {e.strerror or e}") from None
        return results

    # --- consumer instances -------------------------------------------------------------------

    def _instance(self, request) -> Instance:
        key = (request.match_info["group"], request.match_info["instance"])
        inst = self.instances.get(key)
        if inst is None:
            raise RestError(404, 40403, "Consumer instance not found.")
        inst.last_used = time.monotonic()
        return inst

    async def create_instance(self, request):
        group = request.match_info["group"]
        body = await read_json(request, required=False) or {}
        if not isinstance(body, dict):
            raise _unprocessable("The request body must be an object.", 42204)
        name = body.get("name") or body.get("id") or f"rest-consumer-{time.time_ns():x}"
        fmt = body.get("format") or "binary"
        reset = body.get("auto.offset.reset") or "latest"
        auto = str(body.get("auto.commit.enable", body.get("enable.auto.commit", "true"))).lower()
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", name):
            raise _unprocessable(f"Invalid consumer name {name!r}.", 42204)
        if fmt not in _FORMATS:
            raise _unprocessable(f"Invalid format {fmt!r}: served are {', '.join(_FORMATS)}.", 42204)
        if reset not in ("earliest", "latest", "none"):
            raise _unprocessable(f"Invalid auto.offset.reset {reset!r}.", 42204)
        if auto not in ("true", "false"):
            raise _unprocessable(f"Invalid auto.commit.enable {auto!r}.", 42204)
        if (group, name) in self.instances:
            raise RestError(409, 40902, "Consumer with specified consumer ID already exists in the specified "
                                        "consumer group.")
        self.instances[(group, name)] = Instance(group, name, fmt, reset, auto == "true")
        base = str(request.url.with_path(f"/consumers/{group}/instances/{name}").with_query(None))
        return json_response({"instance_id": name, "base_uri": base}, content_type=V2)

    async def delete_instance(self, request):
        inst = self._instance(request)
        del self.instances[(inst.group, inst.name)]
        return _no_content()

    async def subscribe(self, request):
        inst = self._instance(request)
        body = await read_json(request)
        if not isinstance(body, dict):
            raise _unprocessable("The request body must be an object.")
        topics, pattern = body.get("topics"), body.get("topic_pattern")
        if (topics is None) == (pattern is None):
            raise RestError(409, 40903, "Illegal state: give either topics or topic_pattern.")
        if inst.manual is not None:
            raise RestError(409, 40903, "Illegal state: Subscription to topics, partitions and pattern are "
                                        "mutually exclusive.")
        if topics is not None:
            if not isinstance(topics, list) or not all(isinstance(x, str) and x for x in topics):
                raise _unprocessable("topics must be a list of topic names")
            inst.topics, inst.pattern = list(topics), None
        else:
            try:
                inst.topics, inst.pattern = None, re.compile(pattern)
            except (re.error, TypeError) as e:
                raise _unprocessable(f"Invalid topic_pattern: {e}") from None
        return _no_content()

    async def get_subscription(self, request):
        inst = self._instance(request)
        topics = inst.topics if inst.topics is not None else (
            [t for t in self.broker.topics() if inst.wants(t)] if inst.pattern is not None else [])
        return json_response({"topics": topics}, content_type=V2)

    async def unsubscribe(self, request):
        inst = self._instance(request)
        inst.topics = inst.pattern = None
        inst.positions.clear()
        return _no_content()

    def _partitions_body(self, body: Any, key: str = "partitions") -> list[tuple[str, int]]:
        if not isinstance(body, dict) or not isinstance(body.get(key), list):
            raise _unprocessable(f"The request body must be an object with a list of {key}.")
        out = []
        for i, d in enumerate(body[key]):
            if not isinstance(d, dict) or not isinstance(d.get("topic"), str):
                raise _unprocessable(f"{key}[{i}] must be an object with topic and partition")
            p = _int_field(d, "partition", f"{key}[{i}]")
            t = self._topic(d["topic"])
            if not 0 <= p < t.num_partitions:
                raise _partition_not_found(t.name, p)
            out.append((t.name, p))
        return out

    async def assign(self, request):
        inst = self._instance(request)
        parts = self._partitions_body(await read_json(request))
        if inst.subscribed:
            raise RestError(409, 40903, "Illegal state: Subscription to topics, partitions and pattern are "
                                        "mutually exclusive.")
        inst.manual = list(dict.fromkeys(parts))
        inst.positions = {tp: o for tp, o in inst.positions.items() if tp in inst.manual}
        return _no_content()

    async def get_assignments(self, request):
        inst = self._instance(request)
        return json_response({"partitions": [{"topic": t, "partition": p} for t, p in self._assigned(inst)]},
                             content_type=V2)

    def _assigned(self, inst: Instance) -> list[tuple[str, int]]:
        if inst.manual is not None:
            return list(inst.manual)
        if not inst.subscribed:
            return []
        members = sorted((i for i in self.instances.values() if i.group == inst.group and i.subscribed),
                         key=lambda i: i.name)
        out = []
        for name in self.broker.topics():
            if not inst.wants(name):
                continue
            mine = [m for m in members if m.wants(name)]
            n = self.broker.topic(name).num_partitions
            for p in range(n):
                if mine[p % len(mine)] is inst:
                    out.append((name, p))
        return out

    def _position(self, inst: Instance, tp: tuple[str, int]) -> int:
        """Where ``inst`` reads ``tp`` next: its position, the group's commit, or the reset policy."""
        p = self.broker.topic(tp[0]).partitions[tp[1]]
        o = inst.positions.get(tp)
        if o is None:
            c = self.broker.offsets.committed(inst.group, tp[0], tp[1]) if self._has_offsets() else None
            o = c.offset if c is not None else None
        if o is None or not p.start_offset <= o <= p.end_offset:
            o = p.start_offset if inst.reset == "earliest" else p.end_offset
        inst.positions[tp] = o
        return o

    def _has_offsets(self) -> bool:
        from umlog.groups.offsets import OFFSETS_TOPIC

        return OFFSETS_TOPIC in self.broker.topics(internal=True)

    async def _seek_to(self, request, where: str | None):
        inst = self._instance(request)
        body = await read_json(request)
        if where is None:
            if not isinstance(body, dict) or not isinstance(body.get("offsets"), list):
                raise _unprocessable("The request body must be an object with a list of offsets.")
            pairs = self._partitions_body(body, "offsets")
            offsets = [_int_field(d, "offset", f"offsets[{i}]") for i, d in enumerate(body["offsets"])]
        else:
            pairs = self._partitions_body(body)
            offsets = [None] * len(pairs)
        assigned = set(self._assigned(inst))
        for tp in pairs:
            if tp not in assigned:
                raise RestError(409, 40903, f"Illegal state: No current assignment for partition {tp[0]}-{tp[1]}")
        for tp, o in zip(pairs, offsets):
            p = self.broker.topic(tp[0]).partitions[tp[1]]
            if where == "beginning":
                o = p.start_offset
            elif where == "end":
                o = p.end_offset
            elif o < 0:
                raise _unprocessable(f"offset {o} of {tp[0]}-{tp[1]} is negative")
            inst.positions[tp] = o
        return _no_content()

    async def seek(self, request):
        return await self._seek_to(request, None)

    async def seek_beginning(self, request):
        return await self._seek_to(request, "beginning")

    async def seek_end(self, request):
        return await self._seek_to(request, "end")

    async def records(self, request):
        inst = self._instance(request)
        accept = request.headers.get("Accept", "")
        want = [a.split(";")[0].strip() for a in accept.split(",") if a.strip()]
        kafka = [a for a in want if a.startswith("application/vnd.kafka.")]
        if kafka and f"application/vnd.kafka.{inst.format}.v2+json" not in kafka:
            raise RestError(406, 40601, f"The requested embedded data format does not match the deserializer for "
                                        f"this consumer instance (format {inst.format}).")
        try:
            timeout_ms = int(request.query.get("timeout", "1000"))
            max_bytes = int(request.query.get("max_bytes", str(DEFAULT_FETCH_BYTES)))
        except ValueError:
            raise RestError(400, 400, "timeout and max_bytes must be integers") from None
        timeout_s = min(max(timeout_ms, 0), MAX_FETCH_TIMEOUT_MS) / 1000
        if inst.fetching:
            raise RestError(409, 40903, "Illegal state: another records request of this instance is in progress")
        inst.fetching = True
        try:
            if inst.auto_commit:  # the records of the last fetch are consumed: Kafka's poll semantics
                await self._commit(inst, dict(inst.positions))
            deadline = asyncio.get_running_loop().time() + timeout_s
            while True:
                out = self._fetch(inst, max(1, max_bytes))
                left = deadline - asyncio.get_running_loop().time()
                if out or left <= 0 or self.hub.shutting_down:
                    break
                await self._wait(self._assigned(inst), left)
        finally:
            inst.fetching = False
            inst.last_used = time.monotonic()
        ctype = f"application/vnd.kafka.{inst.format}.v2+json"
        return json_response(out, content_type=ctype)

    async def _wait(self, keys: list[tuple[str, int]], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.hub.add_waiter(keys, fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            self.hub.remove_waiter(keys, fut)

    def _fetch(self, inst: Instance, max_bytes: int) -> list[dict]:
        assigned = self._assigned(inst)
        inst.positions = {tp: o for tp, o in inst.positions.items() if tp in set(assigned)}
        out: list[dict] = []
        size = 0
        for tp in assigned:
            if len(out) >= MAX_FETCH_RECORDS or size >= max_bytes:
                break
            pos = self._position(inst, tp)
            p = self.broker.topic(tp[0]).partitions[tp[1]]
            if pos >= p.end_offset:
                continue
            try:
                recs = list(p.read(pos, max_records=MAX_FETCH_RECORDS - len(out)))
            except errors.OffsetOutOfRangeError:
                inst.positions.pop(tp, None)
                continue
            for r in recs:
                out.append({"topic": tp[0], "key": _encode(r.key, inst.format),
                            "value": _encode(r.value, inst.format), "partition": tp[1], "offset": r.offset})
                inst.positions[tp] = r.offset + 1
                size += len(r.value or b"") + len(r.key or b"")
                if size >= max_bytes:
                    break
        return out

    async def _commit(self, inst: Instance, offsets: dict[tuple[str, int], int], metadata: dict | None = None):
        if not offsets:
            return
        from umlog.groups.offsets import OffsetAndMetadata

        store = self.broker.offsets
        store.commit(inst.group, {tp: OffsetAndMetadata(o, -1, (metadata or {}).get(tp) or "")
                                  for tp, o in offsets.items()})
        p = store.partition_of(inst.group)
        await self.hub.durable({p: p.end_offset})

    async def commit(self, request):
        inst = self._instance(request)
        body = await read_json(request, required=False)
        if body is None or (isinstance(body, dict) and not body.get("offsets")):
            offsets = dict(inst.positions)
            meta = None
        else:
            pairs = self._partitions_body(body, "offsets")
            offsets, meta = {}, {}
            for i, (tp, d) in enumerate(zip(pairs, body["offsets"])):
                offsets[tp] = _int_field(d, "offset", f"offsets[{i}]") + 1  # REST Proxy commits offset + 1
                if isinstance(d.get("metadata"), str):
                    meta[tp] = d["metadata"]
        try:
            await self._commit(inst, offsets, meta)
        except errors.UmlogError as e:
            raise RestError(500, 50002, f"Kafka error: {e}") from None
        return _no_content()

    async def committed(self, request):
        inst = self._instance(request)
        parts = self._partitions_body(await read_json(request))
        out = []
        store = self.broker.offsets if self._has_offsets() else None
        for t, p in parts:
            c = store.committed(inst.group, t, p) if store is not None else None
            if c is not None:
                out.append({"topic": t, "partition": p, "offset": c.offset, "metadata": c.metadata})
        return json_response({"offsets": out}, content_type=V2)


def _no_content():
    from aiohttp import web

    return web.Response(status=204)

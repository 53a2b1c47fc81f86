"""``/api/``: the JSON API behind the web console, for scripts too.

Every answer is ``application/json``; every error is ``{"error_code",
"message"}`` with its status (400 a bad parameter, 404 an unknown topic,
group or partition, 409 a conflict such as resetting a group with live
members, 422 a body that does not say what to do), as the REST Proxy routes
answer. The routes are thin over the engine and its services:

* topics: ``GET /api/topics`` (partitions, records, bytes of each topic),
  ``POST /api/topics`` (``{"name", "partitions", "config"}``, through the
  hub, so ``[topics.defaults]`` apply), ``GET /api/topics/{t}`` (config and
  every partition's offsets and bytes), ``PATCH /api/topics/{t}``
  (``{"config": {key: value or null}, "partitions": N}``), ``DELETE``;
* messages: ``GET /api/topics/{t}/messages`` (a page of one partition, or of
  each, from an offset, a time, the beginning or the end), ``GET
  /api/topics/{t}/search`` (key, value substring and JMESPath over JSON
  values, bounded by ``scan`` records read), ``POST /api/topics/{t}/messages``
  (one record, answered once durable);
* consumer groups: ``GET /api/groups``, ``GET /api/groups/{g}`` (members from
  the hub's coordinator and REST instances; lag per partition in records and
  in seconds), ``POST /api/groups/{g}/reset`` (earliest, latest, a time or an
  offset; 409 while the group has live members, as Kafka refuses it);
* share groups: ``GET /api/share-groups[/{g}]`` (``umlog.delivery.describe``
  plus the live members of the hub);
* dead letters: ``GET /api/dead-letters``, ``GET /api/dead-letters/{t}`` (each
  with why it died), ``POST /api/dead-letters/{t}/redrive`` (all, or the next
  one of a partition) through ``umlog.delivery.dlq.redrive``: exactly once,
  one redrive of a topic at a time;
* ``GET /api/webhooks``, ``GET /api/mqtt/sessions`` (404 without the MQTT
  door), ``GET /api/overview``;
* ``GET /api/throughput``: records per second per topic, from the end offsets
  sampled once a second while someone asks (sampling starts with the first
  request and stops after ``IDLE_S`` without one, so an unwatched server pays
  nothing).

Reads that may touch many records (search, redrive) run in a worker thread;
the rest runs on the loop, as the other routes do.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import logging
import shutil
import struct
import time
from datetime import UTC, datetime
from typing import Any

from umlog import errors

from .door import RestError, json_response
from .records import record_json

__all__ = ["Api", "Throughput"]

log = logging.getLogger("umlog.server.http")

PAGE = 50
MAX_PAGE = 1000
SCAN = 10_000
MAX_SCAN = 1_000_000
SAMPLE_S = 1.0
SAMPLES = 300  # five minutes at one a second
IDLE_S = 600.0


def _bad(message: str) -> RestError:
    return RestError(400, 400, message)


def _unprocessable(message: str) -> RestError:
    return RestError(422, 42200, message)


def _int_param(q, name: str, default: int | None = None, lo: int | None = None, hi: int | None = None):
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise _bad(f"{name}={raw!r} is not an integer") from None
    if lo is not None and v < lo:
        raise _bad(f"{name}={v} is below {lo}")
    if hi is not None and v > hi:
        v = hi
    return v


def parse_time_ms(v: Any, name: str = "time") -> int:
    """Epoch ms from an int (ms) or an ISO 8601 string (UTC without a zone)."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            pass
        try:
            dt = datetime.fromisoformat(v)
        except ValueError:
            raise _bad(f"{name}={v!r}: give epoch milliseconds or an ISO 8601 time") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return int(dt.timestamp() * 1000)
    raise _bad(f"{name} must be epoch milliseconds or an ISO 8601 time, not {v!r}")


def _first_timestamp(p, offset: int) -> int | None:
    try:
        for r in p.read(offset, max_records=1):
            return r.timestamp
    except errors.UmlogError:
        return None
    return None


def decode_assignment(raw: bytes) -> dict[str, list[int]]:
    """Kafka's ConsumerProtocolAssignment (version, [topic, [partition]], user data);
    {} for bytes of another protocol."""
    out: dict[str, list[int]] = {}
    try:
        b = bytes(raw)
        if len(b) < 6:
            return out
        pos = 2
        (n,) = struct.unpack_from(">i", b, pos)
        pos += 4
        for _ in range(max(0, n)):
            (ln,) = struct.unpack_from(">h", b, pos)
            pos += 2
            topic = b[pos:pos + ln].decode()
            pos += ln
            (k,) = struct.unpack_from(">i", b, pos)
            pos += 4
            parts = list(struct.unpack_from(f">{max(0, k)}i", b, pos))
            pos += 4 * max(0, k)
            out[topic] = parts
    except (struct.error, UnicodeDecodeError, ValueError):
        return {}
    return out


class Throughput:
    """End offsets per topic sampled every ``SAMPLE_S`` while watched (module docstring)."""

    def __init__(self, broker) -> None:
        self.broker = broker
        self.samples: collections.deque = collections.deque(maxlen=SAMPLES + 1)  # (time s, {topic: sum})
        self.last_asked = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def _sample(self) -> None:
        ends = {}
        for name in self.broker.topics():
            try:
                ends[name] = sum(p.end_offset for p in self.broker.topic(name).partitions)
            except errors.UmlogError:
                continue
        self.samples.append((time.time(), ends))

    def _tick(self) -> None:
        self._timer = None
        if time.monotonic() - self.last_asked > IDLE_S:
            self.samples.clear()
            return
        self._sample()
        self._timer = asyncio.get_running_loop().call_later(SAMPLE_S, self._tick)

    def series(self, topics: list[str] | None) -> dict:
        self.last_asked = time.monotonic()
        if self._timer is None:
            self._sample()
            self._timer = asyncio.get_running_loop().call_later(SAMPLE_S, self._tick)
        out: dict[str, list] = {}
        rows = list(self.samples)
        for (t0, a), (t1, b) in zip(rows, rows[1:]):
            dt = max(t1 - t0, 1e-6)
            for name, end in b.items():
                if topics is not None and name not in topics:
                    continue
                out.setdefault(name, []).append([round(t1, 3), round(max(0, end - a.get(name, end)) / dt, 3)])
        return {"interval_s": SAMPLE_S, "series": out}

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Api:
    """The ``/api/`` routes of one HTTP door."""

    def __init__(self, door) -> None:
        self.door = door
        self.hub = door.hub
        self.broker = door.broker
        self.throughput = Throughput(door.broker)
        self._redrives: dict[str, asyncio.Lock] = {}

    def add_routes(self, app) -> None:
        r = app.router
        r.add_get("/api/overview", self.overview)
        r.add_get("/api/topics", self.topics)
        r.add_post("/api/topics", self.create_topic)
        r.add_get("/api/topics/{topic}", self.topic)
        r.add_patch("/api/topics/{topic}", self.configure_topic)
        r.add_delete("/api/topics/{topic}", self.delete_topic)
        r.add_get("/api/topics/{topic}/messages", self.messages)
        r.add_post("/api/topics/{topic}/messages", self.produce)
        r.add_get("/api/topics/{topic}/search", self.search)
        r.add_get("/api/groups", self.groups)
        r.add_get("/api/groups/{group}", self.group)
        r.add_post("/api/groups/{group}/reset", self.reset_group)
        r.add_get("/api/share-groups", self.share_groups)
        r.add_get("/api/share-groups/{group}", self.share_group)
        r.add_get("/api/dead-letters", self.dead_letter_topics)
        r.add_get("/api/dead-letters/{topic}", self.dead_letters)
        r.add_post("/api/dead-letters/{topic}/redrive", self.redrive)
        r.add_get("/api/webhooks", self.webhooks)
        r.add_get("/api/mqtt/sessions", self.mqtt_sessions)
        r.add_get("/api/throughput", self.get_throughput)

    def stop(self) -> None:
        self.throughput.stop()

    # --- helpers -------------------------------------------------------------------------------

    def _topic(self, name: str):
        try:
            return self.broker.topic(name)
        except (errors.UnknownTopicError, ValueError):
            raise RestError(404, 40401, f"Topic {name} not found.") from None

    def _partitions(self, t, q) -> list:
        p = _int_param(q, "partition")
        if p is None:
            return list(t.partitions)
        if not 0 <= p < t.num_partitions:
            raise RestError(404, 40402, f"Partition {p} of topic {t.name} not found.")
        return [t.partitions[p]]

    async def _body(self, request, required: bool = True) -> dict:
        """The JSON object of the body, whatever its content type says (``curl -d``
        sends form encoding); ``{}`` for none when not ``required``."""
        import json

        raw = await request.read()
        if not raw.strip():
            if required:
                raise _unprocessable("The request body is missing (a JSON object).")
            return {}
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise RestError(400, 400, f"Malformed JSON: {e}") from None
        if not isinstance(body, dict):
            raise _unprocessable("The request body must be a JSON object.")
        return body

    def _has_offsets(self) -> bool:
        from umlog.groups.offsets import OFFSETS_TOPIC

        return OFFSETS_TOPIC in self.broker.topics(internal=True)

    def _coordinator_groups(self) -> dict:
        coord = getattr(self.hub, "_coordinator", None)
        return {} if coord is None else coord.groups

    def _rest_instances(self, group: str) -> list:
        rest = self.door.rest
        return [] if rest is None else [i for (g, _), i in rest.instances.items() if g == group]

    # --- overview and topics -------------------------------------------------------------------

    async def overview(self, request):
        from umlog import __version__

        try:
            du = shutil.disk_usage(self.broker.path)
            disk = {"free": du.free, "total": du.total}
        except OSError:
            disk = None
        doors = [{"name": d.name, "address": getattr(d, "address", "") or "", "listening": d.listening()}
                 for d in self.hub.doors]
        return json_response({"version": __version__, "data_dir": self.broker.path, "doors": doors,
                              "topics": len(self.broker.topics()), "connections": len(self.hub.connections),
                              "disk": disk})

    def _topic_row(self, name: str) -> dict:
        t = self.broker.topic(name)
        records = size = 0
        for p in t.partitions:
            records += max(0, p.end_offset - p.start_offset)
            try:
                size += p.size_in_bytes()
            except OSError:
                pass
        return {"name": name, "partitions": t.num_partitions, "records": records, "bytes": size,
                "internal": name.startswith("__"), "compacted": "compact" in str(t.config.as_dict().get(
                    "cleanup.policy", ""))}

    async def topics(self, request):
        internal = request.query.get("internal") in ("1", "true")
        return json_response([self._topic_row(n) for n in self.broker.topics(internal=internal)])

    def _topic_detail(self, t) -> dict:
        parts = []
        for p in t.partitions:
            try:
                size = p.size_in_bytes()
            except OSError:
                size = None
            parts.append({"partition": p.index, "start_offset": p.start_offset, "end_offset": p.end_offset,
                          "records": max(0, p.end_offset - p.start_offset), "bytes": size,
                          "segments": len(p.segments)})
        cfg = t.config
        return {"name": t.name, "id": t.id, "partitions": parts,
                "config": {k: v for k, v in cfg.as_dict().items()}, "overrides": dict(cfg.overrides)}

    async def topic(self, request):
        return json_response(self._topic_detail(self._topic(request.match_info["topic"])))

    async def create_topic(self, request):
        body = await self._body(request)
        name = body.get("name")
        partitions = body.get("partitions", 1)
        config = body.get("config") or {}
        if not isinstance(name, str) or not name:
            raise _unprocessable("name must be a topic name")
        if isinstance(partitions, bool) or not isinstance(partitions, int):
            raise _unprocessable("partitions must be an integer")
        if not isinstance(config, dict):
            raise _unprocessable("config must be an object")
        why = self.hub.partition_budget_error(partitions) if partitions > 0 else None
        if why:
            raise RestError(422, 42200, why)
        try:
            t = self.hub.create_topic(name, partitions, {k: v for k, v in config.items() if v is not None})
        except errors.TopicExistsError as e:
            raise RestError(409, 40902, str(e)) from None
        except (ValueError, errors.UmlogError) as e:
            raise _unprocessable(str(e)) from None
        return json_response(self._topic_detail(t), 201)

    async def configure_topic(self, request):
        t = self._topic(request.match_info["topic"])
        body = await self._body(request)
        config, partitions = body.get("config"), body.get("partitions")
        if config is None and partitions is None:
            raise _unprocessable("give config ({key: value, or null to reset}) and/or partitions")
        if config is not None and not isinstance(config, dict):
            raise _unprocessable("config must be an object")
        if partitions is not None and (isinstance(partitions, bool) or not isinstance(partitions, int)):
            raise _unprocessable("partitions must be an integer")
        try:
            if config:
                self.broker.alter_topic_config(t.name, set={k: v for k, v in config.items() if v is not None},
                                               delete=[k for k, v in config.items() if v is None])
            if partitions is not None and partitions != t.num_partitions:
                why = self.hub.partition_budget_error(max(0, partitions - t.num_partitions))
                if why:
                    raise _unprocessable(why)
                self.broker.add_partitions(t.name, partitions)
        except (ValueError, errors.UmlogError) as e:
            raise _unprocessable(str(e)) from None
        return json_response(self._topic_detail(self.broker.topic(t.name)))

    async def delete_topic(self, request):
        t = self._topic(request.match_info["topic"])
        try:
            self.broker.delete_topic(t.name)
        except (ValueError, errors.UmlogError) as e:
            raise RestError(409, 40903, str(e)) from None
        return json_response({"deleted": t.name})

    # --- messages ------------------------------------------------------------------------------

    def _start_of(self, p, q, limit: int) -> int:
        """Where a page of ``p`` starts: offset=, time=, from=beginning|end (the last ``limit``)."""
        if q.get("offset") not in (None, ""):
            o = _int_param(q, "offset")
            if o < 0:  # from the end
                o = p.end_offset + o
            return min(max(o, p.start_offset), p.end_offset)
        if q.get("time") not in (None, ""):
            found = p.offset_for_time(parse_time_ms(q["time"]))
            return p.end_offset if found is None else max(found, p.start_offset)
        if q.get("from", "end") == "beginning":
            return p.start_offset
        return max(p.start_offset, p.end_offset - limit)

    async def messages(self, request):
        t = self._topic(request.match_info["topic"])
        q = request.query
        if q.get("from") not in (None, "", "beginning", "end"):
            raise _bad(f"from={q['from']!r}: give beginning or end (or offset=, time=)")
        limit = _int_param(q, "limit", PAGE, 1, MAX_PAGE)
        out, pages = [], []
        for p in self._partitions(t, q):
            start = self._start_of(p, q, limit)
            recs = []
            if start < p.end_offset:
                try:
                    recs = [record_json(t.name, r) for r in p.read(start, max_records=limit)]
                except errors.OffsetOutOfRangeError:
                    recs = []
            out.extend(recs)
            pages.append({"partition": p.index, "start_offset": p.start_offset, "end_offset": p.end_offset,
                          "from": start, "next": recs[-1]["offset"] + 1 if recs else start})
        if len(pages) > 1:
            out.sort(key=lambda r: (r["timestamp"], r["partition"], r["offset"]))
        return json_response({"topic": t.name, "records": out, "partitions": pages})

    async def search(self, request):
        t = self._topic(request.match_info["topic"])
        q = request.query
        key, contains, expr = q.get("key") or None, q.get("contains") or None, q.get("jmespath") or None
        if key is None and contains is None and expr is None:
            raise _bad("give key=, contains= and/or jmespath=")
        compiled = None
        if expr is not None:
            import jmespath
            from jmespath.exceptions import JMESPathError

            try:
                compiled = jmespath.compile(expr)
            except JMESPathError as e:
                raise _bad(f"jmespath={expr!r}: {' '.join(str(e).split())}") from None
        scan = _int_param(q, "scan", SCAN, 1, MAX_SCAN)
        limit = _int_param(q, "limit", PAGE, 1, MAX_PAGE)
        parts = self._partitions(t, q)
        after = _positions(q.get("after"))
        starts = {}
        for p in parts:
            if p.index in after:
                o = min(max(after[p.index], p.start_offset), p.end_offset)
            elif "offset" in q or "time" in q:
                o = self._start_of(p, q, scan)
            elif q.get("from", "beginning") == "beginning":
                o = p.start_offset
            else:
                o = max(p.start_offset, p.end_offset - scan)
            starts[p.index] = o
        needle = contains.encode() if contains is not None else None
        kb = key.encode() if key is not None else None
        result = await asyncio.to_thread(_search, t.name, parts, starts, kb, needle, compiled, scan, limit)
        return json_response(result)

    async def produce(self, request):
        t = self._topic(request.match_info["topic"])
        body = await self._body(request)
        b64 = body.get("encoding") == "base64"

        def raw(v, what):
            if v is None:
                return None
            if not isinstance(v, str):
                import json

                v = json.dumps(v, separators=(",", ":"), ensure_ascii=False)
                return v.encode()
            if b64:
                try:
                    return base64.b64decode(v, validate=True)
                except (binascii.Error, ValueError):
                    raise _unprocessable(f"{what} is not valid base64") from None
            return v.encode()

        headers = body.get("headers") or []
        if isinstance(headers, dict):
            headers = list(headers.items())
        if not isinstance(headers, list) or not all(isinstance(h, list | tuple) and len(h) == 2
                                                    and isinstance(h[0], str) for h in headers):
            raise _unprocessable("headers must be [[name, value], ...] or {name: value}")
        hs = [(k, raw(v, f"header {k}")) for k, v in headers]
        part = body.get("partition")
        rows = [(raw(body.get("value"), "value"), raw(body.get("key"), "key"), hs or None, part)]
        (res,) = await self.door.rest.append(t, rows)
        return json_response({"topic": t.name, **res})

    # --- consumer groups -----------------------------------------------------------------------

    def _lag_rows(self, group: str) -> list[dict]:
        rows = []
        if not self._has_offsets():
            return rows
        now = time.time() * 1000
        for (topic, i), v in self.broker.offsets.group_offsets(group).items():
            try:
                p = self.broker.topic(topic).partitions[i]
            except (errors.UnknownTopicError, IndexError, ValueError):
                continue
            end = p.end_offset
            lag = max(0, end - v.offset)
            secs = 0.0
            if lag:
                ts = _first_timestamp(p, max(v.offset, p.start_offset))
                if ts is not None and ts >= 0:
                    secs = round(max(0.0, (now - ts) / 1000), 3)
            rows.append({"topic": topic, "partition": i, "committed": v.offset, "metadata": v.metadata,
                         "start_offset": p.start_offset, "end_offset": end, "lag": lag, "lag_seconds": secs})
        return rows

    def _live(self, group: str) -> tuple[str, list[dict]]:
        """(state, members) of ``group`` from the coordinator and the REST instances."""
        members = []
        state = "Empty"
        g = self._coordinator_groups().get(group)
        if g is not None and g.members:
            state = g.state.value if hasattr(g.state, "value") else str(g.state)
            for m in g.members.values():
                members.append({"member_id": m.member_id, "client_id": m.client_id, "host": m.client_host,
                                "instance_id": m.instance_id, "kind": "kafka",
                                "assignment": decode_assignment(m.assignment)})
        elif g is not None:
            state = g.state.value if hasattr(g.state, "value") else str(g.state)
        for inst in self._rest_instances(group):
            assigned: dict[str, list[int]] = {}
            for topic, p in self.door.rest._assigned(inst):
                assigned.setdefault(topic, []).append(p)
            members.append({"member_id": inst.name, "client_id": inst.name, "host": "", "instance_id": None,
                            "kind": "rest", "assignment": assigned})
        if members and state in ("Empty", "Dead"):
            state = "Stable"
        return state, members

    async def groups(self, request):
        names = set(self._coordinator_groups())
        if self._has_offsets():
            names.update(self.broker.offsets.groups())
        rest = self.door.rest
        if rest is not None:
            names.update(g for g, _ in rest.instances)
        out = []
        for name in sorted(names):
            state, members = self._live(name)
            if state == "Dead" and not members:
                continue
            rows = self._lag_rows(name)
            out.append({"group": name, "state": state, "members": len(members),
                        "partitions": len(rows), "lag": sum(r["lag"] for r in rows),
                        "lag_seconds": max((r["lag_seconds"] for r in rows), default=0.0),
                        "topics": sorted({r["topic"] for r in rows})})
        return json_response(out)

    async def group(self, request):
        name = request.match_info["group"]
        state, members = self._live(name)
        rows = self._lag_rows(name)
        if not rows and not members and name not in self._coordinator_groups():
            raise RestError(404, 40403, f"Group {name} not found.")
        return json_response({"group": name, "state": state, "members": members, "offsets": rows,
                              "lag": sum(r["lag"] for r in rows)})

    async def reset_group(self, request):
        """Kafka's ``kafka-consumer-groups --reset-offsets``: only while the group has no
        live member (else 409, as Kafka answers), for every partition the group has
        offsets for, or for ``topic`` (and ``partitions``)."""
        from umlog.groups.offsets import OffsetAndMetadata

        name = request.match_info["group"]
        body = await self._body(request)
        to = body.get("to")
        if to not in ("earliest", "latest", "time", "offset"):
            raise _unprocessable("to must be earliest, latest, time or offset")
        state, members = self._live(name)
        if members:
            raise RestError(409, 40903, f"Assignments can only be reset if the group '{name}' is inactive, "
                                        f"but the current state is {state} ({len(members)} members).")
        committed = self.broker.offsets.group_offsets(name) if self._has_offsets() else {}
        topic = body.get("topic")
        if topic is not None:
            t = self._topic(topic)
            wanted = body.get("partitions")
            if wanted is None:
                tps = [(t.name, i) for i in range(t.num_partitions)]
            elif isinstance(wanted, list) and all(isinstance(i, int) and 0 <= i < t.num_partitions
                                                  for i in wanted):
                tps = [(t.name, i) for i in wanted]
            else:
                raise _unprocessable(f"partitions must be a list of partitions of {t.name}")
        else:
            tps = list(committed)
        if not tps:
            raise RestError(404, 40403, f"Group {name} has no offsets to reset (give a topic).")
        target = None
        if to == "offset":
            target = body.get("offset")
            if isinstance(target, bool) or not isinstance(target, int):
                raise _unprocessable("offset must be an integer")
        elif to == "time":
            target = parse_time_ms(body.get("time"))
        new = {}
        for tp in tps:
            try:
                p = self.broker.topic(tp[0]).partitions[tp[1]]
            except (errors.UnknownTopicError, IndexError, ValueError):
                continue
            if to == "earliest":
                o = p.start_offset
            elif to == "latest":
                o = p.end_offset
            elif to == "offset":
                o = min(max(target, p.start_offset), p.end_offset)
            else:
                found = p.offset_for_time(target)
                o = p.end_offset if found is None else max(found, p.start_offset)
            new[tp] = o
        if body.get("dry_run"):
            return json_response({"group": name, "dry_run": True, "offsets": _offsets_list(new, committed)})
        store = self.broker.offsets
        store.commit(name, {tp: OffsetAndMetadata(o, -1, "") for tp, o in new.items()})
        part = store.partition_of(name)
        await self.hub.durable({part: part.end_offset})
        log.info("http: group %s reset to %s (%d partitions)", name, to, len(new))
        return json_response({"group": name, "offsets": _offsets_list(new, committed)})

    # --- share groups ---------------------------------------------------------------------------

    def _share_members(self, name: str) -> list[dict]:
        shares = getattr(self.hub, "_shares", None)
        g = None if shares is None else shares.groups.get(name)
        if g is None:
            return []
        return [{"member_id": m.member_id, "client_id": m.client_id, "host": m.client_host, "epoch": m.epoch,
                 "assignment": m.assignment} for m in g.members.values()]

    def _has_share_state(self) -> bool:
        return "__share_group_state" in self.broker.topics(internal=True)

    async def share_groups(self, request):
        if not self._has_share_state():
            return json_response([])
        from umlog.delivery.describe import list_groups

        rows = list_groups(self.broker)
        for r in rows:
            r["members"] = len(self._share_members(r["group"]))
        return json_response(rows)

    async def share_group(self, request):
        name = request.match_info["group"]
        d = None
        if self._has_share_state():
            from umlog.delivery.describe import describe_group

            d = describe_group(self.broker, name)
        if d is None:
            raise RestError(404, 40403, f"Share group {name} not found.")
        d["members"] = self._share_members(name)
        return json_response(d)

    # --- dead letters --------------------------------------------------------------------------

    async def dead_letter_topics(self, request):
        from umlog.delivery.dlq import dead_letter_topics

        return json_response(dead_letter_topics(self.broker))

    async def dead_letters(self, request):
        from umlog.delivery.dlq import origin, redrive_group, redrive_headers

        t = self._topic(request.match_info["topic"])
        q = request.query
        limit = _int_param(q, "limit", PAGE, 1, MAX_PAGE)
        committed = self.broker.offsets.group_offsets(redrive_group(t.name)) if self._has_offsets() else {}
        out, parts = [], []
        for p in self._partitions(t, q):
            v = committed.get((t.name, p.index))
            checkpoint = max(p.start_offset, v.offset if v is not None else 0)
            start = self._start_of(p, q, limit) if ("offset" in q or "from" in q or "time" in q) else \
                p.start_offset
            parts.append({"partition": p.index, "start_offset": p.start_offset, "end_offset": p.end_offset,
                          "redriven_through": checkpoint, "next_to_redrive":
                              checkpoint if checkpoint < p.end_offset else None})
            if start >= p.end_offset:
                continue
            for r in p.read(start, max_records=limit):
                d = record_json(t.name, r)
                d["headers"] = record_json(t.name, _Headers(r, redrive_headers(r.headers)))["headers"]
                d.update(origin(r.headers))
                d["redriven"] = r.offset < checkpoint
                out.append(d)
        return json_response({"topic": t.name, "dead_letters": out, "partitions": parts})

    async def redrive(self, request):
        """All dead letters not yet redriven (``{}``), or exactly one: ``{"partition",
        "offset"}`` naming the next one of its partition (redrive keeps one checkpoint
        per partition, so dead letters go back in order)."""
        from umlog.delivery.dlq import redrive, redrive_group

        t = self._topic(request.match_info["topic"])
        body = await self._body(request, required=False)
        to = body.get("to")
        if to is not None and not isinstance(to, str):
            raise _unprocessable("to must be a topic name")
        lock = self._redrives.setdefault(t.name, asyncio.Lock())
        async with lock:
            kwargs: dict[str, Any] = {}
            if "partition" in body or "offset" in body:
                p, o = body.get("partition"), body.get("offset")
                if any(isinstance(x, bool) or not isinstance(x, int) for x in (p, o)):
                    raise _unprocessable("partition and offset must be integers")
                if not 0 <= p < t.num_partitions:
                    raise RestError(404, 40402, f"Partition {p} of topic {t.name} not found.")
                part = t.partitions[p]
                v = self.broker.offsets.committed(redrive_group(t.name), t.name, p)
                nxt = max(part.start_offset, v.offset if v is not None else 0)
                if o < nxt:
                    raise RestError(409, 40903, f"{t.name}-{p}@{o} was redriven already.")
                if o >= part.end_offset:
                    raise RestError(404, 40402, f"{t.name}-{p} has no offset {o}.")
                if o > nxt:
                    raise RestError(409, 40903, f"Dead letters go back in order: {t.name}-{p}@{nxt} is the next "
                                                f"to redrive, not {o}.")
                kwargs = {"partitions": [p], "max_records": 1}
            try:
                result = await asyncio.to_thread(redrive, self.broker, t.name, to=to,
                                                 create_topic=self.hub.create_topic, **kwargs)
            except ValueError as e:
                raise _unprocessable(str(e)) from None
        log.info("http: redrive of %s: %s", t.name, result)
        return json_response({"topic": t.name, **result})

    # --- webhooks, MQTT sessions, throughput ---------------------------------------------------

    async def webhooks(self, request):
        hooks = getattr(self.hub, "webhooks", None)
        running = getattr(hooks, "running", None) or {}
        return json_response([w.status() for _, w in sorted(running.items())])

    async def mqtt_sessions(self, request):
        door = next((d for d in self.hub.doors if d.name == "mqtt"), None)
        store = getattr(door, "store", None)
        if store is None:
            raise RestError(404, 404, "The MQTT door is not running.")
        now = int(time.time() * 1000)
        out = []
        for cid, s in sorted(store.sessions.items()):
            out.append({"client_id": cid, "connected": s.conn is not None, "persistent": s.persistent,
                        "protocol": s.version, "expiry_s": s.expiry, "subscriptions":
                            [{"filter": f, "qos": sub.qos} for f, sub in s.subs.items()],
                        "in_flight": len(s.inflight), "peer": getattr(s.conn, "peer", None),
                        "gone_for_s": None if s.gone_at is None or s.conn is not None
                        else round(max(0, now - s.gone_at) / 1000, 1)})
        return json_response(out)

    async def get_throughput(self, request):
        raw = request.query.get("topics")
        topics = [x for x in raw.split(",") if x] if raw else None
        return json_response(self.throughput.series(topics))


class _Headers:
    """A record with other headers (for ``record_json``)."""

    def __init__(self, r, headers) -> None:
        self.partition, self.offset, self.timestamp = r.partition, r.offset, r.timestamp
        self.key, self.value, self.headers = r.key, r.value, headers


def _positions(raw: str | None) -> dict[int, int]:
    """``after=0:120,1:7`` (a search's ``next``): where each partition goes on."""
    out: dict[int, int] = {}
    for part in (raw or "").split(","):
        if not part:
            continue
        p, _, o = part.partition(":")
        try:
            out[int(p)] = int(o)
        except ValueError:
            raise _bad(f"after={raw!r}: give partition:offset pairs separated by commas") from None
    return out


def _offsets_list(new: dict, committed: dict) -> list[dict]:
    return [{"topic": t, "partition": p, "before": committed[(t, p)].offset if (t, p) in committed else None,
             "offset": o} for (t, p), o in sorted(new.items())]


def _search(topic: str, parts: list, starts: dict, key: bytes | None, needle: bytes | None, compiled,
            scan: int, limit: int) -> dict:
    """Records of ``parts`` matching every given test, reading at most ``scan`` records
    (shared among the partitions in turn, a batch at a time)."""
    import json

    found, scanned = [], 0
    pos = dict(starts)
    live = [p for p in parts if pos[p.index] < p.end_offset]
    while live and scanned < scan and len(found) < limit:
        share = max(1, min(500, (scan - scanned) // len(live)))
        nxt = []
        for p in live:
            if scanned >= scan or len(found) >= limit:
                nxt.append(p)
                continue
            try:
                recs = list(p.read(pos[p.index], max_records=min(share, scan - scanned)))
            except errors.OffsetOutOfRangeError:
                pos[p.index] = p.start_offset
                nxt.append(p)
                continue
            if not recs:
                continue
            for r in recs:
                scanned += 1
                pos[p.index] = r.offset + 1
                if key is not None and (r.key is None or bytes(r.key) != key):
                    continue
                value = bytes(r.value) if r.value is not None else None
                if needle is not None and (value is None or needle not in value):
                    continue
                if compiled is not None:
                    try:
                        doc = json.loads(value) if value is not None else None
                    except (ValueError, UnicodeDecodeError):
                        continue
                    try:
                        hit = compiled.search(doc)
                    except Exception:  # a JMESPath function given the wrong type: not a match
                        continue
                    if hit in (None, False, [], {}, ""):
                        continue
                found.append(record_json(topic, r))
                if len(found) >= limit:
                    break
            if pos[p.index] < p.end_offset:
                nxt.append(p)
        live = nxt
    done = all(pos[p.index] >= p.end_offset for p in parts)
    return {"topic": topic, "records": found, "scanned": scanned, "done": done,
            "next": {str(p.index): pos[p.index] for p in parts},
            "after": ",".join(f"{p.index}:{pos[p.index]}" for p in parts)}

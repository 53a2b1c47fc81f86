"""MQTT sessions: what outlives a connection, kept in the compacted topic ``mqtt-sessions``.

Theory of operation
-------------------
A ``Session`` is the server side of MQTT's session state for one client id:
its subscriptions, the QoS 1/2 messages sent and not yet acknowledged
(``inflight``, by packet id), the QoS 2 packet ids received and PUBREC'd
awaiting PUBREL (``qos2_in``), and its **position** in the log. A connection
attaches to one session; a takeover moves the session to the new connection.

A session whose expiry is not 0 (MQTT 3.1.1 clean session 0: never expires;
MQTT 5: ``session_expiry_interval``) is *persistent*: it is one record of the
compacted topic ``mqtt-sessions``, key = client id, value = the JSON below,
rewritten whenever it changes, a tombstone when it ends. Nothing is copied
into it: the messages a client misses while away stay in the log, and the
session is a cursor over it.

Position: ``pos[(topic, partition)]`` is the next offset of each tailed
partition this session has not looked at; every offset below it was either
delivered (and acknowledged, or it is in ``inflight``) or did not match. While
its client is connected and caught up (``live``), the door's fan-out hands it
records as they come, and its position is the fan-out's cursor (less what the
client's receive maximum holds back, ``Connection.waiting``). A session that
comes back reads the log itself from ``pos`` up to the fan-out's cursor
(``Connection._catch_up``, QoS >= 1 messages only, as mosquitto queues) and
then joins the live stream; no record is skipped or seen twice between the two.

Write order: every frame to a persistent session's client goes out only after
the session record that accounts for it is written (and durable under
``fsync=always``): a PUBLISH after the record naming its packet id (so a
resend after a restart uses the same id, which QoS 2 needs), a PUBREC after
the record holding the id in ``qos2_in``, a PUBCOMP after the one without it.
``SessionStore`` batches this: changed sessions and pending frames are
collected during one pass of the loop, the records appended as one batch, then
the frames written (``_flush``). So a SIGKILL at any point leaves state that a
client can resume from: nothing acknowledged is lost, nothing sent as QoS 2 is
sent under another packet id.

Record value (JSON)::

    {"v": 1, "proto": 4|5, "expiry": seconds or null (never),
     "gone_at": ms when its last connection ended or null (connected),
     "subs": [[filter, qos, no_local, retain_as_published, retain_handling,
               [[topic, partition, offset], ...], subscription id or null], ...],   # offsets: where it began
     "pos": [[topic, partition, offset], ...],
     "out": [[packet_id, topic, partition, offset, qos, state, retain], ...],
     "in2": [packet_id, ...], "next_id": n,
     "in2p": [[packet_id, [[topic, partition, offset], ...]], ...],   # when any
     "will": {"topic", "payload" (base64), "qos", "retain", "props", "due": ms,
              "principal", "host", "peer", "ends": [[topic, partition, offset], ...]}}
              # a delayed will pending, when any ("ends" once on its way; PendingWill)

QoS 2 received exactly once, across a SIGKILL too: the PUBREC goes out after
the record holding its packet id in ``in2``, but the message is stored before
that record can be written. So before storing QoS 2 messages of a persistent
session the door writes its record with each packet id in ``in2p`` and the
log's end offsets then, and the stored record carries the header
``mqtt-qos2-id`` = "packet id:client id". A restart finds each pending id's
record from those offsets on (``_settle_pending_in2``): found, the id is in
``in2`` (a resend is answered, not stored again); not found, it is dropped (the
resend is stored).

``state`` of an outgoing message: 1 (QoS 1 PUBLISH sent), 2 (QoS 2 PUBLISH
sent), 3 (PUBREC received, PUBREL sent). Shared-subscription messages are in
``out`` only once PUBREC'd (state 3): before that they belong to the share
group, which gives them to another member if this one goes away.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from typing import Any

from umlog._native.core import MqttOutgoing as Outgoing  # a QoS 1/2 message sent and not settled yet
from umlog._native.core import mqtt_session_out

from .codec import Subscription

__all__ = ["Session", "Outgoing", "SessionStore", "NEVER"]

log = logging.getLogger("umlog.server.mqtt")

NEVER = 0xFFFFFFFF  # MQTT 5: a session expiry interval that never ends
_MAX_TIMER_S = 86_400.0  # long expiries are re-armed daily (loop timers stay small)


class PendingWill:
    """The will of a connection that ended, waiting for its MQTT 5 will delay
    (``SessionStore.pend_will``). It is in the session record, so it outlives a
    restart. ``due``: the wall-clock ms it goes at; ``principal``, ``host`` and
    ``peer`` are its connection's, for the WRITE check when it goes
    (``MqttDoor.may`` takes it for that connection); ``ends``: the log's end
    offsets when its publishing began (``SessionStore.release_will``)."""

    __slots__ = ("topic", "payload", "qos", "retain", "properties", "due", "principal", "host", "peer", "ends",
                 "timer")

    def __init__(self, topic: str, payload: bytes, qos: int, retain: bool, properties: dict, due: int,
                 principal: str | None = None, host: str = "*", peer: str = "?") -> None:
        self.topic, self.payload, self.qos, self.retain = topic, bytes(payload), qos, bool(retain)
        # the delay is ``due`` now; the rest go out with the will
        self.properties = {k: v for k, v in properties.items() if k != "will_delay_interval"}
        self.due = due
        self.principal, self.host, self.peer = principal, host, peer
        self.ends: dict[tuple[str, int], int] | None = None
        self.timer: asyncio.TimerHandle | None = None

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def to_json(self) -> dict:
        props = dict(self.properties)
        if "correlation_data" in props:
            props["correlation_data"] = base64.b64encode(props["correlation_data"]).decode()
        v = {"topic": self.topic, "payload": base64.b64encode(self.payload).decode(), "qos": self.qos,
             "retain": int(self.retain), "props": props, "due": self.due, "principal": self.principal,
             "host": self.host, "peer": self.peer}
        if self.ends is not None:
            v["ends"] = [[t, p, o] for (t, p), o in sorted(self.ends.items())]
        return v

    @classmethod
    def from_json(cls, v: dict) -> PendingWill:
        props = dict(v["props"])
        if "correlation_data" in props:
            props["correlation_data"] = base64.b64decode(props["correlation_data"])
        if "user_property" in props:
            props["user_property"] = [(k, x) for k, x in props["user_property"]]
        w = cls(v["topic"], base64.b64decode(v["payload"]), v["qos"], bool(v["retain"]), props, v["due"],
                v.get("principal"), v.get("host", "*"), v.get("peer", "?"))
        if "ends" in v:
            w.ends = {(t, p): o for t, p, o in v["ends"]}
        return w


class Session:
    """One client id's session (see the module docstring)."""

    def __init__(self, client_id: str, version: int, expiry: int | None) -> None:
        self.client_id = client_id
        self.version = version
        self.expiry = expiry  # seconds; None: never; 0: ends with its connection
        self.subs: dict[str, Subscription] = {}  # every filter, "$share/..." ones included
        self.sub_ids: dict[str, int] = {}  # filter -> its MQTT 5 subscription identifier, where it has one
        self.since: dict[str, dict[tuple[str, int], int]] = {}  # filter -> end offsets when subscribed
        self.pos: dict[tuple[str, int], int] = {}
        self.inflight: dict[int, Outgoing] = {}
        self.qos2_in: set[int] = set()
        # QoS 2 packet ids being stored: pid -> the log's end offsets before (see the module docstring)
        self.in2_pending: dict[int, dict[tuple[str, int], int]] = {}
        self.next_id = 0
        self.gone_at: int | None = None
        self.conn: Any = None
        self.live = False  # fed by the fan-out (else: catching up, or no connection)
        self.written = False  # a record of it is in mqtt-sessions
        self.ended = False
        self.timer: asyncio.TimerHandle | None = None
        self.will: PendingWill | None = None  # a will waiting for its delay (SessionStore.pend_will)

    def __repr__(self) -> str:
        return f"<Session {self.client_id!r} expiry={self.expiry} subs={list(self.subs)}>"

    @property
    def persistent(self) -> bool:
        return self.expiry != 0

    def packet_id(self) -> int:
        for _ in range(65535):
            self.next_id = self.next_id % 65535 + 1
            if self.next_id not in self.inflight:
                return self.next_id
        raise RuntimeError("every packet id is in flight")

    def cancel_will(self) -> None:
        """A connection resumed the session within the will delay: no will (the
        caller marks the session, so its record loses the will too)."""
        if self.will is not None:
            self.will.disarm()
            self.will = None

    # --- bytes -----------------------------------------------------------------------------

    def encode(self, pos: dict[tuple[str, int], int]) -> bytes:
        subs = [[f, s.qos, s.no_local, s.retain_as_published, s.retain_handling,
                 [[t, p, o] for (t, p), o in sorted(self.since.get(f, {}).items())], self.sub_ids.get(f)]
                for f, s in self.subs.items()]
        v = {"v": 1, "proto": self.version, "expiry": None if self.expiry is None else self.expiry,
             "gone_at": self.gone_at, "subs": subs, "pos": [[t, p, o] for (t, p), o in sorted(pos.items())],
             "in2": sorted(self.qos2_in), "next_id": self.next_id}
        if self.in2_pending:
            v["in2p"] = [[pid, [[t, p, o] for (t, p), o in sorted(ends.items())]]
                         for pid, ends in self.in2_pending.items()]
        if self.will is not None:
            v["will"] = self.will.to_json()
        # "out" (the messages in flight) is made natively: it is most of the record
        text = json.dumps(v, separators=(",", ":")).encode()
        return b"".join((text[:-1], b',"out":', mqtt_session_out(self.inflight, json.dumps), b"}"))

    @classmethod
    def decode(cls, client_id: str, raw: bytes) -> Session:
        v = json.loads(raw)
        if v.get("v") != 1:
            raise ValueError(f"session record version {v.get('v')!r}")
        s = cls(client_id, v["proto"], v["expiry"])
        s.gone_at = v.get("gone_at")
        for f, qos, nl, rap, rh, since, *sub_id in v["subs"]:
            s.subs[f] = Subscription(f, qos, bool(nl), bool(rap), rh)
            s.since[f] = {(t, p): o for t, p, o in since}
            if sub_id and sub_id[0] is not None:
                s.sub_ids[f] = sub_id[0]
        s.pos = {(t, p): o for t, p, o in v["pos"]}
        for pid, t, p, o, qos, state, retain in v["out"]:
            out = Outgoing("", b"", {}, qos, bool(retain), (t, p, o))
            out.state = state
            s.inflight[pid] = out
        s.qos2_in = set(v["in2"])
        s.in2_pending = {pid: {(t, p): o for t, p, o in ends} for pid, ends in v.get("in2p", ())}
        s.next_id = v.get("next_id", 0)
        if v.get("will") is not None:
            s.will = PendingWill.from_json(v["will"])
        s.written = True
        return s


class SessionStore:
    """The door's sessions, and their records in ``mqtt-sessions`` (module docstring)."""

    def __init__(self, door, topic) -> None:
        self.door = door
        self.topic = topic  # the compacted sessions topic (one partition)
        self.sessions: dict[str, Session] = {}
        self._dirty: set[Session] = set()
        self._conns: dict[Any, None] = {}  # connections with frames waiting for a write
        self._task: asyncio.Task | None = None

    def load(self) -> None:
        """Every session of the topic; expiry timers from the time each ended (a
        session whose client was connected when the server stopped ends now)."""
        now = _now_ms()
        p = self.topic.partitions[0]
        raw: dict[str, bytes | None] = {}
        for r in p.read(p.start_offset):
            if r.key is not None:
                raw[r.key.decode("utf-8", "replace")] = None if r.value is None else bytes(r.value)
        for cid, v in raw.items():
            if v is None:
                continue
            try:
                s = Session.decode(cid, v)
            except (ValueError, KeyError, TypeError) as e:
                log.warning("mqtt: skipping the session record of %r: %s", cid, e)
                continue
            if s.gone_at is None:
                s.gone_at = now
            self.sessions[cid] = s
            self.arm_expiry(s)
        self._settle_pending_in2()
        self._settle_pending_wills()
        wills = [s for s in self.sessions.values() if s.will is not None]
        for s in wills:  # at once if it fell due while the server was down
            self._arm_will(s)
        if self.sessions:
            log.info("mqtt: %d persistent session(s) restored, %d with a delayed will pending", len(self.sessions),
                     len(wills))

    def _settle_pending_in2(self) -> None:
        """QoS 2 messages whose storing a stop cut short: each one found in the log
        (its ``QOS2_ID_HEADER``) counts as received, so its resend is not stored
        again; one not found was not stored, and its resend will be."""
        from .door import QOS2_ID_HEADER

        pending = [ends for s in self.sessions.values() for ends in s.in2_pending.values()]
        if not pending:
            return
        found = self._marked(pending, QOS2_ID_HEADER)
        for s in self.sessions.values():
            if s.in2_pending:
                s.qos2_in.update(pid for pid in s.in2_pending if f"{pid}:{s.client_id}" in found)
                s.in2_pending = {}
                self.mark(s)

    def _settle_pending_wills(self) -> None:
        """Delayed wills whose publishing a stop cut short (``release_will``):
        one found in the log (its ``WILL_ID_HEADER``) went out and is dropped;
        one not found goes out at once."""
        from .door import WILL_ID_HEADER

        pending = [s for s in self.sessions.values() if s.will is not None and s.will.ends is not None]
        if not pending:
            return
        found = self._marked([s.will.ends for s in pending], WILL_ID_HEADER)
        now = _now_ms()
        for s in pending:
            if _will_id(s) in found:
                s.will = None
            else:
                s.will.ends = None
                s.will.due = min(s.will.due, now)
            self.mark(s)

    def _marked(self, ends: list[dict[tuple[str, int], int]], header: str) -> set[str]:
        """The values of ``header`` in the records from the lowest of the
        offsets ``ends`` note for each partition on (what a stop may have cut
        short was appended there)."""
        start: dict[tuple[str, int], int] = {}
        for e in ends:
            for k, o in e.items():
                start[k] = min(o, start.get(k, o))
        found = set()
        for (t, i), o in start.items():
            try:
                p = self.door.broker.topic(t).partitions[i]
            except (KeyError, IndexError):
                continue
            for r in p.read(max(o, p.start_offset)):
                for k, v in r.headers:
                    if k == header and v is not None:
                        found.add(bytes(v).decode("utf-8", "replace"))
        return found

    def write_at_once(self, s: Session) -> None:
        """Write the record of ``s`` at once (not at the end of this pass of the
        loop): before an append it announces (``in2_pending``)."""
        self._dirty.discard(s)
        p = self.topic.partitions[0]
        p.append_many([s.encode(self.door.position_of(s))], [s.client_id.encode()])
        s.written = True

    # --- a delayed will -------------------------------------------------------------------

    def pend_will(self, s: Session, will: PendingWill) -> None:
        """Hold the will of the connection that just ended: it goes at
        ``will.due`` or when the session ends, whichever is first
        (``release_will``), unless a connection resumes the session before
        (``Session.cancel_will``). It is in the session record, so a restart
        keeps it, re-armed by ``load`` (at once if it fell due meanwhile)."""
        if s.will is not None:
            s.will.disarm()
        s.will = will
        self.mark(s)
        self._arm_will(s)

    def _arm_will(self, s: Session) -> None:
        w = s.will
        w.disarm()
        w.timer = _call_at_ms(w.due, self._will_due, s, w)

    def _will_due(self, s: Session, w: PendingWill) -> None:
        w.timer = None
        if s.will is not w:
            return
        if w.due > _now_ms():
            self._arm_will(s)  # a long delay, re-armed daily
            return
        self.release_will(s)

    def release_will(self, s: Session) -> None:
        """Publish the pending will of ``s`` now, once even across a SIGKILL: the
        session record first notes the log's end offsets (``ends``), the will's
        record carries ``WILL_ID_HEADER``, and after a restart a will noted so is
        looked for in the log from there (``_settle_pending_wills``) and sent
        only if it is not found. It leaves the record once durable. During a
        shutdown it stays in the record and goes after the restart."""
        from .door import WILL_ID

        w = s.will
        if w is None or w.ends is not None:  # none, or on its way
            return
        w.disarm()
        door = self.door
        if door.hub.shutting_down:
            return
        if w.principal is not None and not door.may(w, "WRITE", door.log_topic(w.topic)):
            log.info("mqtt: the will of %r on %r denied to %s", s.client_id, w.topic, w.principal)
            s.will = None
            self.mark(s)
            return
        w.ends = door.end_offsets()
        if s.persistent:
            self.write_at_once(s)
        try:
            appended = door.append_many(None, [(w.topic, w.payload, w.qos, w.retain,
                                                {**w.properties, WILL_ID: _will_id(s)})])
        except Exception:  # kept as on its way: a restart looks for it, and sends it
            log.exception("mqtt: publishing the will of %r failed", s.client_id)
            return
        asyncio.get_running_loop().create_task(self._will_published(s, w, appended))

    async def _will_published(self, s: Session, w: PendingWill, appended: dict) -> None:
        try:
            await self.door.hub.durable(appended)
        except Exception:  # kept as on its way: a restart looks for it
            log.exception("mqtt: syncing the will of %r failed", s.client_id)
            return
        if s.will is w:
            s.will = None
            self.mark(s)

    # --- expiry --------------------------------------------------------------------------

    def arm_expiry(self, s: Session) -> None:
        if s.timer is not None:
            s.timer.cancel()
            s.timer = None
        if s.expiry is None or s.conn is not None or s.gone_at is None:
            return
        s.timer = _call_at_ms(s.gone_at + s.expiry * 1000, self._expire, s)

    def _expire(self, s: Session) -> None:
        s.timer = None
        if s.conn is not None or self.sessions.get(s.client_id) is not s:
            return
        if s.gone_at + s.expiry * 1000 > _now_ms():
            self.arm_expiry(s)
            return
        log.info("mqtt: the session of %r expired (%d s after its client left)", s.client_id, s.expiry)
        self.discard(s)

    def discard(self, s: Session) -> None:
        """End a session for good: its shared subscriptions leave, its record goes."""
        if s.ended:
            return
        self.release_will(s)  # the session ends before the will delay: the will goes now (its record first)
        s.ended = True
        if s.timer is not None:
            s.timer.cancel()
            s.timer = None
        if self.sessions.get(s.client_id) is s:
            del self.sessions[s.client_id]
        self.door.shares.leave_all(s)
        if s.written:
            self._dirty.add(s)
            self._schedule()

    # --- writing ---------------------------------------------------------------------------

    def mark(self, s: Session) -> None:
        """``s`` changed: write its record at the end of this pass of the loop."""
        if (s.persistent or s.written) and not s.ended:
            self._dirty.add(s)
            self._schedule()

    def hold(self, conn) -> None:
        """``conn`` has frames waiting (``conn.outbox``) for the next write."""
        self._conns[conn] = None
        self._schedule()

    def _schedule(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            await asyncio.sleep(0)  # let this pass of the loop add to the batch
            while self._dirty or self._conns:
                appended, frames = self._write_batch()
                if appended:
                    try:
                        await self.door.hub.durable(appended)
                    except Exception:
                        log.exception("mqtt: syncing the session records failed; closing those connections")
                        for conn, _ in frames:
                            conn.abort()
                        continue
                for conn, data in frames:
                    conn.write_now(data)
        finally:
            self._task = None

    def flush_now(self) -> None:
        """Write what is pending at once, without waiting for durability (a
        connection ending, the door closing)."""
        _, frames = self._write_batch()
        for conn, data in frames:
            conn.write_now(data)

    def _write_batch(self):
        dirty, self._dirty = self._dirty, set()
        conns, self._conns = self._conns, {}
        frames = []
        for conn in conns:
            if conn.outbox:
                frames.append((conn, b"".join(conn.outbox)))
                conn.outbox = []
        if not dirty:
            return None, frames
        keys, values = [], []
        # Tombstones first: a clean start ends a session and makes one of the same
        # client id in one pass, and the later record of a key is the one kept.
        for s in sorted(dirty, key=lambda s: not s.ended):
            if s.ended or not s.persistent:
                if s.written:
                    keys.append(s.client_id.encode())
                    values.append(None)
                    s.written = False
                continue
            keys.append(s.client_id.encode())
            values.append(s.encode(self.door.position_of(s)))
            s.written = True
        if not keys:
            return None, frames
        p = self.topic.partitions[0]
        try:
            p.append_many(values, keys)
        except Exception:
            log.exception("mqtt: writing %d session record(s) failed; closing those connections", len(keys))
            for conn, _ in frames:
                conn.abort()
            return None, []
        return {p: p.end_offset}, frames


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _call_at_ms(due_ms: int, fn, *args) -> asyncio.TimerHandle:
    """Call ``fn(*args)`` at wall-clock ``due_ms`` (at once if past), or after
    ``_MAX_TIMER_S`` if that is sooner: ``fn`` checks the time and re-arms."""
    left = (due_ms - _now_ms()) / 1000
    return asyncio.get_running_loop().call_later(max(0.0, min(left, _MAX_TIMER_S)), fn, *args)


def _will_id(s: Session) -> str:
    """What the record of the pending will of ``s`` carries as ``WILL_ID_HEADER``."""
    return f"{s.will.due}:{s.client_id}"

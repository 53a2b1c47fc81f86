"""Shared subscriptions (``$share/GROUP/FILTER``) on the engine's share groups.

Theory of operation
-------------------
Each (GROUP, FILTER) is one engine share group, ``mqtt.GROUP.FILTER``, over
the topics the door tails (``mqtt-messages`` and every routed topic), starting
at their end when first made. Every session subscribed to it is a member with
an engine handle of its own, so what it acquired is settled by it alone.

``pump`` (run after appends, acknowledgements, joins and releases) hands
records out: members in turn, each acquiring at most what its client's
receive maximum leaves room for, so a message goes to exactly one member.
Records whose key (the MQTT topic name) does not match FILTER, or whose
message expiry has passed, are acknowledged at once and never sent. A QoS 0
delivery is acknowledged when sent; QoS 1 at PUBACK; QoS 2 at PUBREC, the
point from which the client holds the message (releasing it later would send
it twice). A member whose connection ends, or that unsubscribes, releases what
it holds: available again at once, for any member, its delivery count kept.
A server restart does the same (the engine's acquired records come back
available).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from .codec import topic_matches

__all__ = ["Shares", "SharedSub", "SHARE_GROUP_SETTINGS"]

log = logging.getLogger("umlog.server.mqtt")

# A connected client holds a message until it acknowledges it (a lock that
# expired would give it to a second member meanwhile): locks are long, and a
# release (its connection ended) is available again at once.
SHARE_GROUP_SETTINGS = {"max_attempts": 1000, "lock_ms": 24 * 3_600_000, "backoff_ms": None, "start": "latest"}
_PER_TURN = 16  # records a member acquires per turn
_PER_PUMP = 1000  # records handed out before the pump yields to the loop


class SharedSub:
    """One ``$share/GROUP/FILTER``: its engine group and members."""

    def __init__(self, door, group: str, filter: str) -> None:
        self.door = door
        self.group = group
        self.filter = filter
        self.name = f"mqtt.{group}.{filter}"
        self.members: dict[Any, Any] = {}  # session -> its engine handle
        self._turn = 0

    def handle(self):
        return self.door.broker.share_group(self.name, list(self.door.tailed), **SHARE_GROUP_SETTINGS)


class Shares:
    """Every shared subscription of the door (module docstring)."""

    def __init__(self, door) -> None:
        self.door = door
        self.subs: dict[tuple[str, str], SharedSub] = {}
        self._scheduled = False

    def join(self, session, group: str, filter: str) -> None:
        sub = self.subs.get((group, filter))
        if sub is None:
            sub = self.subs[(group, filter)] = SharedSub(self.door, group, filter)
        if session not in sub.members:
            sub.members[session] = sub.handle()
        self.schedule()

    def leave(self, session, group: str, filter: str) -> None:
        sub = self.subs.get((group, filter))
        if sub is None or session not in sub.members:
            return
        self.release(session, sub)
        del sub.members[session]
        if not sub.members:
            del self.subs[(group, filter)]

    def leave_all(self, session) -> None:
        for (group, filter), sub in list(self.subs.items()):
            if session in sub.members:
                self.leave(session, group, filter)

    # --- settling --------------------------------------------------------------------------

    def ack(self, share) -> None:
        sub, handle, rec = share
        self._settle(handle.ack, [rec], sub)

    def release(self, session, only: SharedSub | None = None, waiting=()) -> None:
        """Give back what ``session`` holds of ``only`` (None: of every shared
        subscription) and not PUBREC'd: in flight, and in ``waiting``."""
        held = []
        for pid, out in list(session.inflight.items()):
            if out.share is not None and (only is None or out.share[0] is only):
                held.append(out.share)
                del session.inflight[pid]
        for entry in waiting:
            share = entry[-1]
            if share is not None and (only is None or share[0] is only):
                held.append(share)
        for sub, handle, rec in held:
            self._settle(lambda rs, h=handle: h.release(rs, delay_ms=0), [rec], sub)
        if held:
            self.schedule()

    def give_back(self, share) -> None:
        """Release one record that could not be sent."""
        sub, handle, rec = share
        self._settle(lambda rs: handle.release(rs, delay_ms=0), [rec], sub)
        self.schedule()

    def _settle(self, fn, recs: list, sub: SharedSub) -> None:
        from umlog.delivery.group import InvalidRecordStateError

        try:
            fn(recs)
        except InvalidRecordStateError as e:  # its lock expired: the group has it again
            log.info("mqtt: share group %r: %s", sub.name, e)
        except Exception:
            r = recs[0]
            log.exception("mqtt: share group %r: settling %d record(s) from %s-%d@%d failed", sub.name, len(recs),
                          r.topic, r.partition, r.offset)

    # --- handing out -----------------------------------------------------------------------

    def schedule(self) -> None:
        if not self._scheduled and self.subs:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.pump)

    def pump(self) -> None:
        self._scheduled = False
        if self.door.hub.shutting_down:
            return
        more = False
        for sub in list(self.subs.values()):
            try:
                more |= self._pump_one(sub)
            except Exception:
                log.exception("mqtt: share group %r: handing out records failed", sub.name)
        if more:
            self.schedule()

    def _pump_one(self, sub: SharedSub) -> bool:
        from .door import publish_fields, with_ids

        sent = 0
        while sent < _PER_PUMP:
            members = [(s, h) for s, h in sub.members.items() if s.conn is not None and s.conn.ready()]
            if not members:
                return False
            got_any = False
            sub._turn += 1
            for j in range(len(members)):
                s, handle = members[(sub._turn + j) % len(members)]
                room = s.conn.room()
                if room <= 0:
                    continue
                recs = handle.acquire(max_records=min(room, _PER_TURN), timeout=0)
                if not recs:
                    return False  # nothing available for anyone
                got_any = True
                sent += len(recs)
                done = []
                now_ms = time.time_ns() // 1_000_000
                shared_filter = f"$share/{sub.group}/{sub.filter}"
                subscription = s.subs.get(shared_filter)
                sub_id = s.sub_ids.get(shared_filter)
                for rec in recs:
                    name = _topic_name(rec)
                    fields = None if name is None or not topic_matches(sub.filter, name) else publish_fields(
                        rec, now_ms)
                    if fields is None or subscription is None:
                        done.append(rec)
                        continue
                    mqos, _retain, props = fields
                    props = with_ids(props, () if sub_id is None else (sub_id,))
                    qos = min(subscription.qos, mqos)
                    loc = (rec.topic, rec.partition, rec.offset)
                    if qos == 0:
                        done.append(rec)
                        s.conn.send_message(name, rec.value or b"", 0, False, props, loc)
                    else:
                        s.conn.send_message(name, rec.value or b"", qos, False, props, loc, (sub, handle, rec))
                if done:
                    self._settle(handle.ack, done, sub)
            if not got_any:
                return False
        return True


def _topic_name(rec) -> str | None:
    if rec.key is None:
        return None
    try:
        return bytes(rec.key).decode("utf-8")
    except UnicodeDecodeError:
        return None

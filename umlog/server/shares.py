"""Share-group membership for the doors: members, epochs, sessions, assignment.

The engine's share groups (``umlog.delivery.group``) know records, locks,
delivery counts and dead letters, and identify a consumer by its *handle*.
A protocol door has members instead: a Kafka ``ShareConsumer`` (KIP-932), and
later MQTT shared subscriptions and AMQP queue consumers. ``ShareMembers``
(owned by the hub, ``hub.shares``) is the door-neutral part between the two:

* one engine group per group name, opened on the first member with the
  server's share settings (``share_*`` in ``[server]``); its topics grow with
  the members' subscriptions (``ShareGroup.add_topics``), never shrink;
* a member is an id chosen by the client, with a **member epoch**, its
  subscription, and its own engine handle, so the records it acquired are
  settled by it only;
* **assignment**: every member gets every partition of the topics it
  subscribes to that exist (KIP-932's simple assignor may give a partition to
  several members; here all members share all partitions, and the engine's
  locks decide who gets which record). The group epoch moves when a member
  joins or leaves, or an assignment changes (a subscription, a new topic or
  partition); a member's epoch catches up on its next heartbeat, which carries
  its new assignment;
* **sessions**: a member that sends no heartbeat for the session timeout is
  removed, and every record it held is released at once (available again,
  its delivery count kept; past the limit it is dead). So is a member that
  leaves (epoch -1).

Epoch rules (as Kafka's coordinator): 0 joins (an id already present joins
again: what it held is released); -1 leaves; otherwise an unknown id is
UNKNOWN_MEMBER_ID, and an epoch that is neither the member's nor the one
before it (a response that was lost) is FENCED_MEMBER_EPOCH.

Everything runs on the hub's loop; engine calls are short (acquire with
timeout 0) and their state writes go through the hub's durability gate in the
doors that acknowledge them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from umlog import errors

__all__ = ["ShareMembers", "ShareMember", "ShareGroupMembers", "HeartbeatResult", "share_settings",
           "UNKNOWN_MEMBER_ID", "FENCED_MEMBER_EPOCH", "GROUP_MAX_SIZE_REACHED", "INVALID_REQUEST"]

log = logging.getLogger("umlog.server.shares")

# Error names (the Kafka door maps them to kio's ErrorCode by name).
UNKNOWN_MEMBER_ID = "unknown_member_id"
FENCED_MEMBER_EPOCH = "fenced_member_epoch"
GROUP_MAX_SIZE_REACHED = "group_max_size_reached"
INVALID_REQUEST = "invalid_request"

MAX_MEMBERS = 200  # Kafka's group.share.max.size


class ShareMember:
    """One consumer of a share group, as a door sees it."""

    __slots__ = ("member_id", "epoch", "previous_epoch", "topics", "assignment", "client_id", "client_host",
                 "rack", "handle", "timer", "last_heartbeat")

    def __init__(self, member_id: str, handle: Any) -> None:
        self.member_id = member_id
        self.epoch = 0
        self.previous_epoch = -1
        self.topics: list[str] = []
        self.assignment: dict[str, list[int]] = {}
        self.client_id = ""
        self.client_host = ""
        self.rack: str | None = None
        self.handle = handle  # the engine's ShareGroup handle: what it acquires is its own
        self.timer: asyncio.TimerHandle | None = None
        self.last_heartbeat = 0.0


class ShareGroupMembers:
    """A share group's members and epochs, over one engine group."""

    def __init__(self, name: str, group: Any) -> None:
        self.name = name
        self.group = group  # an engine handle (umlog.delivery.ShareGroup), for siblings and settings
        self.members: dict[str, ShareMember] = {}
        self.epoch = 0  # the group epoch
        self.assignment_epoch = 0

    @property
    def state(self) -> str:
        return "Stable" if self.members else "Empty"


class HeartbeatResult:
    __slots__ = ("error", "message", "member", "assignment_changed")

    def __init__(self, error: str | None = None, message: str | None = None, member: ShareMember | None = None,
                 assignment_changed: bool = False) -> None:
        self.error = error
        self.message = message
        self.member = member
        self.assignment_changed = assignment_changed


class ShareMembers:
    """Every share group served by the doors of one hub (see the module docstring)."""

    def __init__(self, broker: Any, *, lock_ms: int = 30_000, session_timeout_ms: int = 45_000,
                 heartbeat_interval_ms: int = 5_000, delivery_count_limit: int = 5,
                 dead_letter: str | None = None, start: str = "latest", max_in_flight: int = 2_000) -> None:
        self.broker = broker
        self.lock_ms = lock_ms
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.delivery_count_limit = delivery_count_limit
        self.dead_letter = dead_letter  # "{group}" is replaced by the group's name
        self.start = start
        self.max_in_flight = max_in_flight
        self.groups: dict[str, ShareGroupMembers] = {}

    # --- groups ------------------------------------------------------------------------------

    def _engine_group(self, name: str, topics: list[str]) -> Any | None:
        """The engine's group over ``topics`` (those that exist), opened with the
        server's share settings; None while none of them exists."""
        live = [t for t in topics if self._exists(t)]
        if not live:
            return None
        dlq = self.dead_letter.replace("{group}", name) if self.dead_letter else None
        return self.broker.share_group(name, topics=live, max_attempts=self.delivery_count_limit,
                                       lock_ms=self.lock_ms, backoff_ms=None, dead_letter=dlq,
                                       start=self.start, max_in_flight=self.max_in_flight)

    def _exists(self, topic: str) -> bool:
        try:
            self.broker.topic(topic)
            return True
        except errors.UnknownTopicError:
            return False

    def group(self, name: str) -> ShareGroupMembers | None:
        return self.groups.get(name)

    def member(self, group: str, member_id: str) -> ShareMember | None:
        g = self.groups.get(group)
        return None if g is None else g.members.get(member_id)

    def _assignment(self, topics: list[str]) -> dict[str, list[int]]:
        out = {}
        for t in topics:
            try:
                n = self.broker.topic(t).num_partitions
            except errors.UnknownTopicError:
                continue
            out[t] = list(range(n))
        return out

    # --- heartbeats ------------------------------------------------------------------------------

    def heartbeat(self, group: str, member_id: str, member_epoch: int, topics: list[str] | None, *,
                  rack: str | None = None, client_id: str = "", client_host: str = "") -> HeartbeatResult:
        """One heartbeat (Kafka's ShareGroupHeartbeat): join (epoch 0), stay, or leave (-1).
        ``topics`` None: the subscription did not change."""
        if not member_id:
            return HeartbeatResult(INVALID_REQUEST, "a member id is required")
        if member_epoch == -1:
            self.leave(group, member_id)
            return HeartbeatResult(member=None)
        g = self.groups.get(group)
        m = None if g is None else g.members.get(member_id)
        if member_epoch == 0:
            if topics is None and m is None:
                return HeartbeatResult(INVALID_REQUEST, "a joining member must send its subscription")
            if m is not None:  # joins again: a new consumer under the old id
                self._remove(g, m, "joined again")
                m = None
            wanted = list(dict.fromkeys(topics if topics is not None else []))
            if g is None:  # (its engine group waits for one of its topics to exist)
                g = self.groups[group] = ShareGroupMembers(group, self._engine_group(group, wanted))
            if len(g.members) >= MAX_MEMBERS:
                return HeartbeatResult(GROUP_MAX_SIZE_REACHED, f"share group {group!r} has {MAX_MEMBERS} members")
            m = ShareMember(member_id, g.group.sibling() if g.group is not None else None)
            m.topics = wanted
            g.members[member_id] = m
            g.epoch += 1
            log.debug("share group %s: member %s joined (group epoch %d)", group, member_id, g.epoch)
        else:
            if m is None:
                return HeartbeatResult(UNKNOWN_MEMBER_ID, f"member {member_id} is not in share group {group!r}")
            if member_epoch != m.epoch and member_epoch != m.previous_epoch:
                return HeartbeatResult(FENCED_MEMBER_EPOCH,
                                       f"member epoch {member_epoch}; the member is at {m.epoch}")
            if topics is not None:
                m.topics = list(dict.fromkeys(topics))
        m.client_id, m.client_host = client_id, client_host
        if rack is not None:
            m.rack = rack
        self._touch(g, m)
        changed = self._reassign(g, m)
        return HeartbeatResult(member=m, assignment_changed=changed or member_epoch == 0)

    def _reassign(self, g: ShareGroupMembers, m: ShareMember) -> bool:
        """Bring the member's assignment (and the engine group's topics) up to date."""
        if m.topics and (g.group is None or any(t not in g.group.topics for t in m.topics)):
            live = [t for t in m.topics if self._exists(t)]
            if live and g.group is None:
                g.group = self._engine_group(g.name, live)
                for other in g.members.values():
                    other.handle = g.group.sibling()
            elif live:
                g.group.add_topics(live)
        want = self._assignment(m.topics) if g.group is not None else {}
        changed = want != m.assignment
        if changed:
            m.assignment = want
            g.epoch += 1
            g.assignment_epoch = g.epoch
        if m.epoch != g.epoch:
            m.previous_epoch, m.epoch = m.epoch, g.epoch
        return changed

    def _touch(self, g: ShareGroupMembers, m: ShareMember) -> None:
        loop = asyncio.get_running_loop()
        m.last_heartbeat = time.time()
        if m.timer is not None:
            m.timer.cancel()
        m.timer = loop.call_later(self.session_timeout_ms / 1000, self._expire, g.name, m)

    def _expire(self, group: str, m: ShareMember) -> None:
        g = self.groups.get(group)
        if g is None or g.members.get(m.member_id) is not m:
            return
        log.info("share group %s: member %s removed: no heartbeat for %d ms", group, m.member_id,
                 self.session_timeout_ms)
        self._remove(g, m, "session timed out")

    def leave(self, group: str, member_id: str) -> None:
        g = self.groups.get(group)
        m = None if g is None else g.members.get(member_id)
        if m is not None:
            self._remove(g, m, "left")

    def _remove(self, g: ShareGroupMembers, m: ShareMember, why: str) -> None:
        del g.members[m.member_id]
        if m.timer is not None:
            m.timer.cancel()
            m.timer = None
        g.epoch += 1
        if m.handle is not None:
            try:
                n = m.handle.release_held()
            except Exception:  # a failing disk: the locks expire anyway
                log.exception("share group %s: releasing the records of member %s failed", g.name, m.member_id)
                n = 0
            log.debug("share group %s: member %s %s; %d record(s) released", g.name, m.member_id, why, n)

    def state_ends(self) -> dict:
        """``{partition: end offset}`` of the share-group state topic, for the hub's
        durability gate (``Hub.durable``): a door acknowledges a member's acks
        and acquisitions once they are as durable as ``--fsync`` says."""
        from umlog.delivery.store import STATE_TOPIC

        if self.broker.fsync != "always" or not self.groups:
            return {}
        try:
            t = self.broker.topic(STATE_TOPIC)
        except errors.UnknownTopicError:
            return {}
        return {p: p.end_offset for p in t.partitions}

    def close(self) -> None:
        """Shutdown: stop the session timers (held records come back after a restart)."""
        for g in self.groups.values():
            for m in g.members.values():
                if m.timer is not None:
                    m.timer.cancel()
                    m.timer = None


def share_settings(server: dict) -> dict:
    """``ShareMembers`` keyword arguments from the ``[server]`` settings table."""
    return {"lock_ms": server["share_record_lock_duration_ms"],
            "session_timeout_ms": server["share_session_timeout_ms"],
            "heartbeat_interval_ms": server["share_heartbeat_interval_ms"],
            "delivery_count_limit": server["share_delivery_count_limit"],
            "dead_letter": server["share_dead_letter"],
            "start": server["share_auto_offset_reset"]}

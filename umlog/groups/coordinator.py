"""The group coordinator of Kafka's classic group protocol, without bytes or sockets.

Theory of operation
-------------------
A group is a set of members that agree, generation by generation, on one
*protocol* (e.g. the consumer assignor ``range``) and on an assignment that
the *leader*, one of the members, computes; the coordinator only runs the
rounds and hands the leader's assignment out. It never looks inside member
metadata or assignments (except to read the subscribed topics for
OffsetDelete), so eager (``range``, ``roundrobin``) and cooperative
(``cooperative-sticky``) assignors are all the same to it: a cooperative
client simply rejoins once more after revoking.

One round (a *rebalance*)::

      JoinGroup from every member      the leader's SyncGroup (assignments)
   ─────────────────────────────────┐ ┌─────────────────────────────────┐
   PreparingRebalance ──(all joined or ──> CompletingRebalance ──(leader syncs)──> Stable
                         rebalance timeout)

* JoinGroup. A member with no member id (v4+) first gets ``MEMBER_ID_REQUIRED``
  and a fresh id (it waits in ``pending`` for at most its session timeout),
  then joins with it; static members (``group.instance.id``) skip that
  handshake. A join makes the group prepare a rebalance; the join answers are
  held (``join_waiter``) until every known member has rejoined, or until the
  largest rebalance timeout has passed: members that did not rejoin are then
  removed (dynamic ones; static ones are kept until their session expires).
  The first round of an Empty group waits ``initial_rebalance_delay_ms``
  first (Kafka's ``group.initial.rebalance.delay.ms``), extended by the same
  delay while new members keep arriving, up to the rebalance timeout, so that
  a fleet starting together needs one round, not one per member. Completing
  the join increments the generation, selects the protocol every member
  supports (each votes for its first choice among those), keeps the leader
  if it rejoined or else picks the first member that did, and answers: the
  leader gets every member's metadata, the others an empty list.
* SyncGroup. The leader's request carries the assignments; the group
  becomes Stable and every member waiting in SyncGroup gets its own. Members
  that do not send SyncGroup within the rebalance timeout are removed (a new
  round starts).
* Heartbeat keeps a member alive; during PreparingRebalance it answers
  ``REBALANCE_IN_PROGRESS``, which is how members learn they must rejoin. A
  member that neither heartbeats, joins, syncs nor commits for its session
  timeout is removed (not while its JoinGroup or SyncGroup is being held:
  that is the coordinator's delay, not the member's), and a new round starts.
* LeaveGroup (v3+: a batch of members, by member id or instance id) removes
  members at once, without waiting for their session to expire.
* Fencing: a request naming an unknown member gets ``UNKNOWN_MEMBER_ID``, one
  of another generation ``ILLEGAL_GENERATION``, a static member whose
  instance id now belongs to another member id ``FENCED_INSTANCE_ID`` (a
  static member rejoining without its member id replaces the old one, which
  is fenced: no rebalance when its protocols did not change and the group is
  Stable, even when it was the leader: with JoinGroup v9 it is told to skip
  the assignment, before v9 it is answered as a follower).
* Offsets. OffsetCommit from a member of the current generation, or with
  generation -1 into a group with no members (``assign()`` consumers, admin
  tools, the embedded API), goes to the shared ``OffsetStore``; during
  CompletingRebalance it is refused with ``REBALANCE_IN_PROGRESS`` (the
  assignment is about to change). OffsetFetch reads it. Groups that exist
  only through committed offsets are listed and described as Empty.

The transition table
--------------------
``TRANSITIONS`` (in ``state.py``, with the states, events, errors, requests,
answers, members and groups) lists every state change and why;
``_transition`` refuses any other (an ``AssertionError`` is a coordinator
bug). Staying in a state is not a transition (e.g. a join during
PreparingRebalance).

Members in a state, exclusive: a member id is in ``pending`` (handshake) or in
``members``, never both; a member holds at most one of ``join_waiter`` and
``sync_waiter``; a member of a group in PreparingRebalance may hold a
join_waiter, in CompletingRebalance a sync_waiter.

Time and threads
----------------
Everything runs on one thread (the door's event loop); the coordinator never
blocks. It reads time from, and sets timers through, a ``Scheduler``
(``time()`` in seconds and ``call_at(when, fn)``): the asyncio loop in the
server, a fake clock in the tests. Each group has at most one timer, set to
its earliest deadline (a session expiry, the end of the join phase or of the
sync phase, a pending member's expiry); when it fires, everything due is
done and the next one is set. A heartbeat only moves a deadline later, so it
never touches the timer. Answers go through the ``respond`` callbacks given
to ``join`` and ``sync`` (the door resolves a future with them); they are
called at most once each.

Group membership is kept in memory only (Kafka also persists it as
GroupMetadata records): after a restart, members get ``UNKNOWN_MEMBER_ID``
and rejoin; committed offsets are in ``__consumer_offsets`` and survive.

Errors are named as Kafka names them (``Err``, values are the lower-case
names of Kafka's error codes); the door turns them into wire codes.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import UnknownTopicError
from .offsets import MAX_METADATA_BYTES, OffsetAndMetadata, OffsetStore
from .schema import subscribed_topics
from .state import (
    TRANSITIONS,
    ClassicGroup,
    Err,
    Event,
    GroupDescription,
    GroupState,
    JoinRequest,
    JoinResult,
    Member,
    MemberDescription,
    MonotonicScheduler,
    Scheduler,
    SyncResult,
)

__all__ = ["Coordinator", "GroupState", "Err", "Event", "TRANSITIONS", "JoinRequest", "JoinResult",
           "SyncResult", "GroupDescription", "MemberDescription", "Scheduler", "MonotonicScheduler"]

log = logging.getLogger("umlog.groups")

# Kafka's broker defaults.
MIN_SESSION_TIMEOUT_MS = 6_000  # group.min.session.timeout.ms
MAX_SESSION_TIMEOUT_MS = 1_800_000  # group.max.session.timeout.ms
INITIAL_REBALANCE_DELAY_MS = 3_000  # group.initial.rebalance.delay.ms
# An Empty group with no committed offsets is forgotten after this long
# (Kafka removes such groups at its next offsets-retention check, every 10 min).
EMPTY_GROUP_RETENTION_S = 600.0


def _call(fn: Callable | None, result: Any) -> None:
    if fn is None:
        return
    try:
        fn(result)
    except Exception:  # a dead connection's future must not break the group
        log.exception("group response callback failed")


class Coordinator:
    """Every group of one broker (see the module docstring).

    :param store: the broker's ``OffsetStore`` (``Broker.offsets``), shared with
        the embedded API.
    :param scheduler: time and timers (the event loop in the server).
    :param initial_rebalance_delay_ms: Kafka's ``group.initial.rebalance.delay.ms``.
    """

    def __init__(self, store: OffsetStore, scheduler: Scheduler | None = None, *,
                 initial_rebalance_delay_ms: int = INITIAL_REBALANCE_DELAY_MS,
                 min_session_timeout_ms: int = MIN_SESSION_TIMEOUT_MS,
                 max_session_timeout_ms: int = MAX_SESSION_TIMEOUT_MS) -> None:
        self.store = store
        self.scheduler = scheduler if scheduler is not None else MonotonicScheduler()
        self.initial_delay_s = max(0, initial_rebalance_delay_ms) / 1000.0
        self.min_session_timeout_ms = min_session_timeout_ms
        self.max_session_timeout_ms = max_session_timeout_ms
        self.groups: dict[str, ClassicGroup] = {}
        self.closed = False
        # Observers for tests and metrics: called as fn(group, old_state, event, new_state).
        self.on_transition: list[Callable[[ClassicGroup, GroupState, Event, GroupState], None]] = []

    # --- helpers -------------------------------------------------------------------------

    def _now(self) -> float:
        return self.scheduler.time()

    def _transition(self, g: ClassicGroup, event: Event) -> None:
        new = TRANSITIONS.get((g.state, event))
        assert new is not None, f"group {g.group_id!r}: no transition from {g.state.value} on {event.name}"
        old, g.state = g.state, new
        log.debug("group %r: %s -> %s (%s), generation %d", g.group_id, old.value, new.value, event.name,
                  g.generation)
        for fn in self.on_transition:
            fn(g, old, event, new)

    @staticmethod
    def _new_member_id(prefix: str) -> str:
        return f"{prefix or 'member'}-{uuid.uuid4()}"

    def _group(self, group_id: str) -> ClassicGroup | None:
        return self.groups.get(group_id)

    def _current_join_result(self, g: ClassicGroup, m: Member, skip_assignment: bool = False,
                             leader: str | None = None) -> JoinResult:
        """The answer for the current generation; ``leader`` overrides the leader id it names."""
        leader = leader if leader is not None else (g.leader or "")
        is_leader = m.member_id == leader
        members = []
        if is_leader:
            members = [(x.member_id, x.instance_id, x.protocols.get(g.protocol_name or "", b""))
                       for x in g.members.values()]
        return JoinResult(Err.NONE, m.member_id, g.generation, g.protocol_type, g.protocol_name,
                          leader, members, skip_assignment and is_leader)

    def _fenced(self, g: ClassicGroup, member_id: str, instance_id: str | None) -> bool:
        """A static member whose instance id now maps to another member id."""
        if not instance_id:
            return False
        owner = g.static.get(instance_id)
        return owner is not None and owner != member_id

    # --- JoinGroup ---------------------------------------------------------------------

    def join(self, req: JoinRequest, respond: Callable[[JoinResult], None]) -> None:
        """Join (or rejoin) a group; ``respond`` is called once, now or when the round completes."""
        if self.closed:
            _call(respond, JoinResult(Err.NOT_COORDINATOR, req.member_id))
            return
        if not req.group_id:
            _call(respond, JoinResult(Err.INVALID_GROUP_ID, req.member_id))
            return
        if not self.min_session_timeout_ms <= req.session_timeout_ms <= self.max_session_timeout_ms:
            _call(respond, JoinResult(Err.INVALID_SESSION_TIMEOUT, req.member_id))
            return
        g = self.groups.get(req.group_id)
        if g is None:
            if req.member_id:
                _call(respond, JoinResult(Err.UNKNOWN_MEMBER_ID, req.member_id))
                return
            g = self.groups[req.group_id] = ClassicGroup(req.group_id, self._now())
        if not self._supports(g, req):
            _call(respond, JoinResult(Err.INCONSISTENT_GROUP_PROTOCOL, req.member_id))
            return
        # Every rebalance starts with a join: the log names who caused it.
        log.debug("group %r: JoinGroup member=%r instance=%r in %s, generation %d, leader %r",
                  g.group_id, req.member_id, req.instance_id, g.state.value, g.generation, g.leader)
        if not req.member_id:
            self._join_new(g, req, respond)
        else:
            self._join_known(g, req, respond)
        self._reschedule(g)

    @staticmethod
    def _supports(g: ClassicGroup, req: JoinRequest) -> bool:
        if not req.protocol_type or not req.protocols:
            return False
        if not g.members:
            return True
        names = {n for n, _ in req.protocols}
        others = [m for m in g.members.values() if m.member_id != req.member_id]
        if not others:
            return True
        common = set(names)
        for m in others:
            common &= set(m.protocols)
        return req.protocol_type == g.protocol_type and bool(common)

    def _join_new(self, g: ClassicGroup, req: JoinRequest, respond) -> None:
        now = self._now()
        if req.instance_id and req.instance_id in g.static:
            self._replace_static(g, req, respond)
            return
        if req.require_known_member_id and not req.instance_id:
            # KIP-394: hand out the id first, so a client that times out and
            # retries does not leave an orphan member behind.
            mid = self._new_member_id(req.client_id)
            g.pending[mid] = now + req.session_timeout_ms / 1000.0
            _call(respond, JoinResult(Err.MEMBER_ID_REQUIRED, mid))
            return
        mid = self._new_member_id(req.instance_id or req.client_id)
        self._add_member(g, mid, req, respond)

    def _join_known(self, g: ClassicGroup, req: JoinRequest, respond) -> None:
        mid = req.member_id
        if mid in g.pending:
            del g.pending[mid]
            self._add_member(g, mid, req, respond)
            return
        # A replaced static member is told so (fatal for it) rather than
        # UNKNOWN_MEMBER_ID (which would make it rejoin and fence its successor).
        if self._fenced(g, mid, req.instance_id):
            _call(respond, JoinResult(Err.FENCED_INSTANCE_ID, mid))
            return
        m = g.members.get(mid)
        if m is None:
            _call(respond, JoinResult(Err.UNKNOWN_MEMBER_ID, mid))
            return
        m.last_heartbeat = self._now()
        st = g.state
        if st is GroupState.PREPARING_REBALANCE:
            self._update_member(g, m, req, respond)
        elif st is GroupState.COMPLETING_REBALANCE:
            if m.same_protocols(req):
                # It lost our answer: give it again.
                m.update(req)
                _call(respond, self._current_join_result(g, m))
            else:
                self._update_member(g, m, req, respond)
        elif st is GroupState.STABLE:
            if m.member_id == g.leader or not m.same_protocols(req):
                self._update_member(g, m, req, respond)
            else:
                m.update(req)
                _call(respond, self._current_join_result(g, m))
        else:  # Empty or Dead: it is not a member any more
            _call(respond, JoinResult(Err.UNKNOWN_MEMBER_ID, mid))

    def _add_member(self, g: ClassicGroup, mid: str, req: JoinRequest, respond) -> None:
        m = Member(mid, req, self._now())
        m.join_waiter = respond
        if not g.members:
            g.protocol_type = req.protocol_type
        g.members[mid] = m
        if req.instance_id:
            g.static[req.instance_id] = mid
        if g.leader is None:
            g.leader = mid
        g.new_member_added = True
        self._prepare_or_check(g)

    def _update_member(self, g: ClassicGroup, m: Member, req: JoinRequest, respond) -> None:
        m.update(req)
        if m.join_waiter is not None and m.join_waiter is not respond:
            # A second JoinGroup while the first is held (a client retry): the
            # older one is answered so that no request hangs forever.
            _call(m.join_waiter, JoinResult(Err.REBALANCE_IN_PROGRESS, m.member_id))
        m.join_waiter = respond
        self._prepare_or_check(g)

    def _replace_static(self, g: ClassicGroup, req: JoinRequest, respond) -> None:
        """A static member comes back without its member id: it replaces its old self."""
        old_id = g.static[req.instance_id]
        m = g.members[old_id]
        new_id = self._new_member_id(req.instance_id)
        _call(m.join_waiter, JoinResult(Err.FENCED_INSTANCE_ID, old_id))
        _call(m.sync_waiter, SyncResult(Err.FENCED_INSTANCE_ID))
        m.join_waiter = m.sync_waiter = None
        changed = not m.same_protocols(req)
        # Re-key in place, keeping the join order and the assignment.
        g.members = {(new_id if k == old_id else k): v for k, v in g.members.items()}
        m.member_id = new_id
        g.static[req.instance_id] = new_id
        if g.leader == old_id:
            g.leader = new_id
        if old_id in g.pending_sync:
            g.pending_sync.discard(old_id)
            g.pending_sync.add(new_id)
        log.debug("group %r: static member %r replaces %s with %s in %s (protocols %s, leader %s, skip %s)",
                  g.group_id, req.instance_id, old_id, new_id, g.state.value, "changed" if changed else "same",
                  g.leader == new_id, req.supports_skip_assignment)
        m.update(req)
        m.last_heartbeat = self._now()
        st = g.state
        if st is GroupState.STABLE and not changed:
            # Same protocols, same assignment: no rebalance (the point of static
            # membership), for the leader too. A returning leader is told to skip
            # the assignment (KIP-814, v9); one that cannot be told (v<9) is named
            # a follower (the leader id is its old one, as Kafka answers), so it
            # fetches its stored assignment with SyncGroup instead of computing one
            # that a Stable group would never hand out.
            if new_id == g.leader and not req.supports_skip_assignment:
                _call(respond, self._current_join_result(g, m, leader=old_id))
            else:
                _call(respond, self._current_join_result(g, m, skip_assignment=True))
            return
        m.join_waiter = respond
        self._prepare_or_check(g)

    def _prepare_or_check(self, g: ClassicGroup) -> None:
        if g.state in (GroupState.EMPTY, GroupState.STABLE, GroupState.COMPLETING_REBALANCE):
            self._prepare_rebalance(g, Event.JOIN)
        self._try_complete_join(g)

    def _prepare_rebalance(self, g: ClassicGroup, event: Event) -> None:
        now = self._now()
        if g.state is GroupState.COMPLETING_REBALANCE:
            # The assignment being synced is obsolete: those waiting must rejoin.
            for m in g.members.values():
                if m.sync_waiter is not None:
                    w, m.sync_waiter = m.sync_waiter, None
                    _call(w, SyncResult(Err.REBALANCE_IN_PROGRESS))
        g.pending_sync.clear()
        g.sync_deadline = None
        if g.state is GroupState.EMPTY and self.initial_delay_s > 0:
            g.initial_phase = True
            delay = min(self.initial_delay_s, g.max_rebalance_timeout())
            g.initial_remaining = max(0.0, g.max_rebalance_timeout() - delay)
            g.join_deadline = now + delay
        else:
            g.initial_phase = False
            g.join_deadline = now + g.max_rebalance_timeout()
        g.new_member_added = False
        self._transition(g, event if g.state is not GroupState.EMPTY else Event.JOIN)

    def _try_complete_join(self, g: ClassicGroup) -> None:
        if g.state is GroupState.PREPARING_REBALANCE and not g.initial_phase and g.all_joined():
            self._complete_join(g)

    def _complete_join(self, g: ClassicGroup) -> None:
        now = self._now()
        # Dynamic members that did not rejoin in time are gone; static ones stay
        # (until their session expires) unless nobody rejoined at all.
        joined = [m for m in g.members.values() if m.join_waiter is not None]
        for m in list(g.members.values()):
            if m.join_waiter is None and (m.instance_id is None or not joined):
                self._remove(g, m)
        g.join_deadline = None
        g.initial_phase = False
        g.generation += 1
        if not g.members:
            g.protocol_name = None
            g.leader = None
            g.empty_since = g.forget_check = now
            self._transition(g, Event.JOIN_DONE_EMPTY)
            return
        g.protocol_name = self._select_protocol(g)
        if g.leader not in g.members or g.members[g.leader].join_waiter is None:
            g.leader = joined[0].member_id
        self._transition(g, Event.JOIN_DONE)
        g.pending_sync = set(g.members)
        g.sync_deadline = now + g.max_rebalance_timeout()
        for m in g.members.values():
            m.assignment = b""
            if m.join_waiter is not None:
                w, m.join_waiter = m.join_waiter, None
                m.last_heartbeat = now
                _call(w, self._current_join_result(g, m))

    @staticmethod
    def _select_protocol(g: ClassicGroup) -> str:
        candidates = g.candidates()
        leader = g.members.get(g.leader or "")
        order = list((leader or next(iter(g.members.values()))).protocols)
        votes = {name: 0 for name in order if name in candidates}
        for m in g.members.values():
            for name in m.protocols:
                if name in candidates:
                    votes[name] = votes.get(name, 0) + 1
                    break
        if not votes:  # cannot happen: joins without a common protocol are refused
            return order[0]
        # Most votes; ties go to the leader's preference order.
        return max(votes, key=lambda n: (votes[n], -order.index(n) if n in order else -len(order)))

    # --- SyncGroup --------------------------------------------------------------------------

    def sync(self, group_id: str, generation: int, member_id: str, instance_id: str | None,
             assignments: dict[str, bytes] | None, respond: Callable[[SyncResult], None], *,
             protocol_type: str | None = None, protocol_name: str | None = None) -> None:
        """The members' second step; the leader brings ``assignments`` (member id -> bytes)."""
        if self.closed:
            _call(respond, SyncResult(Err.NOT_COORDINATOR))
            return
        g = self.groups.get(group_id)
        if g is None or g.state is GroupState.DEAD:
            _call(respond, SyncResult(Err.UNKNOWN_MEMBER_ID if g is None else Err.COORDINATOR_NOT_AVAILABLE))
            return
        if self._fenced(g, member_id, instance_id):
            _call(respond, SyncResult(Err.FENCED_INSTANCE_ID))
            return
        m = g.members.get(member_id)
        if m is None:
            _call(respond, SyncResult(Err.UNKNOWN_MEMBER_ID))
            return
        if generation != g.generation:
            _call(respond, SyncResult(Err.ILLEGAL_GENERATION))
            return
        if (protocol_type is not None and protocol_type != g.protocol_type) or (
                protocol_name is not None and protocol_name != g.protocol_name):
            _call(respond, SyncResult(Err.INCONSISTENT_GROUP_PROTOCOL))
            return
        now = self._now()
        m.last_heartbeat = now
        if g.state is GroupState.PREPARING_REBALANCE:
            _call(respond, SyncResult(Err.REBALANCE_IN_PROGRESS))
        elif g.state is GroupState.COMPLETING_REBALANCE:
            g.pending_sync.discard(member_id)
            if m.sync_waiter is not None:
                _call(m.sync_waiter, SyncResult(Err.REBALANCE_IN_PROGRESS))
            m.sync_waiter = respond
            if member_id == g.leader:
                given = assignments or {}
                for x in g.members.values():
                    x.assignment = bytes(given.get(x.member_id, b""))
                self._transition(g, Event.LEADER_SYNC)
                for x in g.members.values():
                    if x.sync_waiter is not None:
                        w, x.sync_waiter = x.sync_waiter, None
                        x.last_heartbeat = now
                        _call(w, SyncResult(Err.NONE, x.assignment, g.protocol_type, g.protocol_name))
        elif g.state is GroupState.STABLE:
            g.pending_sync.discard(member_id)
            _call(respond, SyncResult(Err.NONE, m.assignment, g.protocol_type, g.protocol_name))
        else:
            _call(respond, SyncResult(Err.UNKNOWN_MEMBER_ID))
        self._reschedule(g)

    # --- Heartbeat -------------------------------------------------------------------------

    def heartbeat(self, group_id: str, generation: int, member_id: str, instance_id: str | None = None) -> Err:
        if self.closed:
            return Err.NOT_COORDINATOR
        g = self.groups.get(group_id)
        if g is None:
            return Err.UNKNOWN_MEMBER_ID
        if g.state is GroupState.DEAD:
            return Err.COORDINATOR_NOT_AVAILABLE
        if self._fenced(g, member_id, instance_id):
            return Err.FENCED_INSTANCE_ID
        m = g.members.get(member_id)
        if g.state is GroupState.EMPTY or m is None:
            return Err.UNKNOWN_MEMBER_ID
        if generation != g.generation:
            return Err.ILLEGAL_GENERATION
        m.last_heartbeat = self._now()
        if g.state is GroupState.PREPARING_REBALANCE:
            return Err.REBALANCE_IN_PROGRESS
        return Err.NONE

    # --- LeaveGroup --------------------------------------------------------------------------

    def leave(self, group_id: str, members: Iterable[tuple[str, str | None]]) -> tuple[Err, list[Err]]:
        """Remove members given as (member id, instance id); (group error, one error per member)."""
        members = list(members)
        if self.closed:
            return Err.NOT_COORDINATOR, [Err.NOT_COORDINATOR] * len(members)
        g = self.groups.get(group_id)
        if g is None:
            return Err.NONE, [Err.UNKNOWN_MEMBER_ID] * len(members)
        if g.state is GroupState.DEAD:
            return Err.COORDINATOR_NOT_AVAILABLE, [Err.COORDINATOR_NOT_AVAILABLE] * len(members)
        errors = []
        removed = False
        for member_id, instance_id in members:
            if instance_id:
                owner = g.static.get(instance_id)
                if owner is None:
                    errors.append(Err.UNKNOWN_MEMBER_ID)
                elif member_id and member_id != owner:
                    errors.append(Err.FENCED_INSTANCE_ID)
                else:
                    self._remove(g, g.members[owner])
                    removed = True
                    errors.append(Err.NONE)
            elif member_id in g.pending:
                del g.pending[member_id]
                removed = True
                errors.append(Err.NONE)
            elif member_id in g.members:
                self._remove(g, g.members[member_id])
                removed = True
                errors.append(Err.NONE)
            else:
                errors.append(Err.UNKNOWN_MEMBER_ID)
        if removed:
            self._members_removed(g)
            self._reschedule(g)
        return Err.NONE, errors

    def _remove(self, g: ClassicGroup, m: Member) -> None:
        """Take a member out (the caller decides whether a rebalance follows)."""
        g.members.pop(m.member_id, None)
        if m.instance_id and g.static.get(m.instance_id) == m.member_id:
            del g.static[m.instance_id]
        g.pending_sync.discard(m.member_id)
        _call(m.join_waiter, JoinResult(Err.UNKNOWN_MEMBER_ID, m.member_id))
        _call(m.sync_waiter, SyncResult(Err.UNKNOWN_MEMBER_ID))
        m.join_waiter = m.sync_waiter = None
        if g.leader == m.member_id:
            g.leader = next(iter(g.members), None)

    def _members_removed(self, g: ClassicGroup) -> None:
        if g.state in (GroupState.STABLE, GroupState.COMPLETING_REBALANCE):
            self._prepare_rebalance(g, Event.LEAVE)
        if g.state is GroupState.PREPARING_REBALANCE:
            if not g.members and not g.pending:
                # Nobody left to wait for, not even during the initial delay.
                g.initial_phase = False
            self._try_complete_join(g)

    # --- timers ------------------------------------------------------------------------------

    def _next_deadline(self, g: ClassicGroup) -> float | None:
        ds = [m.last_heartbeat + m.session_timeout_s for m in g.members.values() if not m.waiting]
        ds.extend(g.pending.values())
        if g.state is GroupState.PREPARING_REBALANCE and g.join_deadline is not None:
            ds.append(g.join_deadline)
        syncing = g.state in (GroupState.COMPLETING_REBALANCE, GroupState.STABLE)
        if g.pending_sync and g.sync_deadline is not None and syncing:
            ds.append(g.sync_deadline)
        if g.state is GroupState.EMPTY and not g.members and not g.pending:
            ds.append(max(g.empty_since, g.forget_check) + EMPTY_GROUP_RETENTION_S)
        return min(ds) if ds else None

    def _reschedule(self, g: ClassicGroup) -> None:
        if self.closed or self.groups.get(g.group_id) is not g:
            return
        when = self._next_deadline(g)
        if g.timer is not None:
            if when is not None and g.timer_when is not None and g.timer_when <= when:
                return  # the earlier timer will fire, find nothing due, and come back
            g.timer.cancel()
            g.timer = g.timer_when = None
        if when is not None:
            g.timer_when = when
            g.timer = self.scheduler.call_at(when, lambda: self._on_timer(g))

    def _on_timer(self, g: ClassicGroup) -> None:
        g.timer = g.timer_when = None
        if self.closed or self.groups.get(g.group_id) is not g:
            return
        try:
            self._expire(g, self._now())
        except Exception:  # pragma: no cover - a bug: log it, keep the loop alive
            log.exception("group %r: timer failed", g.group_id)
        self._reschedule(g)

    def poll(self) -> None:
        """Run whatever is due in every group (for schedulers whose timers do not fire)."""
        now = self._now()
        for g in list(self.groups.values()):
            self._expire(g, now)
            self._reschedule(g)

    def _expire(self, g: ClassicGroup, now: float) -> None:
        # Handshake ids never used.
        for mid, deadline in list(g.pending.items()):
            if deadline <= now:
                del g.pending[mid]
                if g.state is GroupState.PREPARING_REBALANCE:
                    self._try_complete_join(g)
        # Sessions.
        gone = [m for m in g.members.values()
                if not m.waiting and m.last_heartbeat + m.session_timeout_s <= now]
        # Members that got their join answer but never came to SyncGroup.
        if g.pending_sync and g.sync_deadline is not None and g.sync_deadline <= now and g.state in (
                GroupState.COMPLETING_REBALANCE, GroupState.STABLE):
            gone.extend(g.members[mid] for mid in g.pending_sync if mid in g.members
                        and g.members[mid] not in gone)
            g.pending_sync.clear()
        if gone:
            for m in gone:
                log.info("group %r: member %s evicted (%s)", g.group_id, m.member_id,
                         "session timeout" if m.last_heartbeat + m.session_timeout_s <= now else "no SyncGroup")
                self._remove(g, m)
            self._members_removed(g)
        # The end of the join phase.
        if g.state is GroupState.PREPARING_REBALANCE and g.join_deadline is not None and g.join_deadline <= now:
            if g.initial_phase and g.new_member_added and g.initial_remaining > 0:
                delay = min(self.initial_delay_s, g.initial_remaining)
                g.initial_remaining -= delay
                g.new_member_added = False
                g.join_deadline = now + delay
            else:
                self._complete_join(g)
        # An Empty group nobody uses, with no offsets: forget it.
        if (g.state is GroupState.EMPTY and not g.members and not g.pending
                and max(g.empty_since, g.forget_check) + EMPTY_GROUP_RETENTION_S <= now):
            if self.store.has_group(g.group_id):
                g.forget_check = now  # it has offsets: look again later
            else:
                self._transition(g, Event.DELETE)
                self.groups.pop(g.group_id, None)

    # --- offsets --------------------------------------------------------------------------------

    def expire_offsets(self, retention_ms: int) -> dict[str, list[tuple[str, int]]]:
        """Kafka's offsets.retention.minutes over every group: a group with members
        keeps its offsets; an empty one loses them ``retention_ms`` after its last
        commit or after it became empty, whichever is later."""
        now_s = self._now()
        wall_ms = time.time_ns() // 1_000_000
        live, empty_since = set(), {}
        for gid, g in self.groups.items():
            if g.members or g.pending or g.state not in (GroupState.EMPTY, GroupState.DEAD):
                live.add(gid)
            elif g.state is GroupState.EMPTY:
                empty_since[gid] = wall_ms - int((now_s - g.empty_since) * 1000)
        return self.store.expire(retention_ms, wall_ms, live=live, empty_since_ms=empty_since)

    def commit_offsets(self, group_id: str, generation: int, member_id: str, instance_id: str | None,
                       offsets: dict[tuple[str, int], OffsetAndMetadata]) -> tuple[Err, dict[tuple[str, int], Err]]:
        """OffsetCommit: (group error, error per partition). Partitions with errors are not stored."""
        if self.closed:
            return Err.NOT_COORDINATOR, {}
        if not group_id:
            return Err.INVALID_GROUP_ID, {}
        g = self.groups.get(group_id)
        if g is None:
            if generation >= 0:
                return Err.ILLEGAL_GENERATION, {}
        elif g.state is GroupState.DEAD:
            return Err.COORDINATOR_NOT_AVAILABLE, {}
        elif self._fenced(g, member_id, instance_id):
            return Err.FENCED_INSTANCE_ID, {}
        elif generation < 0 and g.state is GroupState.EMPTY:
            pass  # offsets only: assign() consumers, admin tools
        elif g.state is GroupState.COMPLETING_REBALANCE:
            return Err.REBALANCE_IN_PROGRESS, {}
        elif member_id not in g.members:
            return Err.UNKNOWN_MEMBER_ID, {}
        elif generation != g.generation:
            return Err.ILLEGAL_GENERATION, {}
        else:
            g.members[member_id].last_heartbeat = self._now()
        errors: dict[tuple[str, int], Err] = {}
        good: dict[tuple[str, int], OffsetAndMetadata] = {}
        for tp, v in offsets.items():
            err = self._check_partition(tp)
            if err is Err.NONE and len((v.metadata or "").encode()) > MAX_METADATA_BYTES:
                err = Err.OFFSET_METADATA_TOO_LARGE
            errors[tp] = err
            if err is Err.NONE:
                good[tp] = v
        if good:
            try:
                self.store.commit(group_id, good)
            except Exception:
                log.exception("group %r: storing offsets failed", group_id)
                for tp in good:
                    errors[tp] = Err.UNKNOWN_SERVER_ERROR
        return Err.NONE, errors

    def _check_partition(self, tp: tuple[str, int]) -> Err:
        try:
            t = self.store.broker.topic(tp[0])
        except UnknownTopicError:
            return Err.UNKNOWN_TOPIC_OR_PARTITION
        except Exception:
            return Err.UNKNOWN_TOPIC_OR_PARTITION
        return Err.NONE if 0 <= tp[1] < t.num_partitions else Err.UNKNOWN_TOPIC_OR_PARTITION

    def fetch_offsets(self, group_id: str, partitions: Iterable[tuple[str, int]] | None
                      ) -> tuple[Err, dict[tuple[str, int], OffsetAndMetadata | None]]:
        """OffsetFetch: every committed offset of the group (``partitions`` None) or the
        ones asked for (None where there is none)."""
        if self.closed:
            return Err.NOT_COORDINATOR, {}
        committed = self.store.group_offsets(group_id)
        if partitions is None:
            return Err.NONE, dict(committed)
        return Err.NONE, {tuple(tp): committed.get(tuple(tp)) for tp in partitions}

    def delete_offsets(self, group_id: str, partitions: Iterable[tuple[str, int]]
                       ) -> tuple[Err, dict[tuple[str, int], Err]]:
        """OffsetDelete: allowed in an Empty group, and for topics an active consumer
        group does not subscribe to."""
        if self.closed:
            return Err.NOT_COORDINATOR, {}
        partitions = [tuple(tp) for tp in partitions]
        g = self.groups.get(group_id)
        if (g is None or g.state is GroupState.DEAD) and not self.store.has_group(group_id):
            return Err.GROUP_ID_NOT_FOUND, {}
        subscribed: set[str] = set()
        if g is not None and g.members:
            if g.protocol_type != "consumer":
                return Err.NON_EMPTY_GROUP, {}
            for m in g.members.values():
                topics = subscribed_topics(m.protocols.get(g.protocol_name or "", b"")
                                           or next(iter(m.protocols.values()), b""))
                if topics is None:
                    return Err.NON_EMPTY_GROUP, {}
                subscribed |= topics
        errors: dict[tuple[str, int], Err] = {}
        doomed = []
        for tp in partitions:
            err = self._check_partition(tp)
            if err is Err.NONE and tp[0] in subscribed:
                err = Err.GROUP_SUBSCRIBED_TO_TOPIC
            errors[tp] = err
            if err is Err.NONE:
                doomed.append(tp)
        if doomed:
            self.store.delete(group_id, doomed)
        return Err.NONE, errors

    # --- admin ---------------------------------------------------------------------------------

    def list_groups(self, states: Iterable[str] | None = None) -> list[tuple[str, str, GroupState]]:
        """(group id, protocol type, state) of every group, live or with offsets only."""
        out = {gid: (gid, g.protocol_type or "", g.state) for gid, g in self.groups.items()
               if g.state is not GroupState.DEAD}
        for gid in self.store.groups():
            out.setdefault(gid, (gid, "", GroupState.EMPTY))
        wanted = {s.lower() for s in states} if states else None
        return [row for gid, row in sorted(out.items())
                if wanted is None or row[2].value.lower() in wanted]

    def describe_group(self, group_id: str) -> GroupDescription | None:
        """None when the group neither lives nor has offsets."""
        g = self.groups.get(group_id)
        if g is None or g.state is GroupState.DEAD:
            if self.store.has_group(group_id):
                return GroupDescription(group_id, GroupState.EMPTY, "", "", 0, "", [])
            return None
        stable = g.state is GroupState.STABLE
        members = [MemberDescription(m.member_id, m.instance_id, m.client_id, m.client_host,
                                     m.protocols.get(g.protocol_name or "", b"") if stable else b"",
                                     m.assignment if stable else b"")
                   for m in g.members.values()]
        return GroupDescription(group_id, g.state, g.protocol_type or "",
                                (g.protocol_name or "") if stable else "", g.generation, g.leader or "", members)

    def delete_groups(self, group_ids: Iterable[str]) -> dict[str, Err]:
        """DeleteGroups: only groups without members; their offsets are tombstoned."""
        out: dict[str, Err] = {}
        for gid in group_ids:
            if self.closed:
                out[gid] = Err.NOT_COORDINATOR
                continue
            g = self.groups.get(gid)
            live = g is not None and g.state is not GroupState.DEAD
            if live and (g.members or g.pending or g.state is not GroupState.EMPTY):
                out[gid] = Err.NON_EMPTY_GROUP
                continue
            if not live and not self.store.has_group(gid):
                out[gid] = Err.GROUP_ID_NOT_FOUND
                continue
            try:
                self.store.delete(gid)
            except Exception:
                log.exception("group %r: deleting offsets failed", gid)
                out[gid] = Err.UNKNOWN_SERVER_ERROR
                continue
            if live:
                self._transition(g, Event.DELETE)
                if g.timer is not None:
                    g.timer.cancel()
                del self.groups[gid]
            out[gid] = Err.NONE
        return out

    # --- life cycle ------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Answer every held request with NOT_COORDINATOR (clients look for the coordinator
        again, and find the restarted server) and stop the timers. Idempotent."""
        if self.closed:
            return
        self.closed = True
        for g in list(self.groups.values()):
            if g.timer is not None:
                g.timer.cancel()
                g.timer = g.timer_when = None
            for m in g.members.values():
                w, m.join_waiter = m.join_waiter, None
                _call(w, JoinResult(Err.NOT_COORDINATOR, m.member_id))
                w, m.sync_waiter = m.sync_waiter, None
                _call(w, SyncResult(Err.NOT_COORDINATOR))
            if g.state is not GroupState.DEAD:
                self._transition(g, Event.SHUTDOWN)
        self.groups.clear()

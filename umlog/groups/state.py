"""The group coordinator's vocabulary: states, events and the transition table,
Kafka's error names, the requests and answers the door translates, and the
in-memory member and group records (``coordinator.py`` runs them; its module
docstring is the theory of operation).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["GroupState", "Event", "TRANSITIONS", "Err", "Timer", "Scheduler", "MonotonicScheduler",
           "JoinRequest", "JoinResult", "SyncResult", "MemberDescription", "GroupDescription", "Member",
           "ClassicGroup"]


class GroupState(enum.Enum):
    EMPTY = "Empty"
    PREPARING_REBALANCE = "PreparingRebalance"
    COMPLETING_REBALANCE = "CompletingRebalance"
    STABLE = "Stable"
    DEAD = "Dead"


class Event(enum.Enum):
    """Why a group changes state (the second column of ``TRANSITIONS``)."""

    JOIN = "a member joins: new, with changed protocols, or the leader again"
    LEAVE = "members leave or are evicted (session or sync timeout)"
    JOIN_DONE = "the join phase ends with members"
    JOIN_DONE_EMPTY = "the join phase ends with no member left"
    LEADER_SYNC = "the leader's SyncGroup brings the assignment"
    DELETE = "DeleteGroups, or an Empty group forgotten without offsets"
    SHUTDOWN = "the coordinator stops"


TRANSITIONS: dict[tuple[GroupState, Event], GroupState] = {
    (GroupState.EMPTY, Event.JOIN): GroupState.PREPARING_REBALANCE,
    (GroupState.EMPTY, Event.DELETE): GroupState.DEAD,
    (GroupState.EMPTY, Event.SHUTDOWN): GroupState.DEAD,
    (GroupState.PREPARING_REBALANCE, Event.JOIN_DONE): GroupState.COMPLETING_REBALANCE,
    (GroupState.PREPARING_REBALANCE, Event.JOIN_DONE_EMPTY): GroupState.EMPTY,
    (GroupState.PREPARING_REBALANCE, Event.SHUTDOWN): GroupState.DEAD,
    (GroupState.COMPLETING_REBALANCE, Event.LEADER_SYNC): GroupState.STABLE,
    (GroupState.COMPLETING_REBALANCE, Event.JOIN): GroupState.PREPARING_REBALANCE,
    (GroupState.COMPLETING_REBALANCE, Event.LEAVE): GroupState.PREPARING_REBALANCE,
    (GroupState.COMPLETING_REBALANCE, Event.SHUTDOWN): GroupState.DEAD,
    (GroupState.STABLE, Event.JOIN): GroupState.PREPARING_REBALANCE,
    (GroupState.STABLE, Event.LEAVE): GroupState.PREPARING_REBALANCE,
    (GroupState.STABLE, Event.SHUTDOWN): GroupState.DEAD,
}


class Err(enum.Enum):
    """Kafka's error names (``kio``'s ``ErrorCode`` member names) used by the coordinator."""

    NONE = "none"
    UNKNOWN_MEMBER_ID = "unknown_member_id"
    ILLEGAL_GENERATION = "illegal_generation"
    REBALANCE_IN_PROGRESS = "rebalance_in_progress"
    MEMBER_ID_REQUIRED = "member_id_required"
    INCONSISTENT_GROUP_PROTOCOL = "inconsistent_group_protocol"
    FENCED_INSTANCE_ID = "fenced_instance_id"
    COORDINATOR_NOT_AVAILABLE = "coordinator_not_available"
    NOT_COORDINATOR = "not_coordinator"
    INVALID_SESSION_TIMEOUT = "invalid_session_timeout"
    INVALID_GROUP_ID = "invalid_group_id"
    GROUP_ID_NOT_FOUND = "group_id_not_found"
    NON_EMPTY_GROUP = "non_empty_group"
    GROUP_SUBSCRIBED_TO_TOPIC = "group_subscribed_to_topic"
    UNKNOWN_TOPIC_OR_PARTITION = "unknown_topic_or_partition"
    OFFSET_METADATA_TOO_LARGE = "offset_metadata_too_large"
    INVALID_COMMIT_OFFSET_SIZE = "invalid_commit_offset_size"
    UNKNOWN_SERVER_ERROR = "unknown_server_error"


# --- time --------------------------------------------------------------------------------


class Timer(Protocol):
    def cancel(self) -> Any: ...


class Scheduler(Protocol):
    """Where the coordinator gets its time (seconds) and its timers."""

    def time(self) -> float: ...

    def call_at(self, when: float, fn: Callable[[], None]) -> Timer: ...


class MonotonicScheduler:
    """For embedded use without an event loop: time only; timers never fire by themselves
    (``Coordinator.poll()`` runs what is due)."""

    class _T:
        def cancel(self) -> None:
            pass

    def time(self) -> float:
        return time.monotonic()

    def call_at(self, when: float, fn: Callable[[], None]) -> Timer:
        return self._T()


# --- requests and answers -----------------------------------------------------------------


@dataclass
class JoinRequest:
    group_id: str
    member_id: str = ""
    instance_id: str | None = None
    protocol_type: str = "consumer"
    protocols: list[tuple[str, bytes]] = field(default_factory=list)
    session_timeout_ms: int = 10_000
    rebalance_timeout_ms: int = -1  # -1: the session timeout (JoinGroup v0)
    client_id: str = ""
    client_host: str = ""
    require_known_member_id: bool = True  # JoinGroup v4+
    supports_skip_assignment: bool = False  # JoinGroup v9+
    reason: str | None = None


@dataclass
class JoinResult:
    error: Err
    member_id: str = ""
    generation: int = -1
    protocol_type: str | None = None
    protocol_name: str | None = None
    leader: str = ""
    members: list[tuple[str, str | None, bytes]] = field(default_factory=list)  # leader only
    skip_assignment: bool = False


@dataclass
class SyncResult:
    error: Err
    assignment: bytes = b""
    protocol_type: str | None = None
    protocol_name: str | None = None


@dataclass
class MemberDescription:
    member_id: str
    instance_id: str | None
    client_id: str
    client_host: str
    metadata: bytes
    assignment: bytes


@dataclass
class GroupDescription:
    group_id: str
    state: GroupState
    protocol_type: str
    protocol_name: str
    generation: int
    leader: str
    members: list[MemberDescription]


# --- groups and members -------------------------------------------------------------------


class Member:
    __slots__ = ("member_id", "instance_id", "client_id", "client_host", "session_timeout_s",
                 "rebalance_timeout_s", "protocol_type", "protocols", "assignment", "join_waiter",
                 "sync_waiter", "last_heartbeat", "supports_skip_assignment")

    def __init__(self, member_id: str, req: JoinRequest, now: float) -> None:
        self.member_id = member_id
        self.instance_id = req.instance_id
        self.assignment = b""
        self.join_waiter: Callable[[JoinResult], None] | None = None
        self.sync_waiter: Callable[[SyncResult], None] | None = None
        self.last_heartbeat = now
        self.update(req)

    def update(self, req: JoinRequest) -> None:
        self.client_id = req.client_id
        self.client_host = req.client_host
        self.session_timeout_s = req.session_timeout_ms / 1000.0
        rt = req.rebalance_timeout_ms if req.rebalance_timeout_ms >= 0 else req.session_timeout_ms
        self.rebalance_timeout_s = rt / 1000.0
        self.protocol_type = req.protocol_type
        self.protocols = dict(req.protocols)  # name -> metadata, in preference order
        self.supports_skip_assignment = req.supports_skip_assignment

    def same_protocols(self, req: JoinRequest) -> bool:
        return list(self.protocols.items()) == [(n, bytes(m)) for n, m in req.protocols]

    @property
    def waiting(self) -> bool:
        return self.join_waiter is not None or self.sync_waiter is not None


class ClassicGroup:
    """One classic-protocol group's state in the coordinator (``umlog.groups.Group`` is
    the embedded API's committed offsets)."""

    def __init__(self, group_id: str, now: float) -> None:
        self.group_id = group_id
        self.state = GroupState.EMPTY
        self.generation = 0
        self.protocol_type: str | None = None
        self.protocol_name: str | None = None
        self.leader: str | None = None
        self.members: dict[str, Member] = {}  # join order
        self.static: dict[str, str] = {}  # instance id -> member id
        self.pending: dict[str, float] = {}  # member id -> handshake deadline
        self.pending_sync: set[str] = set()
        self.join_deadline: float | None = None
        self.initial_phase = False  # waiting out the initial rebalance delay
        self.initial_remaining = 0.0
        self.new_member_added = False
        self.sync_deadline: float | None = None
        self.empty_since = now  # when it last became Empty (offsets expire from here)
        self.forget_check = now  # when an Empty group was last looked at for forgetting
        self.timer: Any = None
        self.timer_when: float | None = None

    def candidates(self) -> set[str]:
        """Protocols every member supports."""
        it = iter(self.members.values())
        first = next(it, None)
        if first is None:
            return set()
        out = set(first.protocols)
        for m in it:
            out &= set(m.protocols)
        return out

    def max_rebalance_timeout(self) -> float:
        return max((m.rebalance_timeout_s for m in self.members.values()), default=0.0)

    def all_joined(self) -> bool:
        return not self.pending and all(m.join_waiter is not None for m in self.members.values())

"""The group coordinator on a fake clock: the protocol's rounds, fencing, timeouts,
static membership, offsets; then random operation sequences (hypothesis) against
the invariants of the state machine."""

from __future__ import annotations

import atexit
import itertools
import shutil
import tempfile

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import umlog
from umlog.groups.coordinator import (
    TRANSITIONS,
    Coordinator,
    Err,
    Event,
    GroupState,
    JoinRequest,
)
from umlog.groups.offsets import OffsetAndMetadata

S = GroupState
SUB = b"\x00\x00\x00\x00\x00\x01\x00\x01t\xff\xff\xff\xff"  # ConsumerProtocolSubscription v0: ["t"]


class Box:
    """Collects what a respond callback is given (and that it is given once)."""

    def __init__(self):
        self.results = []

    def __call__(self, result):
        self.results.append(result)

    @property
    def done(self):
        return bool(self.results)

    @property
    def result(self):
        assert len(self.results) == 1, self.results
        return self.results[0]


def join(coord, group="g", member_id="", protocols=(("range", SUB),), session_ms=10_000, rebalance_ms=30_000,
         instance_id=None, require_known=True, client_id="c", skip=False):
    box = Box()
    coord.join(JoinRequest(group, member_id, instance_id, "consumer", list(protocols), session_ms, rebalance_ms,
                           client_id, "/127.0.0.1", require_known, skip), box)
    return box


def join_member(coord, group="g", **kw):
    """The v4 handshake: MEMBER_ID_REQUIRED, then the join with that id (held)."""
    first = join(coord, group, **kw)
    assert first.result.error is Err.MEMBER_ID_REQUIRED
    return join(coord, group, member_id=first.result.member_id, **kw)


def sync(coord, jr, assignments=None, group="g"):
    box = Box()
    coord.sync(group, jr.generation, jr.member_id, None, assignments, box)
    return box


@pytest.fixture
def coord(broker, sched):
    broker.create_topic("t", partitions=4)
    c = Coordinator(broker.offsets, sched, initial_rebalance_delay_ms=0)
    yield c
    c.shutdown()


def test_two_members_join_sync_and_rebalance(coord, sched):
    a = join_member(coord)
    assert a.done  # alone and no initial delay: the round completes at once
    ra = a.result
    assert (ra.error, ra.generation, ra.leader, ra.protocol_name) == (Err.NONE, 1, ra.member_id, "range")
    assert [m[0] for m in ra.members] == [ra.member_id]
    s = sync(coord, ra, {ra.member_id: b"all"})
    assert s.result.assignment == b"all"
    assert coord.groups["g"].state is S.STABLE

    b = join_member(coord)
    assert not b.done and coord.groups["g"].state is S.PREPARING_REBALANCE
    assert coord.heartbeat("g", 1, ra.member_id) is Err.REBALANCE_IN_PROGRESS
    a2 = join(coord, member_id=ra.member_id)
    assert a2.done and b.done
    ra2, rb = a2.result, b.result
    assert ra2.generation == rb.generation == 2
    assert ra2.leader == rb.leader == ra.member_id  # the leader keeps its role
    assert len(ra2.members) == 2 and rb.members == []
    sb = sync(coord, rb)
    assert not sb.done  # waits for the leader's assignment
    sa = sync(coord, ra2, {ra.member_id: b"A", rb.member_id: b"B"})
    assert (sa.result.assignment, sb.result.assignment) == (b"A", b"B")
    assert coord.heartbeat("g", 2, rb.member_id) is Err.NONE
    assert coord.heartbeat("g", 1, rb.member_id) is Err.ILLEGAL_GENERATION
    assert coord.heartbeat("g", 2, "nobody") is Err.UNKNOWN_MEMBER_ID
    d = coord.describe_group("g")
    assert d.state is S.STABLE and d.protocol_name == "range" and {m.assignment for m in d.members} == {b"A", b"B"}


def test_initial_rebalance_delay_collects_a_fleet_in_one_round(broker, sched):
    coord = Coordinator(broker.offsets, sched, initial_rebalance_delay_ms=3000)
    boxes = [join_member(coord)]
    sched.advance(0.5)
    boxes.append(join_member(coord))
    sched.advance(1.0)
    boxes.append(join_member(coord))
    sched.advance(1.4)  # t = 2.9: still inside the first delay
    assert not any(b.done for b in boxes)
    sched.advance(0.2)  # t = 3.1: members arrived meanwhile, so one more delay
    assert not any(b.done for b in boxes)
    sched.advance(3.0)  # t = 6.1
    results = [b.result for b in boxes]
    assert {r.generation for r in results} == {1}
    assert sum(1 for r in results if r.members) == 1  # one leader, with the 3 members
    coord.shutdown()


def test_dead_member_is_evicted_after_its_session_and_partitions_move(coord, sched):
    a, b = join_member(coord, session_ms=6000), None
    ra = a.result
    sync(coord, ra, {ra.member_id: b"x"})
    b = join_member(coord, session_ms=6000)
    a2 = join(coord, member_id=ra.member_id, session_ms=6000)
    ra2, rb = a2.result, b.result
    sync(coord, rb)
    sync(coord, ra2, {ra.member_id: b"1", rb.member_id: b"2"})
    # b stops heartbeating; a keeps going.
    for _ in range(5):
        sched.advance(1.0)
        assert coord.heartbeat("g", 2, ra.member_id) is Err.NONE
    sched.advance(1.5)  # b's 6 s are up
    assert rb.member_id not in coord.groups["g"].members
    assert coord.heartbeat("g", 2, ra.member_id) is Err.REBALANCE_IN_PROGRESS
    a3 = join(coord, member_id=ra.member_id, session_ms=6000)
    assert a3.result.generation == 3 and [m[0] for m in a3.result.members] == [ra.member_id]
    assert coord.heartbeat("g", 2, rb.member_id) is Err.UNKNOWN_MEMBER_ID


def test_member_that_does_not_rejoin_is_dropped_at_the_rebalance_timeout(coord, sched):
    ra = join_member(coord, rebalance_ms=20_000).result
    sync(coord, ra, {})
    rb = None
    b = join_member(coord, rebalance_ms=20_000)
    a2 = join(coord, member_id=ra.member_id, rebalance_ms=20_000)
    rb = b.result
    sync(coord, rb)
    sync(coord, a2.result, {})
    c = join_member(coord, rebalance_ms=20_000)  # a third member: a new round
    assert coord.heartbeat("g", 2, ra.member_id) is Err.REBALANCE_IN_PROGRESS
    join(coord, member_id=ra.member_id, rebalance_ms=20_000)
    # b heartbeats but never rejoins: after 20 s the round goes on without it.
    for _ in range(19):
        sched.advance(1.0)
        coord.heartbeat("g", 2, rb.member_id)
    assert not c.done
    sched.advance(1.5)
    assert c.done and c.result.generation == 3
    assert rb.member_id not in coord.groups["g"].members


def test_sync_timeout_removes_members_that_never_sync(coord, sched):
    ra = join_member(coord, rebalance_ms=10_000).result
    assert coord.groups["g"].state is S.COMPLETING_REBALANCE
    sched.advance(9.0)
    assert coord.heartbeat("g", 1, ra.member_id) is Err.NONE
    sched.advance(2.0)  # no SyncGroup within the rebalance timeout
    assert coord.groups["g"].state is S.EMPTY and not coord.groups["g"].members


def test_leave_group_batch_and_rebalance(coord, sched):
    ra = join(coord, instance_id="i-a", require_known=True).result  # static: no handshake
    sync(coord, ra, {})
    assert ra.member_id.startswith("i-a-")
    b = join_member(coord)
    join(coord, member_id=ra.member_id, instance_id="i-a")
    rb = b.result
    err, per = coord.leave("g", [(rb.member_id, None), ("", "i-a"), ("ghost", None), ("x", "i-unknown")])
    assert err is Err.NONE
    assert per == [Err.NONE, Err.NONE, Err.UNKNOWN_MEMBER_ID, Err.UNKNOWN_MEMBER_ID]
    assert coord.groups["g"].state is S.EMPTY


def join_static_first(coord, iid, **kw):
    """Static members need no MEMBER_ID_REQUIRED round."""
    return join(coord, instance_id=iid, **kw)


def test_static_member_rejoins_without_a_rebalance_and_fences_its_old_self(coord, sched):
    a = join_static_first(coord, "i-a")
    ra = a.result
    sync(coord, ra, {ra.member_id: b"A"})
    b = join_static_first(coord, "i-b")
    a2 = join(coord, member_id=ra.member_id, instance_id="i-a")
    rb = b.result
    sync(coord, rb)
    sync(coord, a2.result, {ra.member_id: b"A", rb.member_id: b"B"})
    gen = coord.groups["g"].generation
    # b restarts: same instance id, no member id.
    b2 = join_static_first(coord, "i-b")
    assert b2.done
    r = b2.result
    assert r.error is Err.NONE and r.generation == gen and r.member_id != rb.member_id
    assert coord.groups["g"].state is S.STABLE
    assert sync(coord, r).result.assignment == b"B"
    assert coord.heartbeat("g", gen, rb.member_id, "i-b") is Err.FENCED_INSTANCE_ID
    assert coord.commit_offsets("g", gen, rb.member_id, "i-b", {("t", 0): OffsetAndMetadata(1)})[0] \
        is Err.FENCED_INSTANCE_ID
    # The static leader comes back: KIP-814 skip_assignment (v9), still no rebalance.
    a3 = join_static_first(coord, "i-a", skip=True)
    assert a3.result.skip_assignment and len(a3.result.members) == 2
    assert coord.groups["g"].state is S.STABLE and coord.groups["g"].generation == gen
    # Without skip support (v<9) no rebalance either: the answer names its old
    # member id as the leader, so it acts as a follower and syncs for its assignment.
    old_leader = a3.result.member_id
    a4 = join_static_first(coord, "i-a", skip=False)
    r = a4.result
    assert r.error is Err.NONE and r.generation == gen and not r.members and not r.skip_assignment
    assert r.leader == old_leader != r.member_id
    assert coord.groups["g"].state is S.STABLE and coord.groups["g"].leader == r.member_id
    assert sync(coord, r).result.assignment == b"A"
    assert coord.groups["g"].generation == gen


def test_offset_commit_fencing(coord, sched):
    o = {("t", 0): OffsetAndMetadata(5, 3, "meta")}
    assert coord.commit_offsets("solo", -1, "", None, o) == (Err.NONE, {("t", 0): Err.NONE})
    assert coord.commit_offsets("ghost", 3, "m", None, o)[0] is Err.ILLEGAL_GENERATION
    ra = join_member(coord).result
    assert coord.commit_offsets("g", 1, ra.member_id, None, o)[0] is Err.REBALANCE_IN_PROGRESS
    sync(coord, ra, {})
    assert coord.commit_offsets("g", -1, "", None, o)[0] is Err.UNKNOWN_MEMBER_ID  # the group is active
    assert coord.commit_offsets("g", 0, ra.member_id, None, o)[0] is Err.ILLEGAL_GENERATION
    assert coord.commit_offsets("g", 1, "stranger", None, o)[0] is Err.UNKNOWN_MEMBER_ID
    err, per = coord.commit_offsets("g", 1, ra.member_id, None,
                                    {("t", 1): OffsetAndMetadata(7), ("t", 9): OffsetAndMetadata(1),
                                     ("nope", 0): OffsetAndMetadata(1),
                                     ("t", 2): OffsetAndMetadata(1, -1, "x" * 5000)})
    assert err is Err.NONE
    assert per == {("t", 1): Err.NONE, ("t", 9): Err.UNKNOWN_TOPIC_OR_PARTITION,
                   ("nope", 0): Err.UNKNOWN_TOPIC_OR_PARTITION, ("t", 2): Err.OFFSET_METADATA_TOO_LARGE}
    assert coord.fetch_offsets("g", None)[1] == {("t", 1): coord.store.committed("g", "t", 1)}
    assert coord.fetch_offsets("solo", [("t", 0), ("t", 3)])[1][("t", 3)] is None
    v = coord.fetch_offsets("solo", [("t", 0)])[1][("t", 0)]
    assert (v.offset, v.leader_epoch, v.metadata) == (5, 3, "meta")


def test_offset_delete_and_delete_groups(coord, broker):
    broker.create_topic("other", partitions=1)
    ra = join_member(coord).result  # subscribes to "t" (see SUB)
    sync(coord, ra, {})
    coord.commit_offsets("g", 1, ra.member_id, None,
                         {("t", 0): OffsetAndMetadata(1), ("other", 0): OffsetAndMetadata(2)})
    err, per = coord.delete_offsets("g", [("t", 0), ("other", 0)])
    assert per == {("t", 0): Err.GROUP_SUBSCRIBED_TO_TOPIC, ("other", 0): Err.NONE}
    assert coord.delete_groups(["g", "nosuch"]) == {"g": Err.NON_EMPTY_GROUP, "nosuch": Err.GROUP_ID_NOT_FOUND}
    coord.leave("g", [(ra.member_id, None)])
    assert [r[2] for r in coord.list_groups()] == [S.EMPTY]
    assert coord.delete_groups(["g"]) == {"g": Err.NONE}
    assert coord.list_groups() == [] and broker.group("g").committed_all() == {}
    assert coord.describe_group("g") is None


def test_inconsistent_protocols_and_selection_by_vote(coord):
    a = join(coord, protocols=[("roundrobin", SUB), ("range", SUB)], require_known=False)
    ra = a.result
    sync(coord, ra, {})
    bad = join(coord, protocols=[("sticky", SUB)], require_known=False)
    assert bad.result.error is Err.INCONSISTENT_GROUP_PROTOCOL
    b = join(coord, protocols=[("range", SUB), ("roundrobin", SUB)], require_known=False)
    c = join(coord, protocols=[("range", SUB)], require_known=False)
    join(coord, member_id=ra.member_id, protocols=[("roundrobin", SUB), ("range", SUB)])
    assert b.result.protocol_name == c.result.protocol_name == "range"  # the only common one


def test_list_and_describe_include_groups_with_offsets_only(coord, broker):
    broker.group("embedded").commit("t", 0, 0)
    assert coord.list_groups() == [("embedded", "", S.EMPTY)]
    assert coord.list_groups(["stable"]) == []
    d = coord.describe_group("embedded")
    assert d.state is S.EMPTY and d.members == []


def test_shutdown_answers_held_requests(coord):
    a = join_member(coord)
    ra = a.result
    b = join_member(coord)
    coord.shutdown()
    assert b.result.error is Err.NOT_COORDINATOR
    assert join(coord, member_id=ra.member_id).result.error is Err.NOT_COORDINATOR


def test_transition_table_is_closed():
    # every target state is reachable and has a way out (except Dead)
    targets = set(TRANSITIONS.values())
    sources = {s for s, _ in TRANSITIONS}
    assert targets | {S.EMPTY} == set(S)
    assert sources == set(S) - {S.DEAD}
    assert all(isinstance(e, Event) for _, e in TRANSITIONS)


# --- random sequences ------------------------------------------------------------------------------


class CoordinatorMachine(RuleBasedStateMachine):
    """Clients behave like real ones, and sometimes like buggy ones (stale
    generations, forgotten member ids); time moves in random steps."""

    def _setup(self):
        # One broker for every example (opening one costs more than a whole
        # example); each example has a group of its own.
        self.broker = _shared_broker()
        self.gid = f"g{next(_GROUP_IDS)}"
        self.sched = _fake_scheduler()
        delay = self._delay
        self.coord = Coordinator(self.broker.offsets, self.sched, initial_rebalance_delay_ms=delay)
        self.transitions = []
        self.coord.on_transition.append(lambda g, old, ev, new: self.transitions.append((old, ev, new, g.generation)))
        self.clients = []  # dicts: member_id, generation, box (join), sbox (sync), static
        self.leaders = {}  # generation -> leader member id
        self.last_generation = 0
        self.boxes = []

    _delay = 0

    def teardown(self):
        coord = getattr(self, "coord", None)
        if coord is None:
            return
        try:
            # Liveness: once everyone goes quiet, every held request is answered.
            self.sched.advance(10_000)
            for box in self.boxes:
                assert len(box.results) == 1, box.results
            g = coord.groups.get(self.gid)
            assert g is None or g.state is S.EMPTY
        finally:
            coord.shutdown()

    def _box(self):
        b = Box()
        self.boxes.append(b)
        return b

    @initialize(delay=st.sampled_from([0, 0, 3000]))
    def start(self, delay):
        self._delay = delay
        self._setup()

    @precondition(lambda self: hasattr(self, "coord") and len(self.clients) < 6)
    @rule(static=st.booleans(), handshake=st.booleans(), session=st.sampled_from([6000, 10000]))
    def new_client(self, static, handshake, session):
        iid = f"i{len(self.clients)}" if static else None
        box = self._box()
        self.coord.join(JoinRequest(self.gid, "", iid, "consumer", [("range", SUB)], session, 8000, "c", "h",
                                    handshake), box)
        self.clients.append({"member_id": "", "generation": -1, "box": box, "sbox": None, "iid": iid,
                             "session": session})

    def _settle(self, c):
        """What a client learns from its answers."""
        box = c["box"]
        if box is not None and box.done:
            r = box.results[-1]
            if r.error is Err.MEMBER_ID_REQUIRED or (r.error is Err.NONE):
                c["member_id"] = r.member_id
            if r.error is Err.NONE:
                c["generation"] = r.generation
                c["leader"] = r.leader == r.member_id
                c["members"] = [m[0] for m in r.members]
            if r.error in (Err.UNKNOWN_MEMBER_ID, Err.FENCED_INSTANCE_ID):
                c["member_id"] = ""
            c["box"] = None

    @precondition(lambda self: hasattr(self, "coord") and self.clients)
    @rule(i=st.integers(0, 5))
    def rejoin(self, i):
        c = self.clients[i % len(self.clients)]
        self._settle(c)
        if c["box"] is not None:
            return  # a real client has one JoinGroup in flight at most
        c["box"] = self._box()
        self.coord.join(JoinRequest(self.gid, c["member_id"], c["iid"], "consumer", [("range", SUB)], c["session"],
                                    8000, "c", "h", True), c["box"])

    @precondition(lambda self: hasattr(self, "coord") and self.clients)
    @rule(i=st.integers(0, 5), stale=st.booleans())
    def sync(self, i, stale):
        c = self.clients[i % len(self.clients)]
        self._settle(c)
        if c["box"] is not None or (c["sbox"] is not None and not c["sbox"].done):
            return
        gen = c["generation"] - (1 if stale else 0)
        assignments = {m: m.encode() for m in c.get("members", [])} if c.get("leader") else None
        c["sbox"] = self._box()
        self.coord.sync(self.gid, gen, c["member_id"], c["iid"], assignments, c["sbox"])

    @precondition(lambda self: hasattr(self, "coord") and self.clients)
    @rule(i=st.integers(0, 5))
    def heartbeat(self, i):
        c = self.clients[i % len(self.clients)]
        self._settle(c)
        err = self.coord.heartbeat(self.gid, c["generation"], c["member_id"], c["iid"])
        assert err in (Err.NONE, Err.REBALANCE_IN_PROGRESS, Err.ILLEGAL_GENERATION, Err.UNKNOWN_MEMBER_ID,
                       Err.FENCED_INSTANCE_ID)

    @precondition(lambda self: hasattr(self, "coord") and self.clients)
    @rule(i=st.integers(0, 5))
    def commit(self, i):
        c = self.clients[i % len(self.clients)]
        self._settle(c)
        err, _ = self.coord.commit_offsets(self.gid, c["generation"], c["member_id"], c["iid"],
                                           {("t", 0): OffsetAndMetadata(0)})
        g = self.coord.groups.get(self.gid)
        if err is Err.NONE and g is not None and g.members:
            assert c["member_id"] in g.members and c["generation"] == g.generation

    @precondition(lambda self: hasattr(self, "coord") and self.clients)
    @rule(i=st.integers(0, 5), by_instance=st.booleans())
    def leave(self, i, by_instance):
        c = self.clients[i % len(self.clients)]
        self._settle(c)
        who = ("", c["iid"]) if by_instance and c["iid"] else (c["member_id"], None)
        self.coord.leave(self.gid, [who])

    @precondition(lambda self: hasattr(self, "coord"))
    @rule(dt=st.sampled_from([0.1, 0.5, 1.0, 2.0, 3.0, 7.0, 12.0]))
    def wait(self, dt):
        self.sched.advance(dt)

    @invariant()
    def group_is_consistent(self):
        if not hasattr(self, "coord"):
            return
        g = self.coord.groups.get(self.gid)
        if g is None:
            return
        assert not set(g.members) & set(g.pending), "a member id both pending and joined"
        assert set(g.static.values()) <= set(g.members)
        for m in g.members.values():
            assert not (m.join_waiter and m.sync_waiter), "a member waiting in two places"
            if m.join_waiter:
                assert g.state is S.PREPARING_REBALANCE
            if m.sync_waiter:
                assert g.state is S.COMPLETING_REBALANCE
        if g.state is S.EMPTY:
            assert not g.members
        if g.state in (S.COMPLETING_REBALANCE, S.STABLE):
            assert g.leader in g.members
        assert g.generation >= self.last_generation
        self.last_generation = g.generation

    @invariant()
    def one_leader_per_generation(self):
        for box in self.boxes:
            for r in box.results:
                if getattr(r, "generation", -1) >= 0 and getattr(r, "error", None) is Err.NONE and hasattr(r, "leader"):
                    assert self.leaders.setdefault(r.generation, r.leader) == r.leader
                    if r.members:
                        assert r.leader == r.member_id  # only the leader sees the members

    @invariant()
    def transitions_follow_the_table(self):
        for old, ev, new, _ in getattr(self, "transitions", []):
            assert TRANSITIONS[(old, ev)] is new
        gens = [gen for old, ev, new, gen in getattr(self, "transitions", [])
                if ev in (Event.JOIN_DONE, Event.JOIN_DONE_EMPTY)]
        assert gens == sorted(set(gens)), "a generation completed twice"


_GROUP_IDS = itertools.count()
_BROKER = []


def _shared_broker():
    if not _BROKER:
        d = tempfile.mkdtemp(prefix="umlog-coord-")
        b = umlog.open(d + "/d")
        b.create_topic("t", partitions=3)
        _BROKER.append(b)
        atexit.register(lambda: (b.close(), shutil.rmtree(d, ignore_errors=True)))
    return _BROKER[0]


def _fake_scheduler():
    # conftest's FakeScheduler, reached through the module pytest imported.
    import sys

    for name, mod in list(sys.modules.items()):
        if name.endswith("conftest") and hasattr(mod, "FakeScheduler") and "groups" in (mod.__file__ or ""):
            return mod.FakeScheduler()
    raise RuntimeError("tests/groups/conftest.py is not loaded")


CoordinatorMachine.TestCase.settings = settings(stateful_step_count=40, deadline=None)
TestCoordinatorMachine = CoordinatorMachine.TestCase

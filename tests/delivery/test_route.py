"""Routing rules, embedded (umlog/delivery/route.py): conditions, partition
mapping, targets created, exactly once across crashes at any point."""

from __future__ import annotations

import json

import pytest
from helpers import wait_until
from hypothesis import given, settings
from hypothesis import strategies as st
from log.test_recovery import crash

import umlog
from umlog._native.core import partition_for_key
from umlog.delivery.forward import service_group
from umlog.delivery.route import Condition, Route, RouteError, Router, check_routes


def values(b, topic, partition=None):
    t = b.topic(topic)
    parts = t.partitions if partition is None else [t.partition(partition)]
    return [r.value for p in parts for r in p.read(p.start_offset)]


def routed(b, route: Route) -> None:
    r = Router(b, [route])
    r.pump()
    r.checkpoint()


def js(**kw) -> bytes:
    return json.dumps(kw).encode()


# --- conditions --------------------------------------------------------------------------


class Rec:
    def __init__(self, value=None, key=None, headers=(), offset=0, timestamp=1000):
        self.value, self.key, self.headers, self.offset, self.timestamp = value, key, headers, offset, timestamp


@pytest.mark.parametrize("expr, rec, want", [
    ("value.region == 'eu'", Rec(js(region="eu")), True),
    ("value.region == 'eu'", Rec(js(region="us")), False),
    ("value.region == 'eu'", Rec(b"not json"), False),
    ("value.region == 'eu'", Rec(None), False),
    ("value == null", Rec(b"\xff\xfe"), True),
    ("value.n > `5`", Rec(js(n=6)), True),
    ("value.n > `5`", Rec(js(n=5)), False),
    ("value.n > '5'", Rec(js(n=6)), False),  # a raw string literal is never > a number
    ("value.n", Rec(js(n=0)), True),  # 0 is true in JMESPath
    ("value.tags", Rec(js(tags=[])), False),
    ("key == 'customer-7'", Rec(b"{}", key=b"customer-7"), True),
    ("starts_with(key, 'cust')", Rec(b"{}", key=b"customer-7"), True),
    ("key == null", Rec(b"{}", key=b"\xff"), True),  # not UTF-8: null
    ("headers.type == 'order'", Rec(b"x", headers=(("type", b"order"),)), True),
    ("headers.type == 'order'", Rec(b"x", headers=(("type", b"refund"), ("type", b"order"))), True),  # last wins
    ("headers.type == null", Rec(b"x", headers=(("type", None),)), True),
    ("topic == 'src' && partition == `0`", Rec(b"x"), True),
    ("timestamp > `999`", Rec(b"x"), True),
    ("length(value.id) > `2`", Rec(js(id=7)), False),  # a type error: no match
])
def test_conditions(expr, rec, want):
    assert Condition(expr).matches(rec, "src", 0) is want


def test_a_condition_that_never_names_value_does_not_parse_it():
    c = Condition("key == 'k'")
    assert c.document(Rec(b"{\"a\": 1}", key=b"k"), "t", 0)["value"] is None
    assert Condition("@.value.a == `1`").document(Rec(b"{\"a\": 1}"), "t", 0)["value"] == {"a": 1}


@pytest.mark.parametrize("expr", ["value.region ==", "value[", "", "   ", "foo(bar)", "length(key, value)", "max()"])
def test_bad_conditions_are_refused(expr):
    with pytest.raises(RouteError):
        Route("a", "b", when=expr)


def test_loops_are_refused():
    with pytest.raises(RouteError, match="itself"):
        Route("a", "a")
    with pytest.raises(RouteError, match="cycle"):
        check_routes([Route("a", "b"), Route("b", "c"), Route("c", "a")])
    with pytest.raises(RouteError, match="named"):
        check_routes([Route("a", "b", when="key"), Route("a", "b", when="value")])
    check_routes([Route("a", "b"), Route("b", "c"), Route("a", "c")])  # a diamond is fine


# --- routing -----------------------------------------------------------------------------


def test_matches_are_copied_with_key_value_headers_and_timestamp(broker):
    src = broker.create_topic("orders")
    route = Route("orders", "orders-eu", when="value.region == 'eu'", name="eu", start="earliest")
    src.append_many([js(region="eu", n=1), js(region="us", n=2), b"plain", None, js(region="eu", n=3)],
                    keys=[b"a", b"b", b"c", b"d", None], headers=[[("h", b"1")], [], [], [], [("x", None)]],
                    timestamps=[11, 12, 13, 14, 15], partition=0)
    routed(broker, route)
    out = list(broker.topic("orders-eu").partition(0).read(0))
    assert [(r.key, json.loads(r.value)["n"], r.headers, r.timestamp) for r in out] == [
        (b"a", 1, (("h", b"1"),), 11), (None, 3, (("x", None),), 15)]
    assert broker.group(service_group("route", "eu")).committed("orders", 0) == 5


def test_a_new_route_starts_at_the_end_and_remembers_it(data_dir):
    b = umlog.open(data_dir, cleaner_interval_ms=None)
    b.create_topic("s").append_many([b"old"], partition=0)
    route = Route("s", "t")
    Router(b, [route]).pump()  # opened: the end is remembered
    b.topic("s").append_many([b"new"], partition=0)
    b.close()
    b = umlog.open(data_dir, cleaner_interval_ms=None)
    routed(b, route)
    assert values(b, "t") == [b"new"]
    b.close()


def test_missing_targets_are_created_with_the_source_partitions(broker):
    broker.create_topic("s", partitions=3)
    Router(broker, [Route("s", "t")]).pump()
    assert broker.topic("t").num_partitions == 3


@pytest.mark.parametrize("target_partitions", [3, 5])
def test_the_same_partition_when_the_target_has_as_many(broker, target_partitions):
    s = broker.create_topic("s", partitions=3)
    broker.create_topic("t", partitions=target_partitions)
    for i in range(3):
        s.append_many([b"p%d" % i] * 4, keys=[b"k%d" % j for j in range(4)], partition=i)
    routed(broker, Route("s", "t", start="earliest"))
    for i in range(3):
        assert values(broker, "t", i) == [b"p%d" % i] * 4


def test_fewer_target_partitions_go_by_key_hash_or_source_partition(broker):
    s = broker.create_topic("s", partitions=4)
    broker.create_topic("t", partitions=3)
    keys = [b"k%d" % j for j in range(20)]
    for i in range(4):
        s.append_many([b"%d/%d" % (i, j) for j in range(20)], keys=keys, partition=i)
        s.append_many([b"%d/nokey" % i], partition=i)
    routed(broker, Route("s", "t", start="earliest"))
    want = {0: [], 1: [], 2: []}
    for i in range(4):
        for j in range(20):
            want[partition_for_key(keys[j], 3)].append(b"%d/%d" % (i, j))
        want[i % 3].append(b"%d/nokey" % i)
    for i in range(3):
        assert sorted(values(broker, "t", i)) == sorted(want[i])


def test_a_started_router_routes_appends_as_they_come(broker):
    s = broker.create_topic("s", partitions=2)
    with Router(broker, [Route("s", "big", when="value.n > `5`"), Route("s", "small", when="value.n <= `5`")]) as r:
        for n in range(12):
            s.append_many([js(n=n)], partition=n % 2)
        wait_until(lambda: len(values(broker, "big")) == 6 and len(values(broker, "small")) == 6, 10,
                   "12 records routed")
        assert {row["route"]: row["routed"] for row in r.stats()} == {"s->big": 6, "s->small": 6}
    assert sorted(json.loads(v)["n"] for v in values(broker, "big")) == list(range(6, 12))
    # stop() checkpointed everything read
    assert broker.group(service_group("route", "s->big")).committed("s", 0) == 6


def test_per_record_appends_are_routed_once_their_batch_is_written(broker):
    s = broker.create_topic("s")
    with Router(broker, [Route("s", "t")]):
        s.append(b"one")
        s.append(b"two")
        wait_until(lambda: values(broker, "t") == [b"one", b"two"], 10, "per-record appends routed")


def test_a_target_deleted_under_a_running_route_is_made_again(broker, caplog):
    s = broker.create_topic("s")
    with Router(broker, [Route("s", "t")]):
        s.append_many([b"1"], partition=0)
        group = broker.group(service_group("route", "s->t"))
        wait_until(lambda: values(broker, "t") == [b"1"] and group.committed("s", 0) == 1, 10,
                   "first record routed and checkpointed")
        broker.delete_topic("t")
        s.append_many([b"2"], partition=0)
        wait_until(lambda: "t" in broker.topics() and values(broker, "t"), 10, "the target made again")
        assert values(broker, "t") == [b"2"]
    assert "routing s-0 failed" in caplog.text


# --- exactly once across crashes ---------------------------------------------------------


@settings(max_examples=20)
@given(n=st.integers(1, 300), parts=st.integers(1, 3), target_parts=st.integers(1, 4),
       cuts=st.lists(st.integers(1, 120), max_size=4), every=st.integers(1, 50))
def test_any_number_of_crashes_routes_each_match_once(tmp_path_factory, n, parts, target_parts, cuts, every):
    data = str(tmp_path_factory.mktemp("route"))
    b = umlog.open(data, cleaner_interval_ms=None)
    s = b.create_topic("s", partitions=parts)
    b.create_topic("t", partitions=target_parts)
    for i in range(n):
        s.append_many([js(n=i)], keys=[b"k%d" % (i % 7)], timestamps=[1000 + i], partition=i % parts,
                      headers=[[("keep", b"yes" if i % 3 else b"no")]])
    route = Route("s", "t", when="headers.keep == 'yes' && value.n >= `0`", start="earliest",
                  checkpoint_records=every)
    for cut in cuts:
        r = Router(b, [route])
        r.pump(max_records=cut)  # stops mid-way, some checkpoints written and some not
        crash(b)
        b = umlog.open(data, cleaner_interval_ms=None)
    r = Router(b, [route])
    r.pump()
    r.checkpoint()
    got = [json.loads(v)["n"] for v in values(b, "t")]
    assert sorted(got) == [i for i in range(n) if i % 3]
    # key, timestamp kept; each source partition's records in order on their target partition
    for p in b.topic("t").partitions:
        recs = list(p.read(0))
        for rec in recs:
            i = json.loads(rec.value)["n"]
            assert (rec.key, rec.timestamp) == (b"k%d" % (i % 7), 1000 + i)
    b.close()

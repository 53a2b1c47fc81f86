"""``umlog dlq list|show|redrive`` (umlog/delivery/dlq.py, umlog/commands/dlq.py):
finding dead-letter topics, showing dead letters, redriving them exactly once,
also when the command is SIGKILLed half way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner
from helpers import scaled, subprocess_env

import umlog
from umlog.cli import main
from umlog.delivery.dlq import redrive_group
from umlog.delivery.group import COUNT_HEADER, DLT_HEADERS, GROUP_HEADER, dead_letter_headers


def cli(*args):
    res = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return res


def make_dead_letters(data: str) -> None:
    """orders (2 partitions): 6 records, 4 rejected by share group billing into orders.dlq;
    'failed' holds one dead letter without a DLQ name; empty.dlq holds nothing."""
    with umlog.open(data, cleaner_interval_ms=None) as b:
        t = b.create_topic("orders", partitions=2)
        for i in range(6):
            t.append_many([b"v%d" % i], keys=[b"k%d" % i], headers=[[("trace", b"t%d" % i)]], timestamps=[1000 + i],
                          partition=i % 2)
        q = b.share_group("billing", topics=["orders"], dead_letter="orders.dlq", start="earliest")
        got = []
        while len(got) < 6:
            got += q.acquire(max_records=10, timeout=0)
        q.reject([r for r in got if r.value in (b"v0", b"v1", b"v2", b"v3")], reason="bad total")
        q.ack([r for r in got if r.value in (b"v4", b"v5")])
        b.create_topic("other")
        f = b.create_topic("failed")
        r = next(iter(t.partition(1).read(1, max_records=1)))  # v3
        f.append_many([r.value], keys=[r.key], headers=[dead_letter_headers(r, "orders", 1, 3, "boom", "g2")],
                      partition=0)
        b.create_topic("empty.dlq")


def test_list_finds_dead_letter_topics_by_name_and_by_header(data_dir):
    make_dead_letters(data_dir)
    res = cli("dlq", "list", "--data-dir", data_dir, "--json")
    assert res.exit_code == 0, res.output
    rows = {r["topic"]: r for r in json.loads(res.output)}
    assert set(rows) == {"orders.dlq", "failed", "empty.dlq"}
    assert rows["orders.dlq"]["found_by"] == "name and headers"
    assert rows["orders.dlq"]["records"] == rows["orders.dlq"]["not_redriven"] == 4
    assert rows["orders.dlq"]["original_topics"] == ["orders"]
    assert rows["failed"]["found_by"] == "headers"
    assert rows["empty.dlq"]["found_by"] == "name" and rows["empty.dlq"]["records"] == 0
    human = cli("dlq", "list", "--data-dir", data_dir)
    assert human.exit_code == 0 and "orders.dlq" in human.output and "failed" in human.output


def test_show_decodes_each_dead_letter(data_dir):
    make_dead_letters(data_dir)
    res = cli("dlq", "show", "orders.dlq", "--data-dir", data_dir, "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert sorted(r["value"] for r in rows) == ["v0", "v1", "v2", "v3"]
    v2 = next(r for r in rows if r["value"] == "v2")
    assert (v2["original_topic"], v2["original_partition"], v2["original_offset"], v2["original_timestamp"]) == (
        "orders", 0, 1, 1002)
    assert (v2["reason"], v2["delivery_count"], v2["key"], v2["group"]) == ("bad total", 1, "k2", "billing")
    assert v2["headers"] == {"trace": "t2"} and v2["redriven"] is False
    assert len(json.loads(cli("dlq", "show", "orders.dlq", "--data-dir", data_dir, "--json", "--max", "2")
                          .output)) == 2
    human = cli("dlq", "show", "orders.dlq", "--data-dir", data_dir)
    assert human.exit_code == 0 and "bad total" in human.output and "orders-0@1" in human.output


def test_show_of_an_unknown_topic_is_one_line_and_exit_1(data_dir):
    make_dead_letters(data_dir)
    res = subprocess.run([sys.executable, "-m", "umlog", "dlq", "show", "nope", "--data-dir", data_dir],
                         capture_output=True, text=True, env=subprocess_env(), timeout=scaled(60))
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1 and "nope" in res.stderr


def originals(b, topic="orders"):
    return {p.index: [(r.key, r.value, r.headers) for r in p.read(0)] for p in b.topic(topic).partitions}


def test_redrive_puts_dead_letters_back_once(data_dir):
    make_dead_letters(data_dir)
    res = cli("dlq", "redrive", "orders.dlq", "--data-dir", data_dir)
    assert res.exit_code == 0, res.output
    assert "redrove 4 of 4 dead letters read from orders.dlq to orders (4)" in res.output
    again = cli("dlq", "redrive", "orders.dlq", "--data-dir", data_dir, "--json")
    assert json.loads(again.output)["read"] == 0
    with umlog.open(data_dir, readonly=True) as b:
        o = originals(b)
        # each back in its original partition, after the six first records, without the DLT headers
        assert sorted(o[0][3:]) == [(b"k0", b"v0", (("trace", b"t0"),)), (b"k2", b"v2", (("trace", b"t2"),))]
        assert sorted(o[1][3:]) == [(b"k1", b"v1", (("trace", b"t1"),)), (b"k3", b"v3", (("trace", b"t3"),))]
        for p in b.topic("orders").partitions:
            for r in p.read(3):
                assert not {k for k, _ in r.headers} & {*DLT_HEADERS, COUNT_HEADER, GROUP_HEADER}
                assert r.timestamp > 1_000_000  # stamped at the redrive
        assert sum(v.offset for v in b.offsets.group_offsets(redrive_group("orders.dlq")).values()) == 4
    shown = json.loads(cli("dlq", "show", "orders.dlq", "--data-dir", data_dir, "--json").output)
    assert all(r["redriven"] for r in shown)
    rows = {r["topic"]: r for r in json.loads(cli("dlq", "list", "--data-dir", data_dir, "--json").output)}
    assert rows["orders.dlq"]["not_redriven"] == 0


def test_redrive_to_another_topic_with_max(data_dir):
    make_dead_letters(data_dir)
    first = cli("dlq", "redrive", "orders.dlq", "--to", "retry", "--max", "3", "--data-dir", data_dir, "--json")
    assert json.loads(first.output)["appended"] == 3
    rest = cli("dlq", "redrive", "orders.dlq", "--to", "retry", "--data-dir", data_dir, "--json")
    assert json.loads(rest.output)["appended"] == 1
    with umlog.open(data_dir, readonly=True) as b:
        assert b.topic("retry").num_partitions == 2  # created like the dead-letter topic
        assert sorted(v for p in originals(b, "retry").values() for _, v, _ in p) == [b"v0", b"v1", b"v2", b"v3"]
        assert sum(len(p) for p in originals(b).values()) == 6  # the original topic untouched


def test_redrive_into_the_dlq_itself_is_refused(data_dir):
    make_dead_letters(data_dir)
    res = subprocess.run([sys.executable, "-m", "umlog", "dlq", "redrive", "orders.dlq", "--to", "orders.dlq",
                          "--data-dir", data_dir], capture_output=True, text=True, env=subprocess_env(),
                         timeout=scaled(60))
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1


N_BIG = 60_000


def make_big_dlq(data: str) -> None:
    class R:
        def __init__(self, i):
            self.offset, self.timestamp, self.headers = i, 1000 + i, (("n", b"%d" % i),)

    with umlog.open(data, cleaner_interval_ms=None) as b:
        b.create_topic("src", partitions=3)
        d = b.create_topic("big.dlq", partitions=2)
        for part in range(2):
            idx = range(part, N_BIG, 2)
            d.append_many([b"%d" % i for i in idx], keys=[b"k%d" % (i % 13) if i % 4 else None for i in idx],
                          headers=[dead_letter_headers(R(i), "src", i % 3, 1, "x", "g") for i in idx],
                          partition=part)


def test_sigkill_mid_redrive_then_again_gives_each_dead_letter_once(tmp_path):
    data = str(tmp_path / "data")
    make_big_dlq(data)
    cmd = [sys.executable, "-m", "umlog", "dlq", "redrive", "big.dlq", "--data-dir", data]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
                             cwd=str(tmp_path))
    try:
        first = child.stdout.readline()
        assert "redriven" in first, first + child.stderr.read()
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(scaled(60))
        child.stdout.close()
        child.stderr.close()
    killed = child.returncode == -signal.SIGKILL
    with umlog.open(data, readonly=True) as b:
        partial = sum(p.end_offset for p in b.topic("src").partitions)
    assert partial >= 500
    res = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), cwd=str(tmp_path),
                         timeout=scaled(120))
    assert res.returncode == 0, res.stderr
    with umlog.open(data, readonly=True) as b:
        got = []
        for p in b.topic("src").partitions:
            for r in p.read(0):
                i = int(r.value)
                assert r.key == (b"k%d" % (i % 13) if i % 4 else None)
                assert r.headers == (("n", b"%d" % i),)
                assert p.index == i % 3  # the original partition
                got.append(i)
    assert len(got) == N_BIG and sorted(got) == list(range(N_BIG))
    if killed:
        assert partial < N_BIG, "the redrive ended before the kill: nothing was tested"


@pytest.mark.clients
def test_redrive_through_the_kafka_protocol_beside_a_server(tmp_path):
    pytest.importorskip("confluent_kafka")
    from server.kafka.serve_process import ServeProcess

    data = str(tmp_path / "data")
    make_dead_letters(data)
    s = ServeProcess(data)
    try:
        cmd = [sys.executable, "-m", "umlog", "dlq", "redrive", "orders.dlq", "--bootstrap", s.bootstrap, "--json"]
        res = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=scaled(120))
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout.strip().splitlines()[-1])
        assert (out["read"], out["appended"], out["targets"]) == (4, 4, {"orders": 4})
        again = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=scaled(120))
        assert json.loads(again.stdout.strip().splitlines()[-1])["read"] == 0, again.stderr
    finally:
        assert s.stop() == 0, s.stderr_text()
    with umlog.open(data, readonly=True) as b:
        o = originals(b)
        assert sorted(o[0][3:]) == [(b"k0", b"v0", (("trace", b"t0"),)), (b"k2", b"v2", (("trace", b"t2"),))]
        assert sorted(o[1][3:]) == [(b"k1", b"v1", (("trace", b"t1"),)), (b"k3", b"v3", (("trace", b"t3"),))]
        assert b.group(redrive_group("orders.dlq")).committed("orders.dlq", 0) == 2

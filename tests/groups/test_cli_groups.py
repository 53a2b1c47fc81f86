"""``umlog groups list|describe`` on a data dir, through the real executable
(against a server: tests/server/kafka/test_groups_clients.py)."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import subprocess_env

import umlog


def umlog_cli(cwd, *args):
    r = subprocess.run([sys.executable, "-m", "umlog", *args], cwd=cwd, capture_output=True,
                       env=subprocess_env(), timeout=120)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def test_groups_list_and_describe_on_a_data_dir(tmp_path):
    data = str(tmp_path / "data")
    with umlog.open(data) as b:
        t = b.create_topic("orders", partitions=2)
        t.append_many([b"x"] * 10, partition=0)
        t.append_many([b"x"] * 4, partition=1)
        b.group("billing").commit("orders", 0, 7)
        b.group("billing").commit("orders", 1, 4)
        b.group("audit").commit("orders", 0, 0)
    rc, out, err = umlog_cli(tmp_path, "groups", "list", "--data-dir", data, "--json")
    assert rc == 0, err
    rows = {r["group"]: r for r in json.loads(out)}
    assert rows["billing"]["lag"] == 3 and rows["audit"]["lag"] == 10 and rows["billing"]["state"] == "Empty"
    rc, out, err = umlog_cli(tmp_path, "groups", "describe", "billing", "--data-dir", data, "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert [(o["topic"], o["partition"], o["committed"], o["end_offset"], o["lag"]) for o in d["offsets"]] == [
        ("orders", 0, 7, 10, 3), ("orders", 1, 4, 4, 0)]
    assert d["lag"] == 3
    rc, out, err = umlog_cli(tmp_path, "groups", "describe", "billing", "--data-dir", data)
    assert rc == 0 and "billing" in out and "orders" in out
    rc, out, err = umlog_cli(tmp_path, "groups", "list", "--data-dir", data)
    assert rc == 0 and "audit" in out
    # A group with no offsets: one line, exit 1.
    rc, out, err = umlog_cli(tmp_path, "groups", "describe", "nosuch", "--data-dir", data)
    assert rc == 1 and err.strip().splitlines() == ["error: unknown group 'nosuch' in " + data +
                                                    " (no committed offsets)"]
    rc, out, err = umlog_cli(tmp_path, "groups", "list", "--data-dir", str(tmp_path / "missing"))
    assert rc == 1 and len(err.strip().splitlines()) == 1

"""``umlog produce`` and ``umlog consume`` through the real executable."""

import json
import subprocess
import sys

from helpers import scaled, subprocess_env

import umlog


def test_produce_lines_keys_partitions_and_errors(cli, tmp_path):
    cli("topics", "create", "t", "-p", "2")
    r = cli("produce", "t", input="one\ntwo\n\nthree")
    assert "produced 4 record(s) to t" in r.err
    assert cli.json("produce", "t", "--skip-empty", input="a\r\n\nb\n")["records"] == 2
    got = cli.json("produce", "t", "-K", ":", input="k1:v1\nk2:v:2\n:empty key\n")
    assert got["records"] == 3
    (tmp_path / "lines.txt").write_bytes(b"f1\nf2\n\xff\xfe\n")
    assert cli.json("produce", "t", "--file", "lines.txt", "--partition", "1") == {
        "topic": "t", "records": 3, "partitions": {"1": 3}}
    line = cli.error("produce", "t", "-K", ":", input="a:1\nb:2\nno separator\nc:3\n")
    assert line == "error: line 3 has no key separator ':'; 2 record(s) were produced before it"
    assert cli.error("produce", "nope", input="x\n") == "error: unknown topic 'nope'"
    assert cli.error("produce", "t", "--partition", "5", input="x\n") == \
        "error: topic 't' has no partition 5 (it has 2)"
    assert cli.error("produce", "t", "--file", "missing.txt", code=2)
    cli("topics", "create", "c", "-c", "cleanup.policy=compact")
    assert cli.error("produce", "c", input="keyless\n").startswith("error: topic 'c' (partition 0) is compacted")
    with umlog.open(tmp_path / "umlog-data", readonly=True) as b:
        t = b.topic("t")
        recs = sorted((r for p in t.partitions for r in p.read()), key=lambda r: (r.partition, r.offset))
        values = [r.value for r in recs]
        assert b"one" in values and b"" in values and b"\xff\xfe" in values and b"c" not in values
        keyed = {r.key: r.value for r in recs if r.key is not None}
        assert keyed == {b"k1": b"v1", b"k2": b"v:2", b"": b"empty key", b"a": b"1", b"b": b"2"}
        assert [r.value for r in t.partition(1).read() if r.value.startswith(b"f")] == [b"f1", b"f2"]


def test_consume_formats_max_partition_and_offsets(cli, tmp_path):
    cli("topics", "create", "t")
    with umlog.open(tmp_path / "umlog-data") as b:
        p = b.topic("t").partition(0)
        p.append_many([b"v0", b"\xffbin", None, b"v3"], [b"k0", None, b"k2", b"k3"],
                      headers=[[("h", b"x")], None, None, None], timestamps=[1000, 1001, 1002, 1003])
    assert cli("consume", "t").out == ""  # from the end, as Kafka's console consumer
    assert cli("consume", "t", "--from-beginning").out == "v0\n\ufffdbin\n\nv3\n"
    assert cli("consume", "t", "-b", "--print-key", "--key-separator", "=", "--max", "2").out == "k0=v0\n=\ufffdbin\n"
    raw = cli("consume", "t", "-b", "--format", "raw")
    assert raw.stdout == b"v0\n\xffbin\n\nv3\n"
    lines = [json.loads(x) for x in cli("consume", "t", "-b", "--format", "json").out.splitlines()]
    assert lines[0] == {"topic": "t", "partition": 0, "offset": 0, "timestamp": 1000, "key": "k0", "value": "v0",
                        "headers": [{"key": "h", "value": "x"}]}
    assert lines[1]["value"] is None and lines[1]["value_base64"] == "/2Jpbg==" and lines[1]["key"] is None
    assert lines[2]["value"] is None and "value_base64" not in lines[2]
    assert cli("consume", "t", "--partition", "0", "--offset", "2").out == "\nv3\n"
    assert cli.error("consume", "t", "--offset", "2") == "error: --offset needs --partition"
    assert cli.error("consume", "t", "--partition", "0", "--offset", "9").startswith(
        "error: offset 9 is out of range for t-0")
    assert cli.error("consume", "nope", "-b") == "error: unknown topic 'nope'"
    # `| head` closes the pipe early: not an error.
    p = subprocess.run(f"{sys.executable} -m umlog consume t -b | head -1", shell=True, cwd=tmp_path,
                       capture_output=True, env=subprocess_env())
    assert p.returncode == 0 and p.stdout == b"v0\n" and b"Error" not in p.stderr


def test_consume_as_a_group_resumes_after_its_commits(cli, tmp_path):
    cli("topics", "create", "t", "-p", "2")
    cli("produce", "t", "-K", ":", input="".join(f"k{i}:v{i}\n" for i in range(10)))
    first = cli("consume", "t", "--group", "g", "--from-beginning", "--max", "4").out.splitlines()
    rest = cli("consume", "t", "--group", "g", "--from-beginning").out.splitlines()
    assert len(first) == 4 and sorted(first + rest) == sorted(f"v{i}" for i in range(10))
    assert cli("consume", "t", "--group", "g").out == ""
    assert cli.error("consume", "t", "--group", "g", "--partition", "0").startswith("error: --partition reads")
    with umlog.open(tmp_path / "umlog-data") as b:
        g = b.group("g")
        assert g.committed("t", 0) + g.committed("t", 1) == 10


def test_consume_follow_sees_records_produced_meanwhile(cli, tmp_path):
    cli("topics", "create", "t")
    # From the beginning, so that it gets a and b however late it starts; once it
    # has printed them it is at the end, and c can only reach it by following.
    # -u: each line comes out as it is printed. --max ends it; the timeout only
    # bounds a failure.
    proc = subprocess.Popen([sys.executable, "-u", "-m", "umlog", "consume", "t", "--follow", "--from-beginning",
                             "--max", "3", "--timeout", str(scaled(60)), "--format", "json"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env())
    try:
        cli("produce", "t", input="a\nb\n")
        first = [proc.stdout.readline() for _ in range(2)]
        cli("produce", "t", input="c\n")
        out, err = proc.communicate(timeout=scaled(60))
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert [json.loads(x)["value"] for x in [*first, *out.decode().splitlines()]] == ["a", "b", "c"]

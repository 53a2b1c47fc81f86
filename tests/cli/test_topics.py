"""``umlog topics ...`` through the real executable; the data dir lock."""

import os

import umlog


def test_topics_create_list_describe_config_delete(cli, tmp_path):
    assert cli.error("topics", "list").startswith("error: no data dir at ./umlog-data")
    r = cli("topics", "create", "orders", "--partitions", "3", "-c", "retention.ms=3600000",
            "-c", "segment.bytes=4096")
    assert "created topic orders (3 partitions)" in r.out
    assert (tmp_path / "umlog-data" / "orders-2").is_dir()  # ./umlog-data by default
    assert cli.error("topics", "create", "orders") == "error: topic 'orders' already exists"
    assert cli.json("topics", "create", "orders", "--if-not-exists")["created"] is False
    assert cli.error("topics", "create", "bad/name").startswith("error: topic name 'bad/name'")
    assert cli.error("topics", "create", "x", "-c", "nope=1") == "error: unknown topic config 'nope'"
    assert cli.error("topics", "create", "x", "-c", "retention.ms") == "error: config 'retention.ms' is not key=value"
    cli("topics", "create", "logs", "--data-dir", "other")
    assert cli.json("topics", "list", "--data-dir", "other")[0]["topic"] == "logs"

    with umlog.open(tmp_path / "umlog-data") as b:
        b.topic("orders").append_many([b"v%d" % i for i in range(300)], partition=1)
    listed = cli.json("topics", "list")
    assert listed == [{"topic": "orders", "partitions": 3, "records": 300, "size_bytes": listed[0]["size_bytes"],
                       "cleanup_policy": "delete"}]
    assert "orders" in cli("topics", "list").out

    d = cli.json("topics", "describe", "orders", "--segments")
    assert [p["end_offset"] for p in d["partitions"]] == [0, 300, 0]
    assert d["config"] == {"retention.ms": 3600000, "segment.bytes": 4096}
    p1 = d["partitions"][1]
    assert p1["segments"] == len(p1["segment_list"]) and p1["segment_list"][0]["base_offset"] == 0
    text = cli("topics", "describe", "orders", "--segments").out
    assert "retention.ms=3600000" in text and "base offset" in text
    assert cli.error("topics", "describe", "x") == "error: unknown topic 'x'"

    cfg = cli.json("topics", "config", "orders")
    assert cfg["config"]["retention.ms"] == 3600000 and cfg["overrides"] == ["retention.ms", "segment.bytes"]
    cfg = cli.json("topics", "config", "orders", "--set", "retention.bytes=1000000", "--delete", "retention.ms")
    assert cfg["overrides"] == ["retention.bytes", "segment.bytes"] and cfg["config"]["retention.ms"] == 604800000
    # Validated all at once: a bad value changes nothing.
    assert cli.error("topics", "config", "orders", "--set", "retention.ms=5",
                     "--set", "retention.bytes=-7") == "error: invalid value for retention.bytes: must be >= -1, got -7"
    assert cli.error("topics", "config", "orders", "--set", "cleanup.policy=sometimes").startswith(
        "error: invalid value for cleanup.policy")
    assert cli.error("topics", "config", "orders", "--delete", "colour") == "error: unknown topic config 'colour'"
    assert cli.json("topics", "config", "orders")["overrides"] == ["retention.bytes", "segment.bytes"]
    assert "retention.bytes" in cli("topics", "config", "orders").out

    assert cli("topics", "delete", "orders").out.strip() == "deleted topic orders"
    assert cli.json("topics", "list") == []
    assert cli.error("topics", "delete", "orders") == "error: unknown topic 'orders'"
    assert cli("topics", "--help").out.count("config") >= 1


def test_a_data_dir_held_by_a_writer(cli, tmp_path):
    cli("topics", "create", "t")
    with umlog.open(tmp_path / "umlog-data") as b:
        b.topic("t").append_many([b"a", b"b"])
        b.flush()
        line = cli.error("topics", "create", "u")
        assert line.startswith(f"error: data dir ./umlog-data is locked by process {os.getpid()}")
        assert "stop that process" in line
        assert cli.error("produce", "t", input="x\n").startswith("error: data dir ./umlog-data is locked")
        # Readers need no lock.
        assert cli.json("topics", "list")[0]["records"] == 2
        assert cli("consume", "t", "--from-beginning").out == "a\nb\n"

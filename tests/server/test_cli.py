"""``umlog serve``'s settings: flags, the config file, precedence and refusals
(no server is started here except where a test says so)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner
from helpers import subprocess_env

from umlog.cli import main
from umlog.server.door import all_settings
from umlog.server.settings import SettingsError, parse_hostport, reference, resolve


def test_help_lists_serve_and_its_options():
    r = CliRunner().invoke(main, ["serve", "--help"])
    assert r.exit_code == 0
    for s in all_settings():
        if s.flag:
            for flag in s.flag.split("/"):
                assert flag in r.output
    assert "--config" in r.output


@pytest.mark.parametrize("value,expected", [
    ("127.0.0.1:9092", ("127.0.0.1", 9092)),
    ("localhost", ("localhost", 9092)),
    (":0", ("127.0.0.1", 0)),
    ("[::1]:19092", ("::1", 19092)),
])
def test_parse_hostport(value, expected):
    assert parse_hostport(value) == expected


@pytest.mark.parametrize("value", ["127.0.0.1:70000", "127.0.0.1:http"])
def test_parse_hostport_refuses_bad_port(value):
    with pytest.raises(ValueError):
        parse_hostport(value)


# A value for every declared setting, different from its default: each must
# come back from the file as written.
_SAMPLE = {"str": "/srv/umlog", "hostport": "10.1.2.3:19092", "bool": None, "int": None, "choice": None,
           "strlist": ["User:a", "User:b"], "listeners": "10.1.2.3:19092"}


def _sample(s):
    if s.kind == "bool":
        return not s.default
    if s.kind == "int":
        return (s.min or 0) + 7 if s.default != (s.min or 0) + 7 else (s.min or 0) + 8
    if s.kind == "choice":
        return next(c for c in s.choices if c != s.default)
    return _SAMPLE[s.kind]


def _toml(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def test_every_setting_round_trips_through_the_file(tmp_path):
    tables: dict[str, list[str]] = {}
    plain = [s for s in all_settings() if not s.array]  # arrays of tables: their own tests
    for s in plain:
        tables.setdefault(s.table, []).append(f"{s.key} = {_toml(_sample(s))}")
    text = "".join(f"[{t}]\n" + "\n".join(lines) + "\n" for t, lines in tables.items())
    text += '[topics.defaults]\n"retention.ms" = 60000\n'
    f = tmp_path / "umlog.toml"
    f.write_text(text)
    from umlog.server.settings import load_file

    got = resolve(all_settings(), load_file(str(f)), str(f))
    for s in plain:
        assert got.get(s.table, s.key) == _sample(s), s.name
    assert got.topic_defaults == {"retention.ms": 60000}


def test_defaults_without_a_file():
    got = resolve(all_settings())
    for s in all_settings():
        if s.array:
            assert got.array(s.table) == []
        else:
            assert got.get(s.table, s.key) == s.default


def test_flags_override_the_file():
    data = {"server": {"fsync": "interval", "data_dir": "/from/file"}, "kafka": {"listen": "127.0.0.1:1"}}
    got = resolve(all_settings(), data, "umlog.toml", {"server.fsync": "always", "kafka.listen": None})
    assert got.get("server", "fsync") == "always"  # given on the command line
    assert got.get("server", "data_dir") == "/from/file"  # only in the file
    assert got.get("kafka", "listen") == "127.0.0.1:1"  # flag not given


@pytest.mark.parametrize("data,words", [
    ({"colour": {"x": 1}}, ["unknown table [colour]", "umlog.toml"]),
    ({"server": {"colour": "blue"}}, ["unknown key server.colour", "umlog.toml"]),
    ({"kafka": {"listen": 9092}}, ["kafka.listen", "must be a string"]),
    ({"kafka": {"listen": "127.0.0.1:99999"}}, ["kafka.listen", "out of range"]),
    ({"server": {"fsync": "sometimes"}}, ["server.fsync", "never, interval, always"]),
    ({"server": {"idle_timeout_ms": -1}}, ["server.idle_timeout_ms", "[0, "]),
    ({"kafka": {"auto_create": "yes"}}, ["kafka.auto_create", "true or false"]),
    ({"kafka": {"default_partitions": 1.5}}, ["kafka.default_partitions", "integer"]),
    ({"topics": {"defaults": {"retention.mss": 1}}}, ["topics.defaults", "retention.mss"]),
    ({"topics": {"defaults": {"retention.ms": "soon"}}}, ["topics.defaults", "retention.ms"]),
    ({"topics": {"other": {}}}, ["[topics]"]),
    ({"server": "x"}, ["server must be a table"]),
])
def test_bad_keys_and_values_are_refused_with_their_name(data, words):
    with pytest.raises(SettingsError) as e:
        resolve(all_settings(), data, "umlog.toml")
    for w in words:
        assert w in str(e.value)


def _serve(*args, cwd):
    return subprocess.run([sys.executable, "-m", "umlog", "serve", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env=subprocess_env())


def test_a_bad_config_file_exits_2_with_one_line_before_opening_anything(tmp_path):
    f = tmp_path / "umlog.toml"
    data = tmp_path / "data"
    f.write_text(f'[server]\ndata_dir = "{data}"\n[kafka]\nlisten = "127.0.0.1:0"\ncolour = "blue"\n')
    r = _serve("--config", str(f), cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "kafka.colour" in lines[0] and str(f) in lines[0], r.stderr
    assert not data.exists()  # nothing opened


def test_a_file_that_is_not_toml_or_missing_is_one_line(tmp_path):
    f = tmp_path / "umlog.toml"
    f.write_text("[server\n")
    r = _serve("--config", str(f), cwd=tmp_path)
    assert r.returncode == 2 and "not valid TOML" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _serve("--config", str(tmp_path / "missing.toml"), cwd=tmp_path)
    assert r.returncode == 2 and "cannot read" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_the_reference_table_names_every_setting():
    table = reference(all_settings())
    for s in all_settings():
        assert f"`{s.title}`" in table


def test_the_readme_table_is_the_one_the_code_makes():
    import os

    readme = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")
    if not os.path.exists(readme):  # an installed package without the source tree
        pytest.skip("no README.md beside the tests")
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    block = text.split("<!-- settings:begin -->\n", 1)[1].split("\n<!-- settings:end -->", 1)[0]
    assert block == reference(all_settings()), "regenerate the README's settings table from reference()"


def test_cleaner_interval_runs_retention_in_a_running_server(tmp_path):
    """``--cleaner-interval-ms``: the engine's background cleaner at that pace (Kafka's
    log.retention.check.interval.ms); retention deletes the first segment while serving."""
    import os

    from helpers import wait_until

    import umlog
    from umlog._native.core import encode_batch

    from .kafka.serve_process import ServeProcess

    data = str(tmp_path / "data")
    with umlog.open(data, cleaner_interval_ms=None) as b:
        p = b.create_topic("r", config={"segment.bytes": 4096, "retention.bytes": 600}).partition(0)
        for _ in range(5):
            p.append_batches(encode_batch([b"x" * 100] * 10, [None] * 10))
            p.roll()
    first = os.path.join(data, "r-0", "00000000000000000000.log")
    assert os.path.exists(first)
    s = ServeProcess(data, "--cleaner-interval-ms", "100")
    try:
        wait_until(lambda: not os.path.exists(first), 30, "retention deleting the first segment")
    finally:
        assert s.stop() == 0, s.stderr_text()

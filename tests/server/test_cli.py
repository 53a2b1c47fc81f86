"""The ``umlog`` CLI group and the ``serve`` settings (no server started here)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from umlog.cli import _load_config_file, main
from umlog.server.server import ServeConfig, parse_hostport


def test_help_lists_serve_and_its_options():
    r = CliRunner().invoke(main, ["serve", "--help"])
    assert r.exit_code == 0
    for opt in ("--data-dir", "--kafka", "--advertise", "--fsync", "--config", "--auto-create",
                "--default-partitions"):
        assert opt in r.output


@pytest.mark.parametrize("value,expected", [
    ("127.0.0.1:9092", ("127.0.0.1", 9092)),
    ("localhost", ("localhost", 9092)),
    (":0", ("127.0.0.1", 0)),
    ("[::1]:19092", ("::1", 19092)),
])
def test_parse_hostport(value, expected):
    assert parse_hostport(value) == expected


def test_parse_hostport_refuses_bad_port():
    with pytest.raises(ValueError):
        parse_hostport("127.0.0.1:70000")


def test_config_file_keys_map_to_serve_settings(tmp_path):
    f = tmp_path / "umlog.toml"
    f.write_text('[serve]\ndata-dir = "/x"\nkafka = "127.0.0.1:0"\nfsync = "always"\n'
                 'auto-create = false\ndefault-partitions = 3\n')
    cfg = ServeConfig(**_load_config_file(str(f)))
    assert (cfg.data_dir, cfg.kafka, cfg.fsync, cfg.auto_create, cfg.default_partitions) == (
        "/x", "127.0.0.1:0", "always", False, 3)


def test_unknown_config_key_is_a_usage_error(tmp_path):
    f = tmp_path / "umlog.toml"
    f.write_text('colour = "blue"\n')
    r = CliRunner().invoke(main, ["serve", "--config", str(f)])
    assert r.exit_code == 2 and "colour" in r.output

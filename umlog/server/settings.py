"""The server's settings: each declared once, feeding the flags, the file and the docs.

A ``Setting`` names its table (``server`` or a door's name), its key in the
config file, its type, default and help text, and optionally the command-line
flag that overrides it. ``umlog serve`` builds its click options from these
declarations (``click_options``), ``load_file`` reads ``umlog.toml`` against
them, and ``reference()`` prints them as the documentation table, so a setting
cannot exist in one place and be missing from another.

The file is TOML, one table per door plus ``[server]`` and
``[topics.defaults]``::

    [server]
    data_dir = "./umlog-data"
    fsync = "always"

    [kafka]
    listen = "127.0.0.1:9092"
    advertise = "kafka.example:9092"

    [topics.defaults]
    "retention.ms" = 86400000

Precedence: a flag given on the command line wins over the file, the file over
the default. An unknown table or key, or a value of the wrong type or range, is
a ``SettingsError`` naming the key and the file, raised before anything is
opened (the CLI turns it into one line on stderr and exit code 2).
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["Setting", "SettingsError", "Settings", "SERVER_SETTINGS", "parse_hostport", "load_file", "resolve"]


class SettingsError(ValueError):
    """A bad config file, key or value; the message names the key and the file."""


def parse_hostport(value: str, default_port: int = 9092) -> tuple[str, int]:
    """``HOST:PORT``, ``HOST``, ``:PORT`` or ``[v6]:PORT`` -> (host, port)."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, port = value.split(":")
    elif ":" in value:  # bare IPv6 address
        host, port = value, ""
    else:
        host, port = value, ""
    if not port:
        return host or "127.0.0.1", default_port
    try:
        p = int(port)
    except ValueError:
        raise ValueError(f"port {port!r} is not a number") from None
    if not 0 <= p <= 65535:
        raise ValueError(f"port {p} is out of range")
    return host or "127.0.0.1", p


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting. ``kind`` is "str", "int", "bool", "hostport" or "choice";
    ``default`` None means "unset" (the setting's help says what that does)."""

    table: str
    key: str
    kind: str
    default: Any
    help: str
    flag: str | None = None
    choices: tuple[str, ...] = ()
    min: int | None = None
    max: int | None = None

    @property
    def name(self) -> str:
        return f"{self.table}.{self.key}"

    def check(self, value: Any, where: str) -> Any:
        """The value converted to the setting's type, or a SettingsError naming it."""
        if value is None and self.default is None:
            return None
        k = self.kind
        if k == "bool":
            if not isinstance(value, bool):
                raise SettingsError(f"{where}: {self.name} must be true or false, not {value!r}")
            return value
        if k == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise SettingsError(f"{where}: {self.name} must be an integer, not {value!r}")
            if self.min is not None and value < self.min or self.max is not None and value > self.max:
                raise SettingsError(f"{where}: {self.name} must be in [{self.min}, {self.max}], not {value}")
            return value
        if not isinstance(value, str):
            raise SettingsError(f"{where}: {self.name} must be a string, not {value!r}")
        if k == "choice" and value not in self.choices:
            raise SettingsError(f"{where}: {self.name} must be one of {', '.join(self.choices)}, not {value!r}")
        if k == "hostport":
            try:
                parse_hostport(value)
            except ValueError as e:
                raise SettingsError(f"{where}: {self.name} = {value!r}: {e}") from None
        return value


_INT31 = 2**31 - 1

# Settings every door shares: the engine, durability, groups, connections.
SERVER_SETTINGS: tuple[Setting, ...] = (
    Setting("server", "data_dir", "str", "./umlog-data", "Data directory.", flag="--data-dir"),
    Setting("server", "fsync", "choice", "never",
            "Durability of appends: never (page cache), interval (a background fdatasync), "
            "always (acknowledged after a group-committed fdatasync).",
            flag="--fsync", choices=("never", "interval", "always")),
    Setting("server", "max_connections", "int", None,
            "Connections past this, across every door, are accepted and closed at once "
            "[default: half the file descriptors left after opening the data dir].",
            flag="--max-connections", min=1, max=_INT31),
    Setting("server", "idle_timeout_ms", "int", 600_000,
            "Close connections idle this long; 0 never (Kafka's connections.max.idle.ms).",
            flag="--idle-timeout-ms", min=0, max=_INT31),
    Setting("server", "group_initial_rebalance_delay_ms", "int", 3000,
            "How long a new consumer group's first round waits for more members (as Kafka).",
            flag="--group-initial-rebalance-delay-ms", min=0, max=300_000),
    Setting("server", "cleaner_interval_ms", "int", 30_000,
            "How often the background cleaner runs retention and compaction; 0 never "
            "(Kafka's log.retention.check.interval.ms).",
            flag="--cleaner-interval-ms", min=0, max=_INT31),
    Setting("server", "offsets_retention_minutes", "int", 10_080,
            "Committed offsets of a group with no member are deleted this long after its last commit "
            "(or after it became empty, if later); Kafka's offsets.retention.minutes, 7 days.",
            flag="--offsets-retention-minutes", min=1, max=_INT31),
    Setting("server", "offsets_retention_check_interval_ms", "int", 600_000,
            "How often expired offsets are looked for (Kafka's offsets.retention.check.interval.ms).",
            flag="--offsets-retention-check-interval-ms", min=100, max=_INT31),
)


class Settings:
    """Resolved settings: ``s.get("kafka", "listen")``, ``s.table("server")``, and
    ``s.topic_defaults`` (the ``[topics.defaults]`` table, Kafka-named topic configs)."""

    def __init__(self, values: dict[str, dict[str, Any]], topic_defaults: Mapping[str, Any]) -> None:
        self._values = values
        self.topic_defaults = dict(topic_defaults)

    def get(self, table: str, key: str) -> Any:
        return self._values[table][key]

    def table(self, table: str) -> dict[str, Any]:
        return dict(self._values.get(table, {}))

    def __repr__(self) -> str:
        return f"Settings({self._values!r}, topic_defaults={self.topic_defaults!r})"


def load_file(path: str) -> dict[str, Any]:
    """Parse a TOML config file (no checks against declarations yet)."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise SettingsError(f"{path}: cannot read: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(f"{path}: not valid TOML: {e}") from None


def resolve(declared: Iterable[Setting], file_data: Mapping[str, Any] | None = None, file_name: str = "",
            overrides: Mapping[str, Any] | None = None) -> Settings:
    """Defaults, then the file, then ``overrides`` (``{"table.key": value}``; None
    values are flags not given). Every key is checked against ``declared``."""
    declared = list(declared)
    by_table: dict[str, dict[str, Setting]] = {}
    for s in declared:
        by_table.setdefault(s.table, {})[s.key] = s
    values = {t: {k: s.default for k, s in keys.items()} for t, keys in by_table.items()}
    topic_defaults: dict[str, Any] = {}
    where = file_name or "config"
    for table, body in (file_data or {}).items():
        if table == "topics":
            if not isinstance(body, dict) or set(body) - {"defaults"}:
                raise SettingsError(f"{where}: [topics] holds only a [topics.defaults] table")
            topic_defaults = _topic_defaults(body.get("defaults", {}), where)
            continue
        keys = by_table.get(table)
        if keys is None:
            known = ", ".join(sorted([*by_table, "topics"]))
            raise SettingsError(f"{where}: unknown table [{table}] (known: {known})")
        if not isinstance(body, dict):
            raise SettingsError(f"{where}: {table} must be a table ([{table}])")
        for key, value in body.items():
            s = keys.get(key)
            if s is None:
                raise SettingsError(f"{where}: unknown key {table}.{key} (known in [{table}]: "
                                    f"{', '.join(sorted(keys))})")
            values[table][key] = s.check(value, where)
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        table, _, key = name.partition(".")
        s = by_table[table][key]
        values[table][key] = s.check(value, "command line")
    return Settings(values, topic_defaults)


def _topic_defaults(table: Any, where: str) -> dict[str, Any]:
    from umlog.config import TopicConfig
    from umlog.errors import InvalidConfigError

    if not isinstance(table, dict):
        raise SettingsError(f"{where}: topics.defaults must be a table")
    try:
        TopicConfig(table)  # the engine's own checks: names and values
    except InvalidConfigError as e:
        raise SettingsError(f"{where}: topics.defaults: {e}") from None
    return dict(table)


def reference(declared: Iterable[Setting]) -> str:
    """A Markdown table of every setting (README's reference is made from this)."""
    rows = ["| setting | flag | default | meaning |", "| --- | --- | --- | --- |"]
    for s in declared:
        default = "unset" if s.default is None else repr(s.default).replace("'", '"')
        if s.kind == "bool":
            default = str(s.default).lower()
        rows.append(f"| `[{s.table}] {s.key}` | {f'`{s.flag}`' if s.flag else ''} | {default} | {s.help} |")
    return "\n".join(rows)

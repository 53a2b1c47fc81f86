"""The server's settings: each declared once, feeding the flags, the file and the docs.

A ``Setting`` names its table (``server`` or a door's name), its key in the
config file, its type, default and help text, and optionally the command-line
flag that overrides it. ``umlog serve`` builds its click options from these
declarations (``click_options``), ``load_file`` reads ``umlog.toml`` against
them, and ``reference()`` prints them as the documentation table, so a setting
cannot exist in one place and be missing from another.

The file is TOML, one table per door plus ``[server]`` and
``[topics.defaults]``, and arrays of tables for services configured once per
instance (``[[webhook]]``; routes and mirrors later)::

    [server]
    data_dir = "./umlog-data"
    fsync = "always"

    [kafka]
    listen = "127.0.0.1:9092"
    advertise = "kafka.example:9092"

    [topics.defaults]
    "retention.ms" = 86400000

    [[webhook]]
    name = "orders"
    topic = "orders"
    url = "https://example.com/hooks/orders"
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

An array of tables is declared once as ``ArrayOfTables(name, help, settings)``:
its settings are ordinary ``Setting`` s of table ``name`` (marked ``array``),
so they are checked, documented (``[[name]] key`` rows of the reference) and
listed like the others, but have no flags. Each entry is checked on its own
(unknown key, wrong type, a missing ``required`` key: the error names the
entry by its position), gets the defaults of the keys it leaves out, and a
``unique`` key (e.g. ``name``) may not repeat across entries.
``Settings.array(name)`` returns the entries, ``check_entry`` checks one that
comes from elsewhere (the CLI).

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

__all__ = ["Setting", "ArrayOfTables", "SettingsError", "Settings", "SERVER_SETTINGS", "parse_hostport", "load_file",
           "resolve", "check_entry"]


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
    """One setting. ``kind`` is "str", "int", "bool", "hostport", "choice",
    "intpair" (``[min, max]``, two ints in the ``min``/``max`` bounds, the first
    not above the second), "strlist" (a list of strings) or "listeners" (one
    address or a list, each ``SCHEME://HOST:PORT`` with a scheme of ``choices``,
    or a bare ``HOST:PORT``: ``umlog.server.security.settings``); ``default`` None means "unset" (the setting's help
    says what that does). ``array``: a key of each entry of the array of tables
    ``[[table]]`` (see ``ArrayOfTables``); ``required``: an entry must give it;
    ``unique``: no two entries may give the same value; ``off``: the string
    "off" is accepted too and means None (a door that is on by default)."""

    table: str
    key: str
    kind: str
    default: Any
    help: str
    flag: str | None = None
    choices: tuple[str, ...] = ()
    min: int | None = None
    max: int | None = None
    array: bool = False
    required: bool = False
    unique: bool = False
    #: the value "off" is accepted and means unset (None): a door on by default
    #: is turned off with ``listen = "off"`` or ``--http off``
    off: bool = False

    @property
    def name(self) -> str:
        return f"{self.table}.{self.key}"

    @property
    def title(self) -> str:
        """How the docs name it: ``[server] data_dir``, ``[[webhook]] url``."""
        return f"[[{self.table}]] {self.key}" if self.array else f"[{self.table}] {self.key}"

    def check(self, value: Any, where: str) -> Any:
        """The value converted to the setting's type, or a SettingsError naming it."""
        if value is None and self.default is None:
            return None
        if self.off and value == "off":
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
        if k == "intpair":
            if (not isinstance(value, (list, tuple)) or len(value) != 2
                    or any(isinstance(v, bool) or not isinstance(v, int) for v in value)):
                raise SettingsError(f"{where}: {self.name} must be [min, max] (two integers), not {value!r}")
            lo, hi = value
            if (self.min is not None and lo < self.min or self.max is not None and hi > self.max) or lo > hi:
                raise SettingsError(f"{where}: {self.name} must be [min, max] with {self.min} <= min <= max"
                                    f" <= {self.max}, not {list(value)}")
            return [lo, hi]
        if k == "strlist":
            if not isinstance(value, (list, tuple)) or any(not isinstance(v, str) for v in value):
                raise SettingsError(f"{where}: {self.name} must be a list of strings, not {value!r}")
            return list(value)
        if k == "listeners":  # one address or a list; SCHEME://HOST:PORT or HOST:PORT (umlog/server/security)
            from .security.settings import parse_listeners

            if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
                value = list(value)
            elif not isinstance(value, str):
                raise SettingsError(f"{where}: {self.name} must be a string (an address) or a list of "
                                    f"them, not {value!r}")
            try:
                parse_listeners(value, self.choices)
            except ValueError as e:
                raise SettingsError(f"{where}: {self.name}: {e}") from None
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
    # share groups served by the doors (umlog/server/shares.py; Kafka's group.share.* names)
    Setting("server", "share_record_lock_duration_ms", "int", 30_000,
            "How long a record a share-group member acquired stays locked to it "
            "(Kafka's group.share.record.lock.duration.ms).",
            flag="--share-record-lock-duration-ms", min=100, max=3_600_000),
    Setting("server", "share_session_timeout_ms", "int", 45_000,
            "A share-group member without a heartbeat this long is removed and its records released "
            "(Kafka's group.share.session.timeout.ms).",
            flag="--share-session-timeout-ms", min=100, max=_INT31),
    Setting("server", "share_heartbeat_interval_ms", "int", 5_000,
            "Heartbeat interval given to share-group members (Kafka's group.share.heartbeat.interval.ms).",
            flag="--share-heartbeat-interval-ms", min=10, max=_INT31),
    Setting("server", "share_delivery_count_limit", "int", 5,
            "Deliveries of a record before it is dead (Kafka's group.share.delivery.count.limit).",
            flag="--share-delivery-count-limit", min=1, max=1000),
    Setting("server", "share_dead_letter", "str", None,
            "Dead-letter topic of door share groups, {group} replaced by the group's name (e.g. \"{group}.dlq\") "
            "[default: none: rejected and exhausted records are archived].",
            flag="--share-dead-letter"),
    Setting("server", "share_auto_offset_reset", "choice", "latest",
            "Where a new door share group starts in its topics: latest or earliest "
            "(Kafka's share.auto.offset.reset).",
            flag="--share-auto-offset-reset", choices=("latest", "earliest")),
)


@dataclasses.dataclass(frozen=True)
class ArrayOfTables:
    """A TOML array of tables, ``[[name]]``: one entry per configured instance of
    a service (webhooks, routes, mirrors). Iterating it gives its settings,
    marked ``array`` and of table ``name``, so ``[*SERVER_SETTINGS, *WEBHOOKS]``
    is a list of settings like any other (see the module docstring)."""

    name: str
    help: str
    settings: tuple[Setting, ...]
    #: ``check(entry, where)`` -> the entry: checks past each key's own (a URL that
    #: parses, a secret that decodes); raises SettingsError
    check: Any = None
    #: ``check_all(entries, where)``: checks across entries (routes that form a
    #: cycle), after every entry's own; raises SettingsError
    check_all: Any = None

    def __post_init__(self) -> None:
        fixed = tuple(dataclasses.replace(s, table=self.name, array=True, flag=None) for s in self.settings)
        object.__setattr__(self, "settings", fixed)
        if self.check is not None:
            _ENTRY_CHECKS[self.name] = self.check
        if self.check_all is not None:
            _ARRAY_CHECKS[self.name] = self.check_all

    def __iter__(self):
        return iter(self.settings)


class Settings:
    """Resolved settings: ``s.get("kafka", "listen")``, ``s.table("server")``,
    ``s.array("webhook")`` (a list of entries, each a dict with every key), and
    ``s.topic_defaults`` (the ``[topics.defaults]`` table, Kafka-named topic configs)."""

    def __init__(self, values: dict[str, dict[str, Any]], topic_defaults: Mapping[str, Any],
                 arrays: Mapping[str, list[dict[str, Any]]] | None = None) -> None:
        self._values = values
        self._arrays = {k: list(v) for k, v in (arrays or {}).items()}
        self.topic_defaults = dict(topic_defaults)
        #: the tables the config file gave ([security] switches security on by being there)
        self.given: frozenset[str] = frozenset()

    def get(self, table: str, key: str) -> Any:
        return self._values[table][key]

    def table(self, table: str) -> dict[str, Any]:
        return dict(self._values.get(table, {}))

    def array(self, name: str) -> list[dict[str, Any]]:
        return [dict(e) for e in self._arrays.get(name, [])]

    def __repr__(self) -> str:
        return f"Settings({self._values!r}, topic_defaults={self.topic_defaults!r}, arrays={self._arrays!r})"


def check_entry(settings: Iterable[Setting], entry: Any, where: str) -> dict[str, Any]:
    """One entry of an array of tables, checked against its ``settings`` (all of
    one array): unknown keys, types, required keys; defaults filled in."""
    keys = {s.key: s for s in settings}
    if not isinstance(entry, dict):
        raise SettingsError(f"{where}: must be a table, not {entry!r}")
    table = next(iter(keys.values())).table if keys else "?"
    for key in entry:
        if key not in keys:
            raise SettingsError(f"{where}: unknown key {table}.{key} (known in [[{table}]]: "
                                f"{', '.join(sorted(keys))})")
    out = {}
    for key, s in keys.items():
        if key in entry:
            out[key] = s.check(entry[key], where)
        elif s.required:
            raise SettingsError(f"{where}: {table}.{key} is required")
        else:
            out[key] = list(s.default) if isinstance(s.default, (list, tuple)) else s.default
    return out


_ENTRY_CHECKS: dict[str, Any] = {}  # array name -> its ArrayOfTables.check
_ARRAY_CHECKS: dict[str, Any] = {}  # array name -> its ArrayOfTables.check_all


def _check_array(settings: list[Setting], body: Any, where: str) -> list[dict[str, Any]]:
    table = settings[0].table
    if not isinstance(body, list):
        raise SettingsError(f"{where}: {table} must be an array of tables ([[{table}]]), not a single table")
    entries = [check_entry(settings, e, f"{where}: [[{table}]] #{i + 1}") for i, e in enumerate(body)]
    extra = _ENTRY_CHECKS.get(table)
    if extra is not None:
        entries = [extra(e, f"{where}: [[{table}]] #{i + 1}") for i, e in enumerate(entries)]
    for s in settings:
        if s.unique:
            seen: set = set()
            for i, e in enumerate(entries):
                if e[s.key] in seen:
                    raise SettingsError(f"{where}: [[{table}]] #{i + 1}: {s.name} = {e[s.key]!r} is given twice")
                seen.add(e[s.key])
    whole = _ARRAY_CHECKS.get(table)
    if whole is not None:
        whole(entries, where)
    return entries


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
    arrays: dict[str, list[Setting]] = {}
    for s in declared:
        if s.array:
            arrays.setdefault(s.table, []).append(s)
        else:
            by_table.setdefault(s.table, {})[s.key] = s
    values = {t: {k: s.default for k, s in keys.items()} for t, keys in by_table.items()}
    array_values: dict[str, list[dict[str, Any]]] = {t: [] for t in arrays}
    # An array inside a table (``[[mqtt.route]]``): its entries are also that
    # table's key (``table("mqtt")["route"]``), an empty list by default.
    for name in arrays:
        parent, _, key = name.partition(".")
        if key and parent in values:
            values[parent][key] = []
    topic_defaults: dict[str, Any] = {}
    where = file_name or "config"
    for table, body in (file_data or {}).items():
        if table == "topics":
            if not isinstance(body, dict) or set(body) - {"defaults"}:
                raise SettingsError(f"{where}: [topics] holds only a [topics.defaults] table")
            topic_defaults = _topic_defaults(body.get("defaults", {}), where)
            continue
        if table in arrays:
            array_values[table] = _check_array(arrays[table], body, where)
            continue
        keys = by_table.get(table)
        if keys is None:
            known = ", ".join(sorted([*by_table, "topics", *(f"[{a}]" for a in arrays)]))
            raise SettingsError(f"{where}: unknown table [{table}] (known: {known})")
        if not isinstance(body, dict):
            raise SettingsError(f"{where}: {table} must be a table ([{table}])")
        for key, value in body.items():
            if f"{table}.{key}" in arrays:
                values[table][key] = array_values[f"{table}.{key}"] = _check_array(arrays[f"{table}.{key}"], value,
                                                                                  where)
                continue
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
    out = Settings(values, topic_defaults, array_values)
    out.given = frozenset(file_data or ())
    return out


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
        elif s.kind == "intpair" and s.default is not None:
            default = f"[{s.default[0]}, {s.default[1]}]"
        if s.required:
            default = "required"
        rows.append(f"| `{s.title}` | {f'`{s.flag}`' if s.flag else ''} | {default} | {s.help} |")
    return "\n".join(rows)

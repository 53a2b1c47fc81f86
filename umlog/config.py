"""Topic configs under Kafka's names, their defaults and their checks.

A topic stores only its overrides (``DATA/meta/topic-<name>.json``); the
effective config is the defaults updated with them. Every value is validated
when it is set, all at once, so that a bad update changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidConfigError

__all__ = [
    "TOPIC_CONFIGS",
    "TopicConfig",
    "validate_topic_name",
    "validate_overrides",
    "CODECS",
]

MiB = 1 << 20
GiB = 1 << 30
DAY_MS = 86_400_000

# compression.type -> RecordBatch codec id. "producer" keeps what the client
# sent (Kafka's default); for embedded appends it means "none".
CODECS = {"producer": 0, "none": 0, "uncompressed": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


@dataclass(frozen=True)
class _Spec:
    default: Any
    parse: Callable[[Any], Any]
    doc: str


def _int(lo: int | None = None, hi: int | None = None) -> Callable[[Any], int]:
    def parse(v: Any) -> int:
        if isinstance(v, bool):
            raise ValueError("expected an integer, got a boolean")
        if isinstance(v, str):
            v = v.strip()
            if not re.fullmatch(r"-?\d+", v):
                raise ValueError(f"expected an integer, got {v!r}")
        elif not isinstance(v, int):
            raise ValueError(f"expected an integer, got {type(v).__name__}")
        v = int(v)
        if lo is not None and v < lo:
            raise ValueError(f"must be >= {lo}, got {v}")
        if hi is not None and v > hi:
            raise ValueError(f"must be <= {hi}, got {v}")
        return v

    return parse


def _choice(*allowed: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if not isinstance(v, str):
            raise ValueError(f"expected one of {', '.join(allowed)}, got {v!r}")
        s = v.strip()
        if s not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {v!r}")
        return s

    return parse


def _policy(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected delete, compact or compact,delete; got {v!r}")
    parts = sorted({p.strip() for p in v.split(",") if p.strip()})
    if not parts or any(p not in ("compact", "delete") for p in parts):
        raise ValueError(f"expected delete, compact or compact,delete; got {v!r}")
    return ",".join(parts)


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    raise ValueError(f"expected true or false, got {v!r}")


INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1

TOPIC_CONFIGS: dict[str, _Spec] = {
    "segment.bytes": _Spec(GiB, _int(14, INT32_MAX), "roll the active segment at this size"),
    "segment.ms": _Spec(7 * DAY_MS, _int(1, INT64_MAX), "roll the active segment after this age"),
    "segment.index.bytes": _Spec(10 * MiB, _int(4096, INT32_MAX), "preallocated size of each index"),
    "index.interval.bytes": _Spec(4096, _int(0, INT32_MAX), "bytes of log between index entries"),
    "retention.ms": _Spec(7 * DAY_MS, _int(-1, INT64_MAX), "delete closed segments older than this (-1: never)"),
    "retention.bytes": _Spec(-1, _int(-1, INT64_MAX), "delete closed segments past this size (-1: never)"),
    "cleanup.policy": _Spec("delete", _policy, "delete, compact, or compact,delete"),
    "delete.retention.ms": _Spec(DAY_MS, _int(0, INT64_MAX), "keep tombstones this long after compaction"),
    "min.compaction.lag.ms": _Spec(0, _int(0, INT64_MAX), "never compact records younger than this"),
    "compression.type": _Spec("producer", _choice(*CODECS), "codec of stored batches"),
    "message.timestamp.type": _Spec("CreateTime", _choice("CreateTime", "LogAppendTime"), "whose clock stamps records"),
    "max.message.bytes": _Spec(1_048_588, _int(0, INT32_MAX), "largest batch a producer may send"),
    "min.insync.replicas": _Spec(1, _int(1, 1), "single node: always 1"),
    "unclean.leader.election.enable": _Spec(False, _bool, "single node: no effect"),
    "preallocate": _Spec(False, _bool, "accepted for compatibility; no effect"),
    # Tiered storage (umlog/log/tiered.py, KIP-405's names): closed segments are
    # copied to the object store; local.retention.* says how long they also stay
    # on local disk (-2: as long as retention.*).
    "remote.storage.enable": _Spec(False, _bool, "copy closed segments to the object store ([tiered])"),
    "local.retention.ms": _Spec(-2, _int(-2, INT64_MAX), "keep uploaded segments locally this long (-2: retention.ms)"),
    "local.retention.bytes": _Spec(-2, _int(-2, INT64_MAX),
                                   "keep this many bytes of uploaded segments locally (-2: retention.bytes)"),
}


def validate_topic_name(name: Any) -> str:
    """Kafka's rules: 1..249 characters of [a-zA-Z0-9._-], not '.' or '..'."""
    if not isinstance(name, str):
        raise TypeError(f"topic name must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError("topic name is empty")
    if name in (".", ".."):
        raise ValueError(f"topic name cannot be {name!r}")
    if len(name) > 249:
        raise ValueError(f"topic name is {len(name)} characters long; the limit is 249")
    if not re.fullmatch(r"[a-zA-Z0-9._-]+", name):
        raise ValueError(f"topic name {name!r} has characters outside [a-zA-Z0-9._-]")
    return name


def validate_overrides(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Parse every override or raise InvalidConfigError naming the first bad one."""
    out: dict[str, Any] = {}
    for key, raw in (overrides or {}).items():
        spec = TOPIC_CONFIGS.get(key)
        if spec is None:
            raise InvalidConfigError(f"unknown topic config {key!r}")
        try:
            out[key] = spec.parse(raw)
        except ValueError as e:
            raise InvalidConfigError(f"invalid value for {key}: {e}") from None
    return out


class TopicConfig:
    """Effective config of one topic: defaults updated with its overrides.

    ``cfg["segment.bytes"]`` reads a value; ``overrides`` is what is stored.
    """

    __slots__ = ("overrides", "_values")

    def __init__(self, overrides: Mapping[str, Any] | None = None) -> None:
        self.overrides = validate_overrides(overrides)
        self._values = {k: s.default for k, s in TOPIC_CONFIGS.items()}
        self._values.update(self.overrides)
        self._check_tiered()

    def _check_tiered(self) -> None:
        """Kafka's cross-checks: local retention at most the total one, and no
        remote storage for compacted topics."""
        v = self._values
        if v["remote.storage.enable"] and "compact" in v["cleanup.policy"]:
            raise InvalidConfigError("remote.storage.enable=true needs cleanup.policy=delete (compacted topics "
                                     "are not tiered)")
        for kind in ("ms", "bytes"):
            local, total = v[f"local.retention.{kind}"], v[f"retention.{kind}"]
            if local == -1 and total != -1 or local >= 0 and total >= 0 and local > total:
                raise InvalidConfigError(f"local.retention.{kind}={local} must be at most retention.{kind}={total} "
                                         "(-2: the same)")

    def local_retention(self, kind: str) -> int:
        """local.retention.ms or .bytes in effect (-2 resolved to retention.*)."""
        v = self._values[f"local.retention.{kind}"]
        return self._values[f"retention.{kind}"] if v == -2 else v

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def items(self):
        return self._values.items()

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def is_default(self, key: str) -> bool:
        return key not in self.overrides

    def updated(self, set: Mapping[str, Any] | None = None, delete: Any = ()) -> TopicConfig:
        """A new config with ``set`` applied and ``delete`` keys reset; self is unchanged."""
        for key in delete:
            if key not in TOPIC_CONFIGS:
                raise InvalidConfigError(f"unknown topic config {key!r}")
        new = dict(self.overrides)
        for key in delete:
            new.pop(key, None)
        new.update(validate_overrides(set))
        return TopicConfig(new)

    @property
    def codec(self) -> int:
        return CODECS[self._values["compression.type"]]

    @property
    def stored_codec(self) -> int | None:
        """The codec producer-encoded batches are stored in, or None to keep theirs
        (compression.type=producer, Kafka's default)."""
        kind = self._values["compression.type"]
        return None if kind == "producer" else CODECS[kind]

    @property
    def log_append_time(self) -> bool:
        return self._values["message.timestamp.type"] == "LogAppendTime"

    def __repr__(self) -> str:
        return f"TopicConfig({self.overrides!r})"

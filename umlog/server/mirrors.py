"""``[[mirror]]``: mirrors run by ``umlog serve`` (umlog/mirror.py), each a thread
of its own with its own Kafka clients (the source and target may be any
Kafka-protocol cluster, this server included)."""

from __future__ import annotations

import re

from .settings import ArrayOfTables, Setting, SettingsError

__all__ = ["MIRROR_SETTINGS", "mirror_specs", "start_mirrors", "stop_mirrors"]

_INT31 = 2**31 - 1


def _check(entry: dict, where: str) -> dict:
    for key in ("topics", "groups"):
        if entry.get(key) is not None:
            try:
                re.compile(entry[key])
            except re.error as e:
                raise SettingsError(f"{where}: [[mirror]] {key} = {entry[key]!r} is not a regex: {e}") from None
    return entry


MIRROR_SETTINGS = ArrayOfTables("mirror", "Copy topics and consumer-group offsets from one Kafka-protocol cluster "
                                          "to another (README: Mirroring).", (
    Setting("mirror", "name", "str", None, "Mirror name (logs, its source consumer's group) [default: mirror-N].",
            unique=True),
    Setting("mirror", "from", "str", None, "Source bootstrap servers.", required=True),
    Setting("mirror", "to", "str", None, "Target bootstrap servers.", required=True),
    Setting("mirror", "topics", "str", None, "Regex of the source topics to mirror (the whole name).", required=True),
    Setting("mirror", "groups", "str", None,
            "Regex of the consumer groups whose offsets are translated [default: none]."),
    Setting("mirror", "source_alias", "str", "source", "Name of the source in <source>.checkpoints.internal."),
    Setting("mirror", "target_alias", "str", "target", "Name of the target in mm2-offset-syncs.<target>.internal."),
    Setting("mirror", "sync_interval_ms", "int", 1000, "How often offset syncs are written.", min=10, max=_INT31),
    Setting("mirror", "checkpoint_interval_ms", "int", 5000, "How often group offsets are checkpointed.",
            min=10, max=_INT31),
    Setting("mirror", "refresh_interval_ms", "int", 10_000, "How often new source topics are looked for.",
            min=10, max=_INT31),
), check=_check)


def mirror_specs(settings) -> list:
    from umlog.mirror import spec_from_options

    out = []
    for i, e in enumerate(settings.array("mirror")):
        e["name"] = e.get("name") or f"mirror-{i}"
        out.append(spec_from_options(e))
    return out


def start_mirrors(settings) -> list:
    from umlog.mirror import Mirror

    mirrors = [Mirror(s) for s in mirror_specs(settings)]
    for m in mirrors:
        m.start()
    return mirrors


def stop_mirrors(mirrors: list) -> None:
    for m in mirrors:
        m.stop(30)

"""The ``[[route]]`` settings: routing rules ``umlog serve`` runs (``umlog.delivery.route``).

Declarations only (light: the CLI builds its options and the README's table
from them). Every entry is turned into a ``Route`` while the file is checked,
so a bad condition, a route to its own topic, two routes of one name or routes
that form a cycle stop ``umlog serve`` before it opens anything (one line,
exit 2). The runner starts one ``Router`` with them once the hub is bound and
stops it before the broker closes.
"""

from __future__ import annotations

from typing import Any

from .settings import ArrayOfTables, Setting, SettingsError

__all__ = ["ROUTE_SETTINGS", "route_specs"]

_INT31 = 2**31 - 1


def _route(entry: dict[str, Any]):
    from umlog.delivery.route import Route

    return Route(entry["from"], entry["to"], when=entry["when"], name=entry["name"], start=entry["start"],
                 checkpoint_records=entry["checkpoint_records"], checkpoint_ms=entry["checkpoint_ms"])


def _check_route(entry: dict[str, Any], where: str) -> dict[str, Any]:
    from umlog.delivery.route import RouteError

    try:
        r = _route(entry)
    except RouteError as e:
        raise SettingsError(f"{where}: {' '.join(str(e).split())}") from None
    return {**entry, "name": r.name}  # the derived name, so that two unnamed routes of one pair clash


def _check_routes(entries: list[dict[str, Any]], where: str) -> None:
    from umlog.delivery.route import RouteError, check_routes

    try:
        check_routes(_route(e) for e in entries)
    except RouteError as e:
        raise SettingsError(f"{where}: [[route]]: {' '.join(str(e).split())}") from None


ROUTE_SETTINGS = ArrayOfTables("route", "Copy the records of a topic that match a condition to another topic "
                                        "(README: Routing rules).", (
    Setting("route", "name", "str", None,
            "Route name; its checkpoints are group umlog.route.NAME [default: FROM->TO].", unique=True),
    Setting("route", "from", "str", None, "Source topic.", required=True),
    Setting("route", "to", "str", None,
            "Target topic (created with the source's partition count if missing); never the source.", required=True),
    Setting("route", "when", "str", None,
            "JMESPath condition over {key, value, headers, topic, partition, offset, timestamp} [default: every "
            "record]."),
    Setting("route", "start", "choice", "latest",
            "Where a new route starts in its source: latest (records appended from now) or earliest.",
            choices=("latest", "earliest")),
    Setting("route", "checkpoint_records", "int", 1000,
            "Checkpoint a source partition after this many records read...", min=1, max=_INT31),
    Setting("route", "checkpoint_ms", "int", 100, "...or this long after its first record not checkpointed.",
            min=1, max=_INT31),
), check=_check_route, check_all=_check_routes)


def route_specs(settings) -> list:
    """The config file's routes as ``Route`` s (checked when the file was read)."""
    return [_route(e) for e in settings.array("route")]

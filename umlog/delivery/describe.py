"""What a share group's state says, for people: ``ShareGroup.describe`` and
``umlog share-groups``. Read-only; works on a read-only broker beside the
writer, from what it has written to ``__share_group_state``.

Per partition: ``start_offset`` (everything below is done), ``end_offset`` of
the log, ``fetched`` (the window's end), the count of window entries in each
state, ``unacked`` (records from the start offset to the log's end that are
neither acked nor archived, fetched or not), the delivery counts of the
unsettled entries (``{count: records}``) and the age of the oldest unacked
record (now minus its timestamp; None when there is none).
"""

from __future__ import annotations

import time

from ..errors import OffsetOutOfRangeError, UnknownTopicError
from .state import DONE, STATE_NAMES, Window, decode_window

__all__ = ["describe_windows", "describe_group", "list_groups"]


def _oldest_unacked(p, w: Window) -> int | None:
    """Offset of the first record at or after ``w.start`` that is not done."""
    o = w.start
    while o < w.end:
        e = w.entries.get(o)
        if e is not None and e.state not in DONE:
            return o
        o += 1
    return o if o < p.end_offset else None


def _timestamp_at(p, offset: int) -> int | None:
    try:
        for r in p.read(max(offset, p.start_offset), max_records=1):
            return r.timestamp
    except OffsetOutOfRangeError:
        return None
    return None


def describe_windows(broker, name: str, windows: list[Window], now_ms: int | None = None) -> dict:
    now = int(time.time() * 1000) if now_ms is None else now_ms
    rows = []
    for w in sorted(windows, key=lambda w: (w.topic, w.partition)):
        states = dict.fromkeys(STATE_NAMES, 0)
        counts: dict[int, int] = {}
        for e in w.entries.values():
            states[STATE_NAMES[e.state]] += 1
            if e.state not in DONE:
                counts[e.count] = counts.get(e.count, 0) + 1
        end = age = None
        unacked = sum(1 for e in w.entries.values() if e.state not in DONE)
        try:
            p = broker.topic(w.topic).partitions[w.partition]
            if not p.writable:
                p.refresh()
            end = p.end_offset
            unacked += max(0, end - max(w.end, w.start))
            o = _oldest_unacked(p, w)
            ts = None if o is None else _timestamp_at(p, o)
            age = None if ts is None else max(0, now - ts)
        except (UnknownTopicError, IndexError):
            pass
        rows.append({"topic": w.topic, "partition": w.partition, "start_offset": w.start, "fetched": w.end,
                     "end_offset": end, "in_flight": states["acquired"], "available": states["available"],
                     "acked": states["acked"], "archived": states["archived"] + states["dead_pending"],
                     "unacked": unacked, "delivery_counts": dict(sorted(counts.items())),
                     "oldest_unacked_age_ms": age})
    ages = [r["oldest_unacked_age_ms"] for r in rows if r["oldest_unacked_age_ms"] is not None]
    return {"group": name, "partitions": rows, "in_flight": sum(r["in_flight"] for r in rows),
            "unacked": sum(r["unacked"] for r in rows), "oldest_unacked_age_ms": max(ages) if ages else None}


def _store(broker):
    from .store import ShareStateStore

    share = getattr(broker, "_share", None)
    return share.store if share is not None else ShareStateStore(broker)


def describe_group(broker, name: str, now_ms: int | None = None) -> dict | None:
    """The saved state of share group ``name`` (None: no such group). Acquired
    records show as available here: locks are not written (see ``state.py``)."""
    values = _store(broker).group_values(name)
    if not values:
        return None
    return describe_windows(broker, name, [decode_window(t, p, v) for (t, p), v in values.items()], now_ms)


def list_groups(broker, now_ms: int | None = None) -> list[dict]:
    out = []
    for g in _store(broker).groups():
        d = describe_group(broker, g, now_ms)
        if d is not None:
            out.append({"group": g, "topics": sorted({r["topic"] for r in d["partitions"]}),
                        "partitions": len(d["partitions"]), "unacked": d["unacked"],
                        "oldest_unacked_age_ms": d["oldest_unacked_age_ms"]})
    return out

"""Shared by the share-group tests: a fake clock and the dead letters of a topic."""

from __future__ import annotations


class FakeClock:
    """Seconds, as time.time(); ``advance(s)`` is the only way time passes."""

    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    @property
    def ms(self) -> int:
        return int(self.now * 1000)


def dead_letters(b, topic: str) -> list:
    """Every record of a dead-letter topic, with its DLT headers decoded."""
    out = []
    t = b.topic(topic)
    for p in t.partitions:
        for r in p.read(0):
            h = dict(r.headers)
            out.append({
                "topic": h["kafka_dlt-original-topic"].decode(),
                "partition": int.from_bytes(h["kafka_dlt-original-partition"], "big", signed=True),
                "offset": int.from_bytes(h["kafka_dlt-original-offset"], "big", signed=True),
                "timestamp": int.from_bytes(h["kafka_dlt-original-timestamp"], "big", signed=True),
                "reason": h["kafka_dlt-exception-message"].decode(),
                "count": int(h["umlog-delivery-count"].decode()),
                "key": r.key, "value": r.value, "headers": r.headers,
            })
    return out

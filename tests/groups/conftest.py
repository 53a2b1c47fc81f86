"""Fixtures for the consumer-group tests: a broker on a fresh data dir, and a
fake clock whose timers fire only when the test moves time on."""

from __future__ import annotations

import heapq
import itertools

import pytest

import umlog


class FakeTimer:
    __slots__ = ("when", "fn", "cancelled")

    def __init__(self, when, fn):
        self.when = when
        self.fn = fn
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


class FakeScheduler:
    """``time()`` and ``call_at()`` for the coordinator; ``advance(dt)`` runs the
    timers due on the way, each at its own time, in order."""

    def __init__(self, now: float = 1000.0):
        self.now = now
        self._heap = []
        self._seq = itertools.count()

    def time(self):
        return self.now

    def call_at(self, when, fn):
        t = FakeTimer(when, fn)
        heapq.heappush(self._heap, (when, next(self._seq), t))
        return t

    def pending(self):
        return sum(1 for _, _, t in self._heap if not t.cancelled)

    def advance(self, dt: float):
        target = self.now + dt
        fired_at, same = None, 0
        while self._heap and self._heap[0][0] <= target:
            when, _, t = heapq.heappop(self._heap)
            if t.cancelled:
                continue
            self.now = max(self.now, when)
            same = same + 1 if self.now == fired_at else 0
            fired_at = self.now
            if same > 1000:
                raise RuntimeError(f"timers keep firing at t={self.now}: a deadline in the past is never handled")
            t.fn()
        self.now = target


@pytest.fixture
def sched():
    return FakeScheduler()


@pytest.fixture
def broker(data_dir):
    b = umlog.open(data_dir)
    yield b
    b.close()

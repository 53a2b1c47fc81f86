"""Fixtures for the share-group tests: a broker on a fresh data dir and a fake
clock that moves only when the test moves it (wall and monotonic alike)."""

from __future__ import annotations

import pytest
from delivery.share_helpers import FakeClock

import umlog


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def broker(data_dir):
    b = umlog.open(data_dir, cleaner_interval_ms=None)
    yield b
    b.close()

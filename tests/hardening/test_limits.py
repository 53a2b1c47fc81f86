"""Limits of ``umlog serve``: request size, connections, idle timeout, memory with many idle
connections and with slow consumers (tools/limits.py measures; here with assertions)."""

from __future__ import annotations

import asyncio

import limits  # tools/, put on sys.path by conftest.py
import pytest

import umlog
from umlog.server.kafka import KafkaDoor, KafkaProtocol

pytestmark = pytest.mark.clients


def test_max_request_size_closes_only_the_oversized_request(tmp_path):
    r = limits.max_request_size(str(tmp_path), limit=65536)
    assert r == {"limit": 65536, "under_limit_error_code": 0, "over_limit_closed": True, "log_lines": 1}


def test_max_connections_refuses_politely_and_recovers(tmp_path):
    r = limits.max_connections(str(tmp_path), limit=12)
    assert r["extra_refused"] and r["log_lines"] == 1, r


def test_idle_connections_are_closed_but_not_busy_ones_or_long_polls(tmp_path):
    r = limits.idle_timeout(str(tmp_path), ms=400)
    assert r["silent_closed_after_s"] is not None and 0.3 < r["silent_closed_after_s"] < 2.0, r
    assert r["busy_kept"] and r["long_poll_answered"], r


def test_1000_idle_connections_cost_little_memory(tmp_path):
    r = limits.idle_connections(str(tmp_path), n=1000)
    print(r)
    # Measured ~2 KiB each (protocol object, task, buffers); 40 MB is a loose bound.
    assert r["rss_after_mb"] - r["rss_before_mb"] < 40, r


def test_slow_consumers_do_not_grow_memory(tmp_path):
    """8 connections x 200 Fetches for a 64 MiB partition, never read: each answer is
    capped by --fetch-max-bytes and only one per connection is in flight (measured
    peak +9 MB; with the cap at 1 GB the same run peaks at +500 MB)."""
    r = limits.slow_consumers(str(tmp_path), conns=8, requests=200, data_mb=64, fetch_max_bytes=1 << 20)
    print(r)
    assert r["rss_peak_mb"] - r["rss_before_mb"] < 64, r


class _Transport:
    def __init__(self) -> None:
        self.paused = False
        self.written: list = []

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 1)}.get(name, default)

    def pause_reading(self):
        self.paused = True

    def resume_reading(self):
        self.paused = False

    def writelines(self, pieces):
        self.written.extend(pieces)

    def close(self):
        pass

    abort = close


async def test_reading_pauses_while_the_client_does_not_read(tmp_path):
    with umlog.open(str(tmp_path / "data")) as b:
        door = KafkaDoor(b)
        proto = KafkaProtocol(door)
        tr = _Transport()
        proto.connection_made(tr)
        proto.pause_writing()  # the transport's buffer is over its high-water mark
        assert tr.paused
        proto.resume_writing()
        assert not tr.paused
        proto.connection_lost(None)
        await asyncio.sleep(0)


async def test_refused_connection_gets_no_task(tmp_path):
    with umlog.open(str(tmp_path / "data")) as b:
        door = KafkaDoor(b, max_connections=1)
        first, second = KafkaProtocol(door), KafkaProtocol(door)
        first.connection_made(_Transport())
        second.connection_made(_Transport())
        assert door.connections == {first} and second._task is None and door.refused_total == 1
        first.connection_lost(None)
        await asyncio.sleep(0)

"""Real Kafka clients driven at random against a real ``umlog serve``: a one-minute run of
tools/fuzz_clients.py (the long one is ``-m fuzz``). The rule it keeps: whatever a client
is driven into (offsets out of range, retention under it, its topic deleted and created
again), no client logs a protocol error, every consumer recovers, the server never fails
and no acknowledged record is lost. Every deadline of the run is scaled."""

from __future__ import annotations

import os

import fuzz_clients  # tools/, put on sys.path by conftest.py
import pytest
from helpers import scaled

pytestmark = pytest.mark.clients

pytest.importorskip("confluent_kafka")


def _checked(r: dict) -> int:
    return sum(v for k, v in r.items() if k.startswith("first_checked:"))


def test_fuzz_clients_short_run(tmp_path):
    """A minute of random actions with a fixed seed (UMLOG_FUZZ_SEED to change it);
    every invariant of fuzz_clients.run holds."""
    r = fuzz_clients.run(str(tmp_path), seconds=float(os.environ.get("UMLOG_FUZZ_SECONDS", "60")),
                         seed=int(os.environ.get("UMLOG_FUZZ_SEED", "1")), scale=scaled(1), log=print)
    print(r)
    assert r["protocol_errors"] == 0 and r["acked_checked"] > 0 and r["consumed_checked"] > 0, r
    assert _checked(r) > 0, r


@pytest.mark.fuzz
def test_fuzz_clients_long_run(tmp_path):
    r = fuzz_clients.run(str(tmp_path), seconds=float(os.environ.get("UMLOG_FUZZ_SECONDS", "300")),
                         scale=scaled(1), log=print)
    print(r)

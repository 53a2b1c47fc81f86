"""Soak: producers and consumer-group consumers against ``umlog serve``, checked end to end
(tools/soak.py). The suite runs SOAK_SECONDS (default 60) with a consumer restarted every
15 s; ``-m slow`` runs ten minutes."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soak  # tools/, put on sys.path by conftest.py

pytestmark = pytest.mark.clients
pytest.importorskip("confluent_kafka")


def test_compare_counts_losses_moves_duplicates():
    """The checker itself: each kind of discrepancy is counted."""
    p0 = np.array([[0, 0, 0], [0, 1, 1], [1, 0, 2], [1, 1, 3]], np.int64)  # partition, offset, seq
    p1 = np.array([[0, 2, 0]], np.int64)
    consumed = [
        np.array([[0, 0, 0, 0, 0], [0, 1, 0, 1, 0], [1, 0, 0, 2, 0]], np.int64),  # partition, offset, producer, seq
        np.array([[1, 0, 0, 2, 0], [0, 2, 0, 9, 0], [2, 5, 1, 7, 0]], np.int64),  # a duplicate, a moved, an unacked
    ]
    r = soak.compare([p0, p1], consumed)
    assert r == {"acked": 5, "consumed": 6, "lost": 1, "moved": 1, "duplicates": 1, "unacked_consumed": 1,
                 "double_acked": 0}
    assert soak.compare([p0, p0[:1]], [])["double_acked"] == 1


def test_soak(tmp_path):
    seconds = float(os.environ.get("SOAK_SECONDS", "60"))
    r = soak.run(str(tmp_path), seconds=seconds, producers=2, consumers=3, partitions=6, rate=5000,
                 churn=15, log=print)
    print(r)
    assert r["lost"] == 0 and r["moved"] == 0 and r["double_acked"] == 0
    assert r["unacked_consumed"] == 0 and r["failed_deliveries"] == 0
    assert r["acked"] >= 0.8 * 2 * 5000 * seconds, r  # the producers kept their pace
    assert r["churned"] >= 1 or seconds < 16


@pytest.mark.slow
@pytest.mark.timeout(1200)  # 600 s of traffic, then the end-to-end check
def test_soak_long(tmp_path):
    r = soak.run(str(tmp_path), seconds=600, producers=3, consumers=4, partitions=12, rate=20000, churn=30,
                 log=print)
    print(r)
    assert r["lost"] == 0 and r["moved"] == 0

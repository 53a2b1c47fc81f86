"""``umlog serve`` SIGKILLed under librdkafka producers: nothing acknowledged is lost or moved.

The driver is tools/crash_kafka.py (see its docstring for what is checked);
here it runs 2-3 short cycles per mode, paced so the read-back stays small.
"""

from __future__ import annotations

import pytest

pytest.importorskip("confluent_kafka")

import crash_kafka  # tools/, put on sys.path by conftest.py

pytestmark = pytest.mark.clients


def _run(tmp_path, **kw):
    r = crash_kafka.run(str(tmp_path), partitions=3, producers=2, rate=4000, min_up=0.6, max_up=1.2,
                        log=lambda *a: None, **kw)
    print(r)
    assert r["lost"] == 0 and r["moved"] == 0
    assert r["acked"] > 1000, r  # the producers did get through the kills
    assert r["failed_deliveries"] == 0, r
    assert not r["traceback_in_log"]
    return r


def test_fsync_always_acks_all_idempotent_survives_sigkill(tmp_path):
    # 1 MiB segments: the batches in flight at a kill straddle rolls. Their
    # retries are recognised by the partitions' producer state (snapshot at
    # the roll, the batches after it replayed), so nothing is stored twice.
    r = _run(tmp_path, cycles=3, fsync="always", acks="all", tear=False, seed=6, segment_bytes=1 << 20)
    assert r["duplicates"] == 0 and r["epoch_bumps"] == 0, r


def test_fsync_never_acks_1_loses_nothing_written(tmp_path):
    _run(tmp_path, cycles=2, fsync="never", acks="1", seed=7)


def test_torn_tails_are_cut_and_never_served(tmp_path):
    """Torn writes appended after every kill (tear_tails) must be cut off by
    recovery: the consumer (check.crcs) and the data-dir scan see none."""
    r = _run(tmp_path, cycles=2, fsync="always", acks="all", seed=8)
    assert r["tails_torn"] > 0, r


@pytest.mark.slow
@pytest.mark.timeout(1200)  # 15 cycles of ~2 s plus the read-back of ~3M records; ~2 min measured
def test_crash_loop_long(tmp_path):
    r = crash_kafka.run(str(tmp_path), cycles=15, fsync="always", acks="all", partitions=8, producers=3,
                        segment_bytes=1 << 20, log=lambda *a: None)
    print(r)
    assert r["lost"] == 0 and r["moved"] == 0 and r["duplicates"] == 0

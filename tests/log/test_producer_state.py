"""Idempotent producers' state kept by the storage: it survives rolls, clean
closes and crashes, and always equals the last batches of each producer's
current epoch among what the log holds."""

from __future__ import annotations

import os
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

import umlog
from umlog._native.core import encode_batch
from umlog.log.producer_state import BATCHES_KEPT, ProducerStateManager

from .test_recovery import crash

CONFIG = {"segment.bytes": 4000, "index.interval.bytes": 200}


def _batch(pid: int, epoch: int, seq: int, n: int) -> bytearray:
    return bytearray(encode_batch([b"v%d" % i * 20 for i in range(n)], producer_id=pid, producer_epoch=epoch,
                                  base_sequence=seq))


def _state(p) -> dict:
    return {pid: (e.epoch, [(b.first_seq, b.last_seq, b.base_offset, b.last_offset) for b in e.batches])
            for pid, e in p.producer_state.producers.items()}


def _model(appended) -> dict:
    """The last BATCHES_KEPT batches of each producer's newest epoch."""
    out: dict = {}
    for pid, epoch, first, last, base, last_off in appended:
        cur = out.get(pid)
        if cur is None or epoch > cur[0]:
            cur = out[pid] = (epoch, [])
        cur[1].append((first, last, base, last_off))
        del cur[1][:-BATCHES_KEPT]
    return out


@settings(max_examples=25)
@given(ops=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1), st.integers(1, 5), st.sampled_from(
    ["append", "append", "append", "roll", "close", "crash"])), min_size=1, max_size=40))
def test_state_equals_the_model_across_rolls_closes_and_crashes(tmp_path_factory, ops):
    path = str(tmp_path_factory.mktemp("ps") / "data")
    b = umlog.open(path)
    b.create_topic("t", config=CONFIG)
    seqs: dict = {}
    appended = []
    try:
        for pid, bump, n, op in ops:
            p = b.topic("t").partition(0)
            if op == "append":
                epoch, seq = seqs.get(pid, (0, 0))
                if bump:
                    epoch, seq = epoch + 1, 0
                _ = p.producer_state  # loaded before the append, or replayed after it: both must agree
                base, last, _ = p.append_batches(_batch(pid, epoch, seq, n))
                appended.append((pid, epoch, seq, seq + n - 1, base, last))
                seqs[pid] = (epoch, seq + n)
            elif op == "roll":
                p.roll()
            else:
                b.flush()  # what was appended is on disk either way; a crash cuts nothing here
                if op == "close":
                    b.close()
                else:
                    crash(b)
                b = umlog.open(path)
            assert _state(b.topic("t").partition(0)) == _model(appended)
    finally:
        b.close()


def test_a_retry_after_a_roll_and_a_crash_is_found_in_the_state(tmp_path):
    path = str(tmp_path / "data")
    b = umlog.open(path)
    p = b.create_topic("t", config=CONFIG).partition(0)
    assert p.producer_state.entry(7) is None
    for seq in range(0, 60, 3):
        p.append_batches(_batch(7, 0, seq, 3))
    assert len(p.segments) >= 2  # the last batches straddle a roll (a snapshot there)
    b.flush()
    crash(b)
    b = umlog.open(path)
    try:
        e = b.topic("t").partition(0).producer_state.entry(7)
        assert [(x.first_seq, x.base_offset) for x in e.batches] == [(s, s) for s in range(45, 60, 3)]
    finally:
        b.close()
    snaps = sorted(n for n in os.listdir(os.path.join(path, "t-0")) if n.endswith(".snapshot"))
    assert snaps and snaps[-1] == f"{60:020d}.snapshot"  # the close wrote the end's snapshot


def test_a_torn_snapshot_is_dropped_and_the_log_replayed(tmp_path):
    path = str(tmp_path / "data")
    with umlog.open(path) as b:
        p = b.create_topic("t", config=CONFIG).partition(0)
        _ = p.producer_state
        for seq in range(0, 30, 3):
            p.append_batches(_batch(3, 1, seq, 3))
    d = os.path.join(path, "t-0")
    newest = sorted(n for n in os.listdir(d) if n.endswith(".snapshot"))[-1]
    with open(os.path.join(d, newest), "r+b") as f:
        f.seek(14)
        f.write(b"\xff")
    with umlog.open(path) as b:
        e = b.topic("t").partition(0).producer_state.entry(3)
        assert e.epoch == 1 and e.batches[-1].first_seq == 27
    with open(os.path.join(d, newest), "rb") as f:  # dropped at the load, written whole again at the close
        assert ProducerStateManager.decode(f.read())[3].batches[-1].first_seq == 27


def test_snapshot_codec_round_trips_and_refuses_damage(tmp_path):
    m = ProducerStateManager(str(tmp_path))
    m.update(1, 0, 0, 4, 10, 14, -1)
    m.update(1, 0, 5, 5, 15, 15, 1234)
    m.update(2**40, 3, 2**31 - 2, 1, 100, 103, -1)
    data = m.encode()
    got = ProducerStateManager.decode(data)
    assert {k: (e.epoch, [(b.first_seq, b.last_seq, b.base_offset, b.last_offset, b.timestamp) for b in e.batches])
            for k, e in got.items()} == {1: (0, [(0, 4, 10, 14, -1), (5, 5, 15, 15, 1234)]),
                                         2**40: (3, [(2**31 - 2, 1, 100, 103, -1)])}
    for bad in (data[:-1], data + b"\0", data[:8], b"XXXX" + data[4:], data[:12] + bytes([data[12] ^ 1]) + data[13:]):
        try:
            ProducerStateManager.decode(bad)
        except (ValueError, struct.error):
            continue
        raise AssertionError(f"accepted damaged snapshot {bad!r}")

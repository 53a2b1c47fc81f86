"""Delayed delivery across crashes: at any point (between an intent and its
batch, inside a round of the scheduler, before or after a checkpoint), every
delayed record that was stored is delivered exactly once, and nothing else."""

from __future__ import annotations

import collections
import subprocess
import sys
import textwrap

from delivery.share_helpers import FakeClock
from helpers import scaled, subprocess_env, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from log.test_recovery import crash

import umlog
from umlog._native.core import encode_batch


def hard_stop(b) -> None:
    """SIGKILL, as far as one process can: the scheduler stops mid-way (no
    checkpoint), its index is left as committed, then the engine's crash."""
    s = b.hooks.delay.scheduler
    if s is not None:
        s.stop()
        s.db.close()
    crash(b)


def open_(path, clock):
    b = umlog.open(path, cleaner_interval_ms=None, delay_clock=clock)
    s = b.hooks.delay.scheduler
    if s is not None:
        s.stop()  # the test runs the rounds
    return b


ops = st.lists(st.one_of(
    st.tuples(st.just("produce"), st.integers(1, 6), st.integers(0, 2**16)),
    st.tuples(st.just("torn"), st.integers(1, 4), st.integers(0, 2**16)),
    st.tuples(st.just("advance"), st.integers(0, 3000)),
    st.tuples(st.sampled_from(["intake", "release", "deliver", "checkpoint", "round", "crash"])),
), min_size=1, max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(ops)
def test_crashes_at_random_points(tmp_path_factory, script):
    path = str(tmp_path_factory.mktemp("d") / "data")
    clock = FakeClock()
    b = open_(path, clock)
    t = b.create_topic("t", partitions=2)
    stored: list[bytes] = []  # delayed values whose batch is stored
    plain: list[bytes] = []
    n = 0
    try:
        for op in script:
            kind = op[0]
            s = b.hooks.delay.scheduler
            if kind in ("produce", "torn"):
                k, seed = op[1], op[2]
                vals, hs, delayed = [], [], []
                for j in range(k):
                    v = b"v%d" % n
                    n += 1
                    vals.append(v)
                    if (seed >> j) & 1:
                        hs.append([("umlog-delay-ms", b"%d" % ((seed >> 8) % 4000))])
                        delayed.append(v)
                    else:
                        hs.append(None)
                p = t.partition(seed % 2)
                batch = encode_batch(vals, None, hs)
                if kind == "torn" and delayed:
                    # killed between the intents and the batch: the batch is not
                    # stored, its producer never answered; it sends it again
                    seg = p.active
                    hook = b.hooks.delay

                    def boom(*a):
                        raise OSError("killed")
                    seg.append_batches, hook.abort = boom, lambda w: None
                    try:
                        p.append_batches(bytearray(batch))
                    except OSError:
                        pass
                    del seg.append_batches, hook.abort
                    hard_stop(b)
                    b = open_(path, clock)
                    t = b.topic("t")
                    p = t.partition(seed % 2)
                p.append_batches(bytearray(batch))
                stored += delayed
                plain += [v for v in vals if v not in delayed]
            elif kind == "advance":
                clock.advance(op[1] / 1000)
            elif kind == "crash":
                hard_stop(b)
                b = open_(path, clock)
                t = b.topic("t")
            elif s is None:
                continue
            elif kind == "intake":
                with s._lock:
                    s._intake()
            elif kind == "release":
                with s._lock:
                    s._release(clock.ms)
            elif kind == "deliver":
                with s._lock:
                    s._deliver()
            elif kind == "checkpoint":
                s.checkpoint()
            elif kind == "round":
                s.run_once()
        clock.advance(10)
        s = b.hooks.delay.scheduler
        if s is not None:
            s.run_once()
            assert s.pending() == 0
        got = [r.value for i in range(2) for r in t.partition(i).read(0)]
        assert sorted(got) == sorted(stored + plain)
    finally:
        b.close()


CHILD = textwrap.dedent("""
    import sys, umlog
    b = umlog.open(sys.argv[1], fsync="never")
    t = b.topic("t") if "t" in b.topics() else b.create_topic("t", partitions=2)
    i = int(sys.argv[2])
    while True:
        if i % 3:  # a delayed record goes to its partition's log at once, an intent
            t.append(b"%d" % i, headers=[("umlog-delay-ms", b"%d" % (i % 7 * 40))], partition=i % 2)
        else:  # written before the line (a per-record append waits for its batch)
            t.partition(i % 2).append_many([b"%d" % i])
        print(i, flush=True)
        i += 1
""")


def test_sigkill_of_a_writer_process(tmp_path):
    """A writer appending delayed and plain records, and delivering due ones, is
    killed twice; after a restart each acknowledged record is there once."""
    data = str(tmp_path / "data")
    acked: set[int] = set()
    for start in (0, 1_000_000):  # a killed child's last record may be stored but not printed: no reuse
        child = subprocess.Popen([sys.executable, "-c", CHILD, data, str(start)], stdout=subprocess.PIPE,
                                 env=subprocess_env(), cwd=tmp_path)
        lines = []
        try:
            while len(lines) < 1500:
                line = child.stdout.readline()
                assert line, f"the child ended early (exit {child.wait(scaled(10))})"
                lines.append(int(line))
        finally:
            child.kill()
            rest = child.stdout.read()
            child.stdout.close()
            child.wait(scaled(30))
        lines += [int(x) for x in rest.split()]
        acked.update(lines)
    with umlog.open(data, cleaner_interval_ms=None) as b:
        t = b.topic("t")

        def got():
            return [int(r.value) for i in range(2) for r in t.partition(i).read(0)]
        wait_until(lambda: acked <= set(got()) and b.hooks.delay.scheduler.pending() == 0, 30,
                   "every acknowledged record delivered")
        vals = got()
        dup = sorted(v for v, c in collections.Counter(vals).items() if c > 1)
        assert not dup, f"delivered twice: {dup[:10]}"

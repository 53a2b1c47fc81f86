"""Opening many partitions after an unclean stop recovers only the tails, cheaply.

History: the indexes were mapped with ``pyarrow.memory_map``, whose
``read_buffer()`` madvise(WILLNEED)s the whole preallocated 10 MiB index (5 ms
each: 19 s to open 1,000 partitions), and the entry count was found by probing
through the map, which faults in 64 KiB around every probe (1.3 GB of RSS for
1,000 partitions opened after a crash). tools/startup_time.py measures the
times; these tests pin the memory and the amount of work.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import subprocess_env

import umlog

PARTITIONS = 300

WRITE_THEN_DIE = r"""
import os, sys, umlog
b = umlog.open(sys.argv[1])
for t in range(3):
    topic = b.create_topic("t%d" % t, partitions=100)
    for p in range(100):
        topic.append_many([b"v" * 100] * 50, partition=p)
b.flush()
os._exit(0)  # no close: no .clean, active indexes left preallocated
"""

OPEN_AND_MEASURE = r"""
import sys, umlog
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
before = rss()
b = umlog.open(sys.argv[1])
grown = rss() - before
assert not b.was_clean
ends = sum(p.end_offset for t in b.topics() for p in b.topic(t).partitions)
b.close()
print(grown, ends)
"""


def _run(script: str, *args: str) -> str:
    r = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300,
                       env=subprocess_env(), cwd=os.path.dirname(args[0]))
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_unclean_open_of_300_partitions_keeps_rss_small(data_dir):
    _run(WRITE_THEN_DIE, data_dir)
    index = os.path.join(data_dir, "t0-0", "0" * 20 + ".index")
    assert os.path.getsize(index) == 10 << 20  # preallocated, as a crash leaves it
    grown_kb, ends = map(int, _run(OPEN_AND_MEASURE, data_dir).split())
    assert ends == PARTITIONS * 50
    # Probing the preallocated indexes through the map cost ~660 KiB each
    # (~400 MB here); reading them with pread costs nothing resident.
    assert grown_kb < 60 * 1024, f"opening {PARTITIONS} partitions grew RSS by {grown_kb} KiB"


def test_index_map_is_not_read_ahead(data_dir, monkeypatch):
    """The index is mapped without madvise(WILLNEED) over its preallocated size:
    Python's mmap wrapped as a pyarrow buffer, not pyarrow.memory_map."""
    import pyarrow as pa

    def refuse(*a, **k):
        raise AssertionError("pyarrow.memory_map reads the whole index ahead (WILLNEED)")

    monkeypatch.setattr(pa, "memory_map", refuse)
    with umlog.open(data_dir) as b:
        t = b.create_topic("t", config={"index.interval.bytes": 100})
        for _ in range(100):
            t.append_many([b"x" * 200], partition=0)  # one batch each
        p = t.partition(0)
        assert p.active.offset_index.entries > 10
        assert [r.offset for r in p.read(50, max_records=3)] == [50, 51, 52]
    with umlog.open(data_dir, readonly=True) as b:
        assert [r.value for r in b.topic("t").partition(0).read(99)] == [b"x" * 200]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_startup_with_1000_partitions_clean_and_unclean(tmp_path):
    """tools/startup_time.py at its default size (10 topics x 100 partitions)."""
    import startup_time

    r = startup_time.run(str(tmp_path), log=lambda *a: None)
    assert r["partitions"] == 1000 and r["batches_checked"] >= 2000
    print(r)

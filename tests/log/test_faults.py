"""The engine under failing writes: ENOSPC on the log, on the index, on a real full
file system, and failures half-way through creating partitions.

The contract: a failed append raises (OSError) and leaves nothing half-written
that a reader or a restart could see; offsets stay dense (the next successful
append takes the next offset); once the disk takes writes again the partition
carries on by itself, with no reopen.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import uuid

import pytest
from helpers import subprocess_env

import umlog
from umlog._native.core import encode_batch, scan_batches
from umlog.log import index as index_mod
from umlog.log import segment as segment_mod


class Faults:
    """Make the next ``n`` calls of a write function fail with ENOSPC (optionally after
    writing ``partial`` bytes, as a short write on a full disk does)."""

    def __init__(self, monkeypatch, module, name: str) -> None:
        self.left = 0
        self.partial = 0
        self.hits = 0
        real = getattr(module, name)

        def faulty(fd, data, *a):
            if self.left > 0:
                self.left -= 1
                self.hits += 1
                if self.partial:
                    os.write(fd, memoryview(data)[: self.partial])
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            return real(fd, data, *a)

        monkeypatch.setattr(module, name, faulty)

    def arm(self, n: int = 1, partial: int = 0) -> None:
        self.left, self.partial = n, partial


@pytest.fixture
def log_faults(monkeypatch):
    return Faults(monkeypatch, segment_mod, "write_all")


def scan(p) -> list[int]:
    """Base offsets of every batch in the partition's files, checked with CRCs and contiguity."""
    bases = []
    expect = p.start_offset
    for seg in p.segments:
        data = seg.read(0, seg.size)
        res = scan_batches(data, 0, len(data), expect, True)
        assert res.error is None and res.valid_end == len(data), (seg, res.error)
        bases += [int(b) for b in res.base_offsets]
        expect = res.next_offset
    return bases


def values(p) -> list[bytes]:
    return [r.value for r in p.read(p.start_offset)]


@pytest.mark.parametrize("partial", [0, 1, 30])
def test_append_batches_enospc_stores_nothing_and_recovers(data_dir, log_faults, partial):
    with umlog.open(data_dir) as b:
        p = b.create_topic("t").partition(0)
        assert p.append_batches(encode_batch([b"a", b"b"]))[:2] == (0, 1)
        log_faults.arm(3, partial)
        for _ in range(3):
            with pytest.raises(OSError) as e:
                p.append_batches(encode_batch([b"lost"]))
            assert e.value.errno == errno.ENOSPC
        assert p.end_offset == 2 and p.active.size == os.path.getsize(p.active.log_path)
        assert values(p) == [b"a", b"b"]
        assert p.append_batches(encode_batch([b"c"]))[:2] == (2, 2)  # no gap
        assert values(p) == [b"a", b"b", b"c"]
        assert scan(p) == [0, 2]
    with umlog.open(data_dir) as b:
        assert values(b.topic("t").partition(0)) == [b"a", b"b", b"c"]


def test_append_many_enospc_midway_keeps_what_was_written(data_dir, log_faults, monkeypatch):
    monkeypatch.setattr("umlog.log.partition.APPEND_MANY_BATCH", 2)
    with umlog.open(data_dir) as b:
        p = b.create_topic("t").partition(0)
        real = segment_mod.write_all
        calls = []

        def second_fails(fd, data):
            calls.append(len(data))
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, "injected")
            return real(fd, data)

        monkeypatch.setattr(segment_mod, "write_all", second_fails)
        with pytest.raises(OSError):
            p.append_many([b"1", b"2", b"3", b"4", b"5"])
        # The first batch (offsets 0-1) was written and stays; nothing after it.
        assert p.end_offset == 2 and values(p) == [b"1", b"2"]
        monkeypatch.setattr(segment_mod, "write_all", real)
        assert p.append_many([b"6"]) == range(2, 3)
        assert values(p) == [b"1", b"2", b"6"] and scan(p) == [0, 2]


def test_sealed_batch_that_failed_is_written_first_when_space_returns(data_dir, log_faults):
    """Per-record appends already gave out offsets: a seal that fails keeps the batch
    (_unwritten) and writes it before anything else once the disk takes it."""
    with umlog.open(data_dir, linger_ms=10_000) as b:
        t = b.create_topic("t")
        p = t.partition(0)
        mds = [t.append(b"r%d" % i, partition=0) for i in range(5)]
        assert [m.offset for m in mds] == list(range(5))
        log_faults.arm(2)
        with pytest.raises(OSError):
            p.seal()
        with pytest.raises(OSError):  # the kept batch is retried first, and fails again
            p.append_batches(encode_batch([b"x"]))
        assert p.active.size == 0
        assert p.append_batches(encode_batch([b"y"]))[:2] == (5, 5)
        assert values(p) == [b"r0", b"r1", b"r2", b"r3", b"r4", b"y"]
        assert scan(p) == [0, 5]


def test_index_enospc_fails_before_the_log_write(data_dir, monkeypatch):
    """The index's disk blocks are reserved before the batch is written: a full disk
    there fails the append with the log untouched (never a batch without its entry)."""
    with umlog.open(data_dir) as b:
        p = b.create_topic("t", config={"index.interval.bytes": 10}).partition(0)
        for i in range(3):
            p.append_batches(encode_batch([b"v%d" % i]))
        seg = p.active
        assert seg.offset_index.entries >= 1
        left = [1]
        real = index_mod._fallocate

        def full(fd, offset, length):
            if left[0]:
                left[0] -= 1
                raise OSError(errno.ENOSPC, "injected")
            return real(fd, offset, length)

        monkeypatch.setattr(index_mod, "_fallocate", full)
        # Force a reservation past what is reserved so far.
        seg.offset_index._reserved = seg.offset_index.entries * 8
        size, entries = seg.size, seg.offset_index.entries
        with pytest.raises(OSError):
            p.append_batches(encode_batch([b"lost"]))
        assert (seg.size, seg.offset_index.entries, p.end_offset) == (size, entries, 3)
        p.append_batches(encode_batch([b"v3"]))
        assert values(p) == [b"v0", b"v1", b"v2", b"v3"]
        assert seg.offset_index.entries == entries + 1


def test_create_topic_failing_midway_leaves_nothing(data_dir, monkeypatch):
    import umlog.broker as broker_mod

    real = broker_mod.Partition
    opened = []

    def sixth_fails(directory, *a, **kw):
        if len(opened) == 5:
            raise OSError(errno.EMFILE, "Too many open files (injected)")
        p = real(directory, *a, **kw)
        opened.append(p)
        return p

    with umlog.open(data_dir) as b:
        b.create_topic("keep").append(b"x", partition=0)
        monkeypatch.setattr(broker_mod, "Partition", sixth_fails)
        with pytest.raises(OSError):
            b.create_topic("big", partitions=10)
        assert "big" not in b.topics()
        assert not [n for n in os.listdir(data_dir) if n.startswith("big")]
        assert all(s.fd == -1 for p in opened for s in p.segments)  # closed again
        monkeypatch.setattr(broker_mod, "Partition", real)
        opened.clear()
        with pytest.raises(OSError):
            monkeypatch.setattr(broker_mod, "Partition", sixth_fails)
            b.add_partitions("keep", 20)
        monkeypatch.setattr(broker_mod, "Partition", real)
        assert b.topic("keep").num_partitions == 1
        assert sorted(n for n in os.listdir(data_dir) if n.startswith("keep")) == ["keep-0"]
        b.add_partitions("keep", 3)
    with umlog.open(data_dir) as b:  # and it opens again
        assert b.topic("keep").num_partitions == 3 and "big" not in b.topics()


def test_partition_dirs_of_an_unfinished_add_partitions_are_removed_on_open(data_dir):
    """add_partitions creates directories, then writes the meta: a crash between the two
    must not stop the data dir from opening (those partitions were never announced)."""
    with umlog.open(data_dir) as b:
        b.create_topic("t", partitions=2)
    for i in (2, 3):
        os.makedirs(os.path.join(data_dir, f"t-{i}"))
        open(os.path.join(data_dir, f"t-{i}", "0" * 20 + ".log"), "wb").close()
    with umlog.open(data_dir) as b:
        assert b.topic("t").num_partitions == 2
    assert sorted(n for n in os.listdir(data_dir) if n.startswith("t-")) == ["t-0", "t-1"]
    os.makedirs(os.path.join(data_dir, "stranger-0"))
    with pytest.raises(umlog.DataDirError):  # a directory of no known topic is still refused
        umlog.open(data_dir)


# --- a real full file system (tmpfs; needs root, else skipped) --------------------------------


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs, unmounted afterwards."""
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


FILL_THE_DISK = r"""
import errno, os, sys, umlog
from umlog._native.core import encode_batch
data, spare = sys.argv[1], sys.argv[2]
b = umlog.open(data)
# Small segments and an index entry per batch: new index pages are needed all the time.
t = b.create_topic("t", partitions=2, config={"segment.bytes": 4096, "index.interval.bytes": 0,
                                               "segment.index.bytes": 65536})
acked = {0: [], 1: []}
spares = sorted(os.listdir(spare))
failures = 0
i = 0
while True:
    part = i % 2
    try:
        base, last, _ = t.partition(part).append_batches(encode_batch([b"%d-" % i + b"x" * 150]))
        acked[part].append((base, i))
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
        failures += 1
        if not spares:
            break
        os.unlink(os.path.join(spare, spares.pop()))  # one page back: run out again, elsewhere
    i += 1
os.unlink(os.path.join(os.path.dirname(data), "ballast"))  # space is back
for j in range(i, i + 50):
    part = j % 2
    base, last, _ = t.partition(part).append_batches(encode_batch([b"%d-" % j + b"x" * 150]))
    acked[part].append((base, j))
for part in (0, 1):
    p = t.partition(part)
    got = {r.offset: r.value for r in p.read(0)}
    assert sorted(got) == list(range(p.end_offset)), "offsets are not dense"
    for base, n in acked[part]:
        assert got[base] == b"%d-" % n + b"x" * 150
print("ok", sum(len(v) for v in acked.values()), failures)
b.close()
"""


def test_full_tmpfs_never_sigbus_and_recovers_when_space_returns(small_fs):
    data = os.path.join(small_fs, "data")
    spare = os.path.join(small_fs, "spare")
    os.makedirs(spare)
    for i in range(150):  # pages given back one at a time once the disk is full
        with open(os.path.join(spare, f"{i:03d}"), "wb") as f:
            f.write(b"\1" * 4096)
    with open(os.path.join(small_fs, "ballast"), "wb") as f:
        f.write(b"\0" * (3 << 20))
    r = subprocess.run([sys.executable, "-c", FILL_THE_DISK, data, spare], capture_output=True, text=True,
                       timeout=120, env=subprocess_env(), cwd=small_fs)
    assert r.returncode == 0, f"exit {r.returncode} (-7 is SIGBUS)\n{r.stdout}\n{r.stderr}"
    assert r.stdout.startswith("ok "), r.stdout
    with umlog.open(data) as b:  # and a reopen agrees
        for p in b.topic("t").partitions:
            assert scan(p) and [r.offset for r in p.read(0)] == list(range(p.end_offset))
    shutil.rmtree(data)


def test_roll_that_cannot_create_its_segment_changes_nothing(data_dir, monkeypatch):
    """Found reading the failure paths: the old segment was made inactive (indexes
    trimmed and unmapped) before the new one was created; when the creation failed
    (EMFILE, ENOSPC), the next append wrote into the inactive segment and failed on
    its index after the log write, offsets not advanced."""
    import umlog.log.partition as partition_mod

    with umlog.open(data_dir) as b:
        p = b.create_topic("t", config={"segment.bytes": 300, "index.interval.bytes": 0}).partition(0)
        p.append_batches(encode_batch([b"x" * 100]))
        p.append_batches(encode_batch([b"x" * 100]))
        real = partition_mod.LogSegment
        fails = [2]

        def segment(*a, **kw):
            if kw.get("create") and fails[0]:
                fails[0] -= 1
                raise OSError(errno.EMFILE, "Too many open files (injected)")
            return real(*a, **kw)

        monkeypatch.setattr(partition_mod, "LogSegment", segment)
        before = list(p.segments)
        for _ in range(2):
            with pytest.raises(OSError):
                p.append_batches(encode_batch([b"y" * 100]))  # needs a roll
        assert p.segments == before and p.active.active and p.end_offset == 2
        for i in range(4):
            p.append_batches(encode_batch([b"z%d" % i]))
        assert len(p.segments) > len(before) and p.end_offset == 6
        assert values(p) == [b"x" * 100, b"x" * 100, b"z0", b"z1", b"z2", b"z3"]
        assert scan(p) == [0, 1, 2, 3, 4, 5]
    with umlog.open(data_dir) as b:
        assert values(b.topic("t").partition(0))[-1] == b"z3"

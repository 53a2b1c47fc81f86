"""Power loss: what was acknowledged survives a cut of the power, over a file system that forgets the rest.

A SIGKILL keeps the page cache, so tests/hardening/test_crash.py cannot tell
an fdatasync from none. Here the data dir is on tools/powerloss_fs.py, a FUSE
file system that holds every write and every directory entry until its
fsync (the entry: the directory's fsync) and drops whatever is unsynced when
the test cuts the power. Each cycle: a writer runs, reporting every
acknowledgement as it returns; the power is cut at a seeded moment (a number
of acknowledgements); the writer is killed; the FS is mounted again with the
durable state only, and the data dir is opened with ``umlog.open``. Then:

* every acknowledged record is at its offset with its bytes (unless
  retention deleted its segment or compaction kept a later record of its
  key), every acknowledged topic exists;
* reading every partition never raises (no torn or corrupt batch served),
  and after a clean close every segment scans whole with CRCs;
* the log takes appends at the offsets that follow.

Writers: the embedded API (tools/powerloss_writer.py: ``append``,
``append_many``, topics created mid-run, 4 KiB segments, compaction and
retention) with ``fsync="always"`` and ``"interval"`` (where only the last
``interval_ms`` plus a scaled slack may be lost), and ``umlog serve --fsync
always`` under confluent-kafka idempotent producers with acks=all. Two tests
prove the FS bites: ``fsync="never"`` loses acknowledged records, and so
does ``fsync="always"`` with umlog's directory fsyncs disabled.

Needs /dev/fuse, fusermount (Debian fuse3), libfuse2 and mfusepy: skipped
without them, except under CI=true, where a skip would hide a missing install
step, so it fails.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import powerloss_fs  # tools/, put on sys.path by conftest.py
import pytest
from harness import check_data_dir
from helpers import scaled, subprocess_env, wait_until


def interval_slack() -> float:
    """How late the interval flusher may be on a busy machine (a descheduled thread, a slow FUSE round trip)."""
    return scaled(1.0)


WRITER = os.path.join(os.path.dirname(os.path.abspath(powerloss_fs.__file__)), "powerloss_writer.py")


def _require_fuse() -> None:
    why = powerloss_fs.fuse_unavailable()
    if why is None:
        return
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"FUSE is needed for the power-loss tests and CI must have it: {why}")
    pytest.skip(f"no FUSE here: {why}")


@pytest.fixture
def disk(tmp_path):
    """A power-loss mount: backing folder and mount point in tmp_path; always unmounted."""
    _require_fuse()
    fs = powerloss_fs.PowerLossMount(str(tmp_path / "disk"), str(tmp_path / "mnt"), timeout=scaled(30),
                                     log_path=str(tmp_path / "powerloss_fs.log"))
    try:
        fs.mount()
        yield fs
    finally:
        fs.close()
        assert not os.path.ismount(fs.mountpoint)


class Writer:
    """tools/powerloss_writer.py in a child; every acknowledgement it reports, collected by a thread."""

    def __init__(self, data: str, log_path: str, *args: str) -> None:
        self.lines: list[str] = []
        self.done = False
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, WRITER, data, *args], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=log, env=subprocess_env(),
                                         cwd=os.path.dirname(log_path))
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            line = raw.decode().rstrip("\n")
            if line == "D":
                self.done = True
            self.lines.append(line)

    def acks(self) -> int:
        return sum(1 for line in self.lines if line.startswith("A "))

    def progress(self, n: int):
        """True once n records are acknowledged; fails early if the writer died."""
        if self.proc.poll() is not None and not self.done:
            raise AssertionError(f"writer exited {self.proc.returncode}: {self.log_tail()}")
        return self.acks() >= n

    def log_tail(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-3000:]

    def finish(self) -> list[str]:
        """EOF on its stdin: the writer closes the broker cleanly and exits; every line it wrote."""
        self.proc.stdin.close()
        assert self.proc.wait(scaled(60)) == 0, self.log_tail()
        self.reader.join(scaled(30))
        return list(self.lines)

    def kill(self) -> list[str]:
        """SIGKILL, then every line it wrote (the pipe read to its end)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.reader.join(scaled(30))
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        self.proc.stdout.close()
        return list(self.lines)


class Ledger:
    """What was acknowledged: records by (topic, partition), topics created."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, int], list[tuple[int, bytes | None, bytes, float]]] = {}
        self.topics: set[str] = set()

    def add(self, lines: list[str]) -> None:
        for line in lines:
            f = line.split(" ")
            if f[0] == "A":
                key = None if f[4] == "-" else f[4].encode()
                self.records.setdefault((f[1], int(f[2])), []).append((int(f[3]), key, f[5].encode(), float(f[6])))
            elif f[0] == "T":
                self.topics.add(f[1])

    def count(self) -> int:
        return sum(len(v) for v in self.records.values())


def verify(data: str, ledger: Ledger, *, lost_ok_after: float | None = None) -> dict:
    """Open the recovered data dir and check it against the ledger (see the module docstring).

    ``lost_ok_after``: acknowledgements at or after this monotonic time may be
    missing (fsync="interval"). Returns {"lost": [...], "checked": n}.
    """
    import umlog
    from umlog.errors import CorruptBatchError

    lost, checked = [], 0
    b = umlog.open(data, fsync="always", cleaner_interval_ms=None)
    try:
        have = set(b.topics())
        for name in sorted(ledger.topics - have):
            lost.append(f"topic {name}")
        expected_next = {}
        for name in sorted(have):
            t = b.topic(name)
            compacted = "compact" in str(t.config["cleanup.policy"])
            for p in t.partitions:
                records, last_of_key = {}, {}
                try:
                    for r in p.read(p.start_offset):
                        records[r.offset] = r.value
                        if r.key is not None:
                            last_of_key[r.key] = r.offset
                except CorruptBatchError as e:
                    raise AssertionError(f"{name}-{p.index}: a corrupt batch was served after recovery: {e}") from e
                kept = []
                for offset, key, value, t_ack in ledger.records.get((name, p.index), []):
                    checked += 1
                    if lost_ok_after is not None and t_ack >= lost_ok_after and records.get(offset) != value:
                        continue  # within the interval: may be lost, and is forgotten (its offset is reused)
                    kept.append((offset, key, value, t_ack))
                    if records.get(offset) == value:
                        continue
                    if offset < p.start_offset and not compacted:
                        continue  # retention deleted its segment
                    if compacted and key is not None and last_of_key.get(key, -1) > offset:
                        continue  # compaction kept a later record of its key
                    lost.append(f"{name}-{p.index}@{offset} {value[:24]!r} (acked, "
                                f"{'absent' if offset not in records else 'other bytes'})")
                if (name, p.index) in ledger.records:
                    ledger.records[(name, p.index)] = kept
                expected_next[(name, p.index)] = p.end_offset
        for (name, index), end in sorted(expected_next.items()):  # still writable, at the offsets that follow
            md = b.topic(name).append(b"after-power-loss", key=b"k0", partition=index)
            assert md.offset == end, (name, index, md.offset, end)
            got = [r.value for r in b.topic(name).partition(index).read(md.offset)]
            assert got == [b"after-power-loss"], (name, index, got)
    finally:
        b.close()
    check_data_dir(data)  # a clean close: every segment whole, CRCs valid, offsets dense
    return {"lost": lost, "checked": checked}


def _cut_report(report: dict) -> str:
    entries = [f"{e['dir'].rstrip('/')}/{e['name']} ({e['lost']})" for e in report["entries"]]
    return f"{len(report['files'])} files with unsynced data; entries not durable: {entries}"


def run_embedded(disk, tmp_path, *, seed: int, cycles: int, fsync: str = "always", interval_ms: int = 1000,
                 min_acks: int = 30, max_acks: int = 600, extra: tuple = ()) -> dict:
    """Writer / cut / remount / verify cycles on one data dir; the ledger grows across cycles."""
    rnd = random.Random(seed)
    data = os.path.join(disk.mountpoint, "data")
    ledger = Ledger()
    out = {"cycles": [], "lost": []}
    for cycle in range(cycles):
        target = rnd.randint(min_acks, max_acks)
        started = ledger.count()
        w = Writer(data, str(tmp_path / f"writer-{cycle}.log"), "--seed", str(seed), "--cycle", str(cycle),
                   "--fsync", fsync, "--interval-ms", str(interval_ms), *extra)
        try:
            wait_until(lambda w=w, n=target: w.progress(n), 120, f"{target} acknowledgements", interval=0.005)
            if fsync == "interval":
                # Let the flusher run a few times, so there are records old enough to be checked.
                t_first = float(w.lines[[line[0] for line in w.lines].index("A")].split(" ")[6])
                horizon = interval_ms / 1000 + interval_slack()
                old_enough = t_first + horizon + 0.5
                wait_until(lambda w=w, n=target, t=old_enough: time.monotonic() > t and w.progress(n), horizon + 60,
                           "records older than the flush interval")
            t_cut = time.monotonic()
            report = disk.cut()
        finally:
            lines = w.kill()
        ledger.add(lines)
        disk.remount()
        lost_ok_after = None
        if fsync == "interval":
            # The flusher syncs every interval_ms; a loaded machine delays it.
            lost_ok_after = t_cut - interval_ms / 1000 - interval_slack()
        res = verify(data, ledger, lost_ok_after=lost_ok_after)
        out["cycles"].append({"acked": ledger.count() - started, "checked": res["checked"],
                              "lost": len(res["lost"]), "cut": _cut_report(report)})
        out["lost"] += res["lost"]
        if res["lost"]:
            break
    return out


# -- fsync="always": nothing acknowledged is lost --------------------------------------------------------


def test_embedded_fsync_always_survives_power_loss(disk, tmp_path):
    r = run_embedded(disk, tmp_path, seed=11, cycles=3)
    print(r)
    assert not r["lost"], r
    assert sum(c["acked"] for c in r["cycles"]) >= 90


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("seed", range(5))
def test_embedded_fsync_always_power_loss_long(disk, tmp_path, seed):
    r = run_embedded(disk, tmp_path, seed=100 + seed, cycles=10, min_acks=10, max_acks=3000)
    print(r)
    assert not r["lost"], r


# -- fsync="interval": at most the last interval is lost ----------------------------------------------


def test_embedded_fsync_interval_loses_at_most_the_interval(disk, tmp_path):
    r = run_embedded(disk, tmp_path, seed=21, cycles=2, fsync="interval", interval_ms=100,
                     min_acks=50, max_acks=300)
    print(r)
    assert not r["lost"], r


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_embedded_fsync_interval_long(disk, tmp_path):
    r = run_embedded(disk, tmp_path, seed=22, cycles=8, fsync="interval", interval_ms=200,
                     min_acks=10, max_acks=3000)
    print(r)
    assert not r["lost"], r


# -- proof that the file system bites ------------------------------------------------------------------


def _write_then_cut(disk, tmp_path, *args: str, prepare: bool = False) -> tuple[Ledger, dict]:
    """A writer that does 400 operations and waits (files open): cut, kill, remount.

    ``prepare``: first a normal writer makes the data dir and closes it cleanly
    (everything durable), so what the cut drops is only what the second one did.
    """
    data = os.path.join(disk.mountpoint, "data")
    ledger = Ledger()
    if prepare:
        w = Writer(data, str(tmp_path / "prepare.log"), "--seed", "4", "--fsync", "always", "--ops", "100")
        try:
            wait_until(lambda: w.progress(0) and w.done, 120, "the first writer's 100 operations")
            ledger.add(w.finish())
        finally:
            w.kill()
    w = Writer(data, str(tmp_path / "writer.log"), "--seed", "5", "--cycle", "1", "--ops", "400", *args)
    try:
        wait_until(lambda: w.progress(0) and w.done, 120, "the writer's 400 operations")
        report = disk.cut()
    finally:
        lines = w.kill()
    ledger.add(lines)
    disk.remount()
    return ledger, report


def test_fsync_never_loses_acknowledged_records(disk, tmp_path):
    """Nothing is ever fsync'd: the power cut takes every acknowledged record
    (the data dir's entries included). If this passed with nothing lost, the
    file system would not be simulating power loss."""
    ledger, report = _write_then_cut(disk, tmp_path, "--fsync", "never")
    assert ledger.count() > 200
    assert report["files"], report
    if not os.path.isdir(os.path.join(disk.mountpoint, "data")):
        return  # the data dir's own entry was never made durable: all of it is gone
    res = verify(os.path.join(disk.mountpoint, "data"), ledger)
    assert len(res["lost"]) > 0, res


def test_missing_directory_fsyncs_lose_acknowledged_records(disk, tmp_path):
    """fsync="always" with umlog's directory fsyncs disabled: each record's
    fdatasync ran, but the new files' (and folders') entries were never made
    durable, so after the cut the rolled segments are gone. The FS reports
    which entries it dropped."""
    ledger, report = _write_then_cut(disk, tmp_path, "--fsync", "always", "--no-dir-fsync", prepare=True)
    dropped = [f"{e['dir'].rstrip('/')}/{e['name']}" for e in report["entries"] if e["lost"] == "created"]
    assert any(d.endswith(".log") for d in dropped), report  # rolled segments
    assert any(d.startswith("/data/dyn1_") for d in dropped), report  # topics created by the second writer
    lost = verify(os.path.join(disk.mountpoint, "data"), ledger)["lost"]
    print(f"{len(dropped)} entries dropped, e.g. {dropped[:6]}; {len(lost)} acknowledged records lost, e.g. {lost[:6]}")
    assert any(x.startswith("topic dyn1_") for x in lost), lost
    assert any(not x.startswith("topic") for x in lost), lost  # records of rolled segments


# -- umlog serve --fsync always under librdkafka -------------------------------------------------------


@pytest.mark.clients
def test_serve_fsync_always_acks_all_survives_power_loss(disk, tmp_path):
    pytest.importorskip("confluent_kafka")
    import crash_kafka
    from confluent_kafka.admin import AdminClient, NewTopic
    from harness import Server

    rnd = random.Random(31)
    data = os.path.join(disk.mountpoint, "data")
    ledger = Ledger()
    partitions, size = 3, 100
    for cycle in range(2):
        server = Server(data, "--fsync", "always", port=0, log_path=str(tmp_path / f"server-{cycle}.log"))
        threads = []
        try:
            server.start(timeout=scaled(60))
            if cycle == 0:
                admin = AdminClient({"bootstrap.servers": server.bootstrap, "log_level": 2})
                config = {"segment.bytes": "16384"}
                admin.create_topics([NewTopic(crash_kafka.TOPIC, num_partitions=partitions, replication_factor=1,
                                              config=config)])[crash_kafka.TOPIC].result(scaled(30))
                ledger.topics.add(crash_kafka.TOPIC)
            threads = [crash_kafka.ProducerThread(i + 10 * cycle, server.bootstrap, partitions, "all", True, size,
                                                  rate=1500) for i in range(2)]
            for t in threads:
                t.start()
            target = rnd.randint(300, 2000)
            wait_until(lambda ts=threads, n=target: sum(len(t.acked) for t in ts) >= n, 120, f"{target} deliveries")
            report = disk.cut()
            server.kill()  # no delivery report can come after this
        finally:
            server.kill()
            for t in threads:
                t.stop_event.set()
                t.join(scaled(30))
                t.p.purge()
                t.p.poll(0)
        for t in threads:
            for p, offset, seq in t.acked:
                ledger.records.setdefault((crash_kafka.TOPIC, p), []).append(
                    (offset, None, crash_kafka._value(t.index, seq, size), 0.0))
        disk.remount()
        res = verify(data, ledger)
        print(f"cycle {cycle}: {ledger.count()} acked, {_cut_report(report)}")
        assert not res["lost"], res["lost"][:20]

"""The embedded writer of the power-loss tests: appends, reporting each acknowledgement the moment it returns.

Run as a child of tests/hardening/test_powerloss.py with its data dir on a
tools/powerloss_fs.py mount. It opens (or recovers) the data dir, then runs a
seeded mix of operations and writes one line to stdout per call that
returned, before making the next call, so the parent knows every
acknowledged record whatever instant the power is cut:

* ``A <topic> <partition> <offset> <key or -> <value> <t>``: a record
  acknowledged (``append``, or each record of an ``append_many``), ``t`` the
  ``time.monotonic()`` just after the call returned (the same clock in every
  process: the interval test compares it with the moment of the cut);
* ``T <topic> <partitions>``: ``create_topic`` returned;
* ``C <topic>`` / ``R <topic>``: a compaction / retention pass returned;
* ``D``: ``--ops`` operations done; the writer then waits for EOF on stdin
  (its files stay open, the data in the page cache).

The topics: ``plain`` (2 partitions), ``kv`` (compacted, 16 keys), ``ret``
(``retention.bytes`` 8 KiB), all with 4 KiB segments so they roll every few
dozen records, and ``dyn<cycle>_<n>`` topics created along the way. Values
are ``<topic>/<cycle>/<seq>/`` plus padding: unique across cycles, no blanks.

``--no-dir-fsync`` replaces umlog's ``fsync_dir`` by a no-op everywhere: the
proof that the file system catches a missing directory fsync.

Usage (by hand, on a mount)::

    python tools/powerloss_writer.py MOUNT/data --seed 1 --fsync always --ops 2000
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

SEGMENT = 4096
FIXED = {
    "plain": (2, {"segment.bytes": SEGMENT}),
    "kv": (2, {"segment.bytes": SEGMENT, "cleanup.policy": "compact"}),
    "ret": (2, {"segment.bytes": SEGMENT, "retention.bytes": 2 * SEGMENT}),
}
KEYS = 16


def _say(line: str) -> None:
    os.write(1, (line + "\n").encode())  # one write: a line is whole or absent


def _disable_dir_fsyncs() -> None:
    import umlog.log.files

    def no_fsync_dir(path: str) -> None:
        return None

    real = umlog.log.files.fsync_dir
    for name, mod in list(sys.modules.items()):
        if name.startswith("umlog") and getattr(mod, "fsync_dir", None) is real:
            mod.fsync_dir = no_fsync_dir


def run(data: str, *, seed: int, cycle: int, fsync: str, interval_ms: int, ops: int, no_dir_fsync: bool) -> None:
    import umlog

    if no_dir_fsync:
        _disable_dir_fsyncs()
    rnd = random.Random(seed * 1000 + cycle)
    b = umlog.open(data, fsync=fsync, interval_ms=interval_ms, cleaner_interval_ms=None)
    existing = set(b.topics())
    for name, (parts, config) in FIXED.items():
        if name not in existing:
            b.create_topic(name, parts, config=config)
            _say(f"T {name} {parts}")
    plainish = sorted(t for t in b.topics() if t not in ("kv", "ret"))
    seq = 0

    def value(topic: str) -> bytes:
        nonlocal seq
        seq += 1
        return b"%s/%d/%d/" % (topic.encode(), cycle, seq) + b"x" * rnd.randint(0, 300)

    def acked(topic: str, partition: int, offset: int, key, val: bytes, t: float) -> None:
        _say(f"A {topic} {partition} {offset} {key.decode() if key else '-'} {val.decode()} {t:.6f}")

    created = 0
    for i in range(1, ops + 1):
        r = rnd.random()
        if i % 150 == 0:
            created += 1
            name = f"dyn{cycle}_{created}"
            parts = rnd.randint(1, 2)
            b.create_topic(name, parts, config={"segment.bytes": SEGMENT})
            _say(f"T {name} {parts}")
            plainish.append(name)
        elif i % 97 == 0:
            b.compact("kv")
            _say("C kv")
        elif i % 89 == 0:
            b.run_retention("ret")
            _say("R ret")
        elif r < 0.45:
            topic = rnd.choice(plainish)
            t = b.topic(topic)
            v = value(topic)
            md = t.append(v, partition=rnd.randrange(t.num_partitions))
            acked(topic, md.partition, md.offset, None, v, time.monotonic())
        elif r < 0.6:
            t = b.topic("plain")
            p = rnd.randrange(t.num_partitions)
            vals = [value("plain") for _ in range(rnd.randint(1, 16))]
            offsets = t.append_many(vals, partition=p)
            now = time.monotonic()
            for o, v in zip(offsets, vals):
                acked("plain", p, o, None, v, now)
        elif r < 0.85:
            key = b"k%d" % rnd.randrange(KEYS)
            v = value("kv")
            md = b.topic("kv").append(v, key=key)
            acked("kv", md.partition, md.offset, key, v, time.monotonic())
        else:
            t = b.topic("ret")
            v = value("ret")
            md = t.append(v, partition=rnd.randrange(t.num_partitions))
            acked("ret", md.partition, md.offset, None, v, time.monotonic())
    _say("D")
    sys.stdin.read()  # the parent cuts the power while the files are open, then kills us
    b.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cycle", type=int, default=0)
    ap.add_argument("--fsync", default="always", choices=("always", "interval", "never"))
    ap.add_argument("--interval-ms", type=int, default=1000)
    ap.add_argument("--ops", type=int, default=1_000_000)
    ap.add_argument("--no-dir-fsync", action="store_true")
    a = ap.parse_args(argv)
    run(a.data, seed=a.seed, cycle=a.cycle, fsync=a.fsync, interval_ms=a.interval_ms, ops=a.ops,
        no_dir_fsync=a.no_dir_fsync)
    return 0


if __name__ == "__main__":
    sys.exit(main())

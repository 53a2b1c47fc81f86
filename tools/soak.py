"""Soak: N producers and M group consumers against ``umlog serve`` for a while, checked end to end.

Producers (confluent-kafka, acks=all, idempotent, each its own process) send
records "<producer>:<seq>" for ``--seconds`` and remember every delivery
report: (partition, offset, producer, seq). Consumers (confluent-kafka,
``group.id`` + ``subscribe``: consumer groups, automatic commits, each its own
process) read until the producers are done and nothing new came for
``--drain`` seconds. With ``--churn S`` one consumer is stopped (SIGTERM: it
closes, committing) and a fresh one started every S seconds, so the group
rebalances under load.

Checks, at the end: every acknowledged record was consumed, at the offset it
was acknowledged at (``lost`` counts those that were not); ``duplicates``
counts records consumed more than once (at-least-once delivery: expected only
around rebalances, between a consumer's last commit and its partitions moving);
``unacked_consumed`` counts records consumed that no delivery report
acknowledged (a retry whose first try was stored after all: should be 0 with
idempotence). Prints throughput, the server's CPU per million records and
its RSS, and the counts; exits 1 if anything was lost.

Usage::

    python tools/soak.py --seconds 60                                  # 2 producers, 3 consumers
    python tools/soak.py --seconds 600 --producers 4 --consumers 6 --partitions 12 --churn 20
"""

from __future__ import annotations

import argparse
import array
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import Server, check_data_dir, child_env

TOPIC = "soak"
GROUP = "soak-group"


# --- child roles ----------------------------------------------------------------------------


def producer_main(bootstrap: str, index: int, seconds: float, rate: int, size: int, out: str) -> None:
    from confluent_kafka import Producer

    acked = array.array("q")  # partition, offset, seq triples
    stats = {"failed": 0, "sent": 0, "errors": {}}

    def report(err, msg):
        if err is not None:
            stats["failed"] += 1
            stats["errors"][err.name()] = stats["errors"].get(err.name(), 0) + 1
            return
        seq = int(msg.value().split(b":", 2)[1])
        acked.extend((msg.partition(), msg.offset(), seq))

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "linger.ms": 5,
                  "message.timeout.ms": 120_000, "log_level": 2})
    pad = b"x" * max(0, size - 16)
    t0 = time.monotonic()
    seq = 0
    while True:
        now = time.monotonic() - t0
        if now >= seconds:
            break
        if rate and seq >= rate * now:
            p.poll(0.005)
            continue
        try:
            p.produce(TOPIC, b"%d:%d:" % (index, seq) + pad, on_delivery=report)
        except BufferError:
            p.poll(0.01)
            continue
        seq += 1
        if seq % 256 == 0:
            p.poll(0)
    stats["sent"] = seq
    stats["unflushed"] = p.flush(120)
    stats["seconds"] = time.monotonic() - t0
    with open(out + ".tmp", "wb") as f:
        acked.tofile(f)
    os.replace(out + ".tmp", out)
    with open(out + ".json", "w") as f:
        json.dump(stats, f)


def consumer_main(bootstrap: str, index: int, stop_file: str, drain: float, out: str) -> None:
    from confluent_kafka import Consumer

    got = array.array("q")  # partition, offset, producer, seq, receive time in ms
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *a: stop.__setitem__(0, True))
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP, "auto.offset.reset": "earliest",
                  "enable.auto.commit": True, "auto.commit.interval.ms": 500, "session.timeout.ms": 6000,
                  "heartbeat.interval.ms": 1000, "fetch.wait.max.ms": 100, "fetch.queue.backoff.ms": 5,
                  "log_level": 2})
    c.subscribe([TOPIC])
    last = time.monotonic()
    errors = 0
    try:
        while not stop[0]:
            msgs = c.consume(2000, 0.2)
            now = time.monotonic()
            for m in msgs:
                if m.error():
                    errors += 1
                    continue
                producer, seq, _ = m.value().split(b":", 2)
                got.extend((m.partition(), m.offset(), int(producer), int(seq), int(time.time() * 1000)))
            if msgs:
                last = now
            elif os.path.exists(stop_file) and now - last >= drain:
                break
    finally:
        c.close()  # commits the offsets consumed so far, leaves the group
    with open(out + ".tmp", "wb") as f:
        got.tofile(f)
    os.replace(out + ".tmp", out)
    with open(out + ".json", "w") as f:
        json.dump({"errors": errors}, f)


# --- the parent -----------------------------------------------------------------------------


def _spawn(role: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), "--role", role, *map(str, args)],
                            env=child_env(), stdout=subprocess.DEVNULL)


def compare(produced: list, consumed: list) -> dict:
    """End-to-end counts from the children's arrays: ``produced[i]`` is producer i's
    (partition, offset, seq) rows, ``consumed`` a list of (partition, offset, producer,
    seq, ms) row arrays. Sorted numpy arrays, not dicts (~200 bytes a record):
    key = partition << 40 | offset, ident = producer << 40 | seq."""
    acked_key = [(a[:, 0] << 40) | a[:, 1] for a in produced]
    acked_id = [(np.int64(i) << 40) | a[:, 2] for i, a in enumerate(produced)]
    akey = np.concatenate(acked_key) if acked_key else np.zeros(0, np.int64)
    aid = np.concatenate(acked_id) if acked_id else np.zeros(0, np.int64)
    order = np.argsort(akey, kind="stable")
    akey, aid = akey[order], aid[order]
    double_acked = int(np.count_nonzero(akey[1:] == akey[:-1]))  # one offset acknowledged twice: a bug
    c = np.concatenate(consumed) if consumed else np.zeros((0, 5), np.int64)
    ckey = (c[:, 0] << 40) | c[:, 1]
    cid = (c[:, 2] << 40) | c[:, 3]
    ukey, counts = np.unique(ckey, return_counts=True)
    pos = np.searchsorted(akey, ckey)
    pos_ok = pos < len(akey)
    found = np.zeros(len(ckey), bool)
    found[pos_ok] = akey[pos[pos_ok]] == ckey[pos_ok]
    return {
        "acked": len(akey), "consumed": len(ckey),
        "lost": int(np.count_nonzero(~np.isin(akey, ukey))),  # acknowledged, never consumed
        "moved": int(np.count_nonzero(aid[pos[found]] != cid[found])),  # consumed at its offset, other record
        "duplicates": int((counts - 1).sum()),
        "unacked_consumed": int(np.count_nonzero(~found)),
        "double_acked": double_acked,
    }


def _array(path: str, width: int):
    return np.fromfile(path, dtype=np.int64).reshape(-1, width)


def run(work: str, *, seconds: float = 20.0, producers: int = 2, consumers: int = 3, partitions: int = 6,
        rate: int = 0, size: int = 100, churn: float = 0.0, drain: float = 3.0, fsync: str = "never",
        log=print) -> dict:
    from confluent_kafka.admin import AdminClient, NewTopic

    data = os.path.join(work, "data")
    server = Server(data, "--fsync", fsync, "--group-initial-rebalance-delay-ms", "500")
    server.start()
    stop_file = os.path.join(work, "stop")
    procs: list[subprocess.Popen] = []
    consumer_outs: list[str] = []
    producer_outs: list[str] = []
    cpu0 = server.cpu_s()
    try:
        admin = AdminClient({"bootstrap.servers": server.bootstrap, "log_level": 2})
        admin.create_topics([NewTopic(TOPIC, num_partitions=partitions, replication_factor=1)])[TOPIC].result(30)

        def start_consumer() -> subprocess.Popen:
            out = os.path.join(work, f"consumer-{len(consumer_outs)}.bin")
            consumer_outs.append(out)
            return _spawn("consumer", server.bootstrap, len(consumer_outs) - 1, stop_file, drain, out)

        live = [start_consumer() for _ in range(consumers)]
        procs += live
        time.sleep(2.0)  # the group forms before the load starts
        t0 = time.monotonic()
        prods = []
        for i in range(producers):
            out = os.path.join(work, f"producer-{i}.bin")
            producer_outs.append(out)
            prods.append(_spawn("producer", server.bootstrap, i, seconds, rate, size, out))
        procs += prods
        churned = 0
        next_churn = t0 + churn if churn else float("inf")
        while any(p.poll() is None for p in prods):
            if time.monotonic() >= next_churn and time.monotonic() - t0 < seconds - 1:
                victim = live.pop(0)
                victim.send_signal(signal.SIGTERM)
                newcomer = start_consumer()
                live.append(newcomer)
                procs.append(newcomer)
                churned += 1
                next_churn += churn
            assert server.alive(), server.log_text()[-3000:]
            time.sleep(0.1)
        produced_s = time.monotonic() - t0
        open(stop_file, "w").close()
        deadline = time.monotonic() + 120
        for p in procs:
            p.wait(max(1.0, deadline - time.monotonic()))
        consumed_s = time.monotonic() - t0
        assert all(p.returncode == 0 for p in procs), [p.returncode for p in procs]
        cpu = server.cpu_s() - cpu0
        rss = server.rss_kb()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        rc = server.stop()
    assert rc == 0, server.log_text()[-3000:]
    check_data_dir(data)

    pstats = []
    for out in producer_outs:
        with open(out + ".json") as f:
            pstats.append(json.load(f))
    counts = compare([_array(out, 3) for out in producer_outs], [_array(out, 5) for out in consumer_outs])
    total = counts["acked"]
    result = {
        "seconds": round(produced_s, 1), "producers": producers, "consumers": consumers, "partitions": partitions,
        "churned": churned, **counts,
        "failed_deliveries": sum(s["failed"] for s in pstats),
        "produce_rate": round(total / produced_s), "end_to_end_s": round(consumed_s, 1),
        "server_cpu_s_per_million": round(cpu / max(total, 1) * 1e6, 2), "server_rss_mb": round(rss / 1024, 1),
    }
    assert counts["lost"] == 0 and counts["moved"] == 0 and counts["double_acked"] == 0, result
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--role", choices=["producer", "consumer"], help=argparse.SUPPRESS)
    ap.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--producers", type=int, default=2)
    ap.add_argument("--consumers", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--rate", type=int, default=25_000,
                    help="records/s per producer; 0: as fast as it goes (the check keeps 32 bytes a record)")
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--churn", type=float, default=0.0, help="restart one consumer every this many seconds")
    ap.add_argument("--fsync", choices=["never", "interval", "always"], default="never")
    a = ap.parse_args()
    if a.role == "producer":
        bootstrap, index, seconds, rate, size, out = a.args
        producer_main(bootstrap, int(index), float(seconds), int(rate), int(size), out)
        return
    if a.role == "consumer":
        bootstrap, index, stop_file, drain, out = a.args
        consumer_main(bootstrap, int(index), stop_file, float(drain), out)
        return
    work = tempfile.mkdtemp(prefix="umlog-soak-")
    try:
        r = run(work, seconds=a.seconds, producers=a.producers, consumers=a.consumers, partitions=a.partitions,
                rate=a.rate, size=a.size, churn=a.churn, fsync=a.fsync)
        print(" ".join(f"{k}={v}" for k, v in r.items()))
        print("OK: every acknowledged record was consumed at its offset")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

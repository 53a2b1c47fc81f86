"""Disk full under ``umlog serve``: Produce answers KAFKA_STORAGE_ERROR (56), nothing
half-written is ever served, the server stays up, and once space is back it carries on
by itself with no gap in offsets.

Two ways to fill the disk: a real 8 MiB tmpfs (needs root to mount; skipped otherwise),
and ENOSPC injected into the engine's log writes under the door in-process (always runs).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import threading
import time
import uuid

import fuzz_kafka  # tools/, put on sys.path by conftest.py
import pytest
from harness import Server, check_data_dir
from helpers import scaled, wait_until, wait_until_async
from kio.index import load_response_schema
from kio.serial import entity_reader

import umlog
from umlog._native.core import decode_records, encode_batch
from umlog.log import segment as segment_mod
from umlog.server.kafka import KafkaDoor, KafkaProtocol

STORAGE_ERROR = 56


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _produce(sock, corr: int, value: bytes, n: int = 10) -> tuple[int, int]:
    """(error code, base offset) of a Produce of n records."""
    r = fuzz_kafka.call(sock, fuzz_kafka.produce_request("full", 0, encode_batch([value] * n), acks=-1), corr, 9)
    p = r.responses[0].partition_responses[0]
    return p.error_code, p.base_offset


def _fetch_all(sock, corr: int) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    offset = 0
    while True:
        r = fuzz_kafka.call(sock, fuzz_kafka.fetch_request("full", 0, offset), corr, 12)
        data = r.responses[0].partitions[0].records
        if not data:
            return out
        records, _ = decode_records(bytes(data), 0, len(data), offset, -1, None, -1, True)
        out += [(rec.offset, rec.value) for rec in records]
        offset = out[-1][0] + 1


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_full_tmpfs_storage_error_then_recovers_by_itself(small_fs, fsync):
    data = os.path.join(small_fs, "data")
    with umlog.open(data) as b:
        b.create_topic("full", config={"segment.bytes": 256 * 1024})
    ballast = os.path.join(small_fs, "ballast")
    with open(ballast, "wb") as f:
        f.write(b"\0" * (6 << 20))
    s = Server(data, "--fsync", fsync, log_path=os.path.join(os.path.dirname(small_fs), f"server-{fsync}.log"))
    s.start()
    try:
        sock = socket.create_connection(("127.0.0.1", s.port), timeout=30)
        acked: list[tuple[int, bytes]] = []
        codes = []
        corr = 0
        for i in range(2000):  # bounded: ~2 MiB fits, each request is ~10 KiB
            corr += 1
            value = b"%06d" % i + b"x" * 1000
            code, base = _produce(sock, corr, value)
            codes.append(code)
            if code == 0:
                acked += [(base + k, value) for k in range(10)]
            elif len([c for c in codes if c]) >= 20:
                break
            else:
                assert code == STORAGE_ERROR, code
        assert STORAGE_ERROR in codes, "the disk never filled"
        assert s.alive()
        corr += 1
        served = _fetch_all(sock, corr)
        assert served == acked  # exactly what was acknowledged: nothing half-written, no gap
        os.unlink(ballast)  # space is back
        for i in range(20):
            corr += 1
            value = b"after-%d" % i
            code, base = _produce(sock, corr, value)
            assert code == 0 and base == acked[-1][0] + 1, (code, base)
            acked += [(base + k, value) for k in range(10)]
        corr += 1
        assert _fetch_all(sock, corr) == acked
        sock.close()
    finally:
        rc = s.stop()
    assert rc == 0, s.log_text()[-2000:]
    log = s.log_text()
    assert "Traceback" not in log
    # Logged, but not once per refused request (one line a second per partition).
    assert 1 <= log.count("No space left on device") < len([c for c in codes if c]), log
    check_data_dir(data)


def test_full_tmpfs_idempotent_librdkafka_producer_delivers_everything_once_space_returns(small_fs):
    """A confluent-kafka producer (acks=all, idempotent) streams while the disk fills;
    KAFKA_STORAGE_ERROR is retriable, so once space is freed every message is delivered,
    each exactly once, at dense offsets."""
    ck = pytest.importorskip("confluent_kafka")
    data = os.path.join(small_fs, "data")
    with umlog.open(data) as b:
        b.create_topic("full", config={"segment.bytes": 256 * 1024})
    ballast = os.path.join(small_fs, "ballast")
    s = Server(data, "--fsync", "always", log_path=os.path.join(os.path.dirname(small_fs), "server-rdk.log"))
    s.start()
    try:
        # batch.size below the topic's segment.bytes: a larger request is
        # RECORD_LIST_TOO_LARGE, as in Kafka
        p = ck.Producer({"bootstrap.servers": s.bootstrap, "acks": "all", "enable.idempotence": True,
                         "linger.ms": 5, "batch.size": 64 * 1024, "message.timeout.ms": 60_000, "retry.backoff.ms": 100,
                         "log_level": 2})
        acked: dict[bytes, int] = {}
        failed = []

        def report(err, msg):
            if err is None:
                acked[msg.value()] = msg.offset()
            else:
                failed.append(err)

        total = 3000
        errors = []

        def free_once_refused():
            # The disk stays full until the server has refused a write, however
            # long that takes on a busy machine (a timed fill could miss the
            # stream, a timed free could come before any refusal).
            try:
                wait_until(lambda: "No space left on device" in s.log_text(), 60, "a write refused for lack of space")
            except AssertionError as e:
                errors.append(e)
            finally:
                os.unlink(ballast)

        freer = None
        for i in range(total):
            if i == total // 3:  # fill the disk in the middle of the stream
                try:
                    with open(ballast, "wb") as f:
                        while True:
                            f.write(b"\0" * (1 << 20))
                except OSError as e:
                    assert e.errno == errno.ENOSPC
                freer = threading.Thread(target=free_once_refused)
                freer.start()
            p.produce("full", b"m%05d" % i + b"y" * 500, partition=0, on_delivery=report)
            p.poll(0)
            if i % 100 == 0:
                time.sleep(0.02)  # a stream, not one burst
        freer.join()
        assert not errors, errors
        assert p.flush(scaled(60)) == 0
        assert not failed, failed[:3]
        assert len(acked) == total and sorted(acked.values()) == list(range(total))
        sock = socket.create_connection(("127.0.0.1", s.port), timeout=30)
        served = _fetch_all(sock, 1)
        sock.close()
        assert {v: o for o, v in served} == acked  # each once, where it was acknowledged
    finally:
        rc = s.stop()
    assert rc == 0
    assert "No space left on device" in s.log_text()  # the disk did fill under the producer
    check_data_dir(data)


# --- ENOSPC injected under the door (no root needed) --------------------------------------------


class _Transport:
    def __init__(self) -> None:
        self.written = bytearray()

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 9)}.get(name, default)

    def writelines(self, pieces):
        for piece in pieces:
            self.written += piece

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def close(self):
        pass

    abort = close


async def _call(door, body, corr: int, version: int):
    proto = KafkaProtocol(door)
    tr = _Transport()
    proto.connection_made(tr)
    proto.data_received(struct.pack(">i", len(raw := fuzz_kafka.request_bytes(type(body), body, corr))) + raw)
    await wait_until_async(lambda: len(tr.written) >= 4 and len(tr.written) >= 4 + struct.unpack_from(
        ">i", tr.written)[0], 10, "the whole response")
    proto.connection_lost(None)
    cls = load_response_schema(type(body).__api_key__, version)
    return entity_reader(cls)(bytes(tr.written[4:]), 5 if cls.__flexible__ else 4)[0]


@pytest.mark.parametrize("fsync", ["always", "never"])
async def test_injected_enospc_answers_storage_error_and_recovers(tmp_path, monkeypatch, fsync):
    real = segment_mod.write_all
    left = [0]

    def write_all(fd, data):
        if left[0]:
            left[0] -= 1
            os.write(fd, memoryview(data)[:7])  # a short write first, as a full disk does
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return real(fd, data)

    monkeypatch.setattr(segment_mod, "write_all", write_all)
    with umlog.open(str(tmp_path / "data"), fsync=fsync) as b:
        b.create_topic("full")
        door = KafkaDoor(b)
        ok = await _call(door, fuzz_kafka.produce_request("full", 0, encode_batch([b"a", b"b"])), 1, 9)
        assert ok.responses[0].partition_responses[0].error_code == 0
        left[0] = 3
        for corr in range(2, 5):
            r = await _call(door, fuzz_kafka.produce_request("full", 0, encode_batch([b"lost"])), corr, 9)
            assert r.responses[0].partition_responses[0].error_code == STORAGE_ERROR
        r = await _call(door, fuzz_kafka.produce_request("full", 0, encode_batch([b"c"])), 5, 9)
        part = r.responses[0].partition_responses[0]
        assert (part.error_code, part.base_offset) == (0, 2)  # no gap
        f = await _call(door, fuzz_kafka.fetch_request("full", 0, 0), 6, 12)
        data = bytes(f.responses[0].partitions[0].records)
        records, _ = decode_records(data, 0, len(data), 0, -1, None, -1, True)
        assert [(rec.offset, rec.value) for rec in records] == [(0, b"a"), (1, b"b"), (2, b"c")]

"""QoS 2 received exactly once across a SIGKILL of ``umlog serve``: PUBLISHes
stored but not yet PUBREC'd when the server dies are resent (DUP) to the
restarted server, which must not store them a second time."""

from __future__ import annotations

import collections
import uuid

import pytest
from helpers import scaled, wait_until

import umlog
from server.kafka.serve_process import ServeProcess
from server.mqtt.mqtt_clients import Raw
from umlog.server.mqtt.codec import Connack, PubComp, Publish, PubRec, PubRel, encode

N = 3000


def _log_bytes(d) -> int:
    return sum(f.stat().st_size for f in d.glob("*.log"))


def serve(data_dir) -> ServeProcess:
    # fsync=always: every PUBREC waits for an fdatasync, so the kill finds
    # messages stored and not yet acknowledged. N QoS 2 PUBLISHes await PUBREL
    # at once: the receive maximum is raised to let them.
    return ServeProcess(str(data_dir), "--mqtt", "127.0.0.1:0", "--fsync", "always",
                        "--mqtt-receive-maximum", "65535")


@pytest.mark.parametrize("version", [4, 5])
def test_qos2_publishes_cut_by_a_sigkill_are_stored_once(tmp_path, version):
    data = tmp_path / "data"
    s = serve(data)
    tag = uuid.uuid4().hex[:6]
    cid = "in2-kill-" + tag
    props = {"session_expiry_interval": 600} if version == 5 else None
    try:
        c = Raw(s.addresses["mqtt"], cid, version=version, clean_start=False, properties=props)
        c.s.sendall(b"".join(encode(Publish(f"{tag}/x", b"m%d" % i, 2, packet_id=i), version)
                             for i in range(1, N + 1)))
        # Killed as soon as the messages are in the log: before their PUBRECs.
        wait_until(lambda: _log_bytes(data / "mqtt-messages-0"), scaled(10), "the messages stored", interval=0.0005)
        s.proc.kill()
        recd = set()
        s.proc.wait()
        s.stop()
        try:
            while True:
                recd.add(c.next().packet_id)
        except (ConnectionError, OSError):
            c.close()
        assert len(recd) < N, "every PUBREC came before the kill: nothing was cut"
        s = serve(data)
        c = Raw(s.addresses["mqtt"], cid, version=version, clean_start=False, properties=props)
        assert (c.connack.session_present, c.connack.reason) == (True, 0)
        assert isinstance(c.connack, Connack)
        resent = [i for i in range(1, N + 1) if i not in recd]
        c.s.sendall(b"".join(encode(Publish(f"{tag}/x", b"m%d" % i, 2, dup=True, packet_id=i), version)
                             for i in resent))
        assert [c.next() for _ in resent] == [PubRec(i) for i in resent]
        c.s.sendall(b"".join(encode(PubRel(i), version) for i in range(1, N + 1)))
        assert [c.next() for _ in range(N)] == [PubComp(i) for i in range(1, N + 1)]
        c.disconnect()
    finally:
        s.stop()
    with umlog.open(str(data), cleaner_interval_ms=None) as b:
        t = b.topic("mqtt-messages")
        stored = collections.Counter(bytes(r.value) for p in t.partitions for r in p.read(p.start_offset)
                                     if r.key == f"{tag}/x".encode())
    assert {m for m, n in stored.items() if n > 1} == set()
    assert set(stored) == {b"m%d" % i for i in range(1, N + 1)}

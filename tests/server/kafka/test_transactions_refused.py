"""Transactions are refused, at once and the same way everywhere: every
transactional request gets TRANSACTIONAL_ID_AUTHORIZATION_FAILED ("transactions
are not supported by umlog"), which real clients treat as fatal."""

from __future__ import annotations

import os
import time

import pytest
from helpers import scaled
from kio.schema.errors import ErrorCode

import umlog
from umlog.server.kafka import KafkaDoor

from .kafka_frames import ms, request_class
from .serve_process import ServeProcess
from .test_protocol import call

# Imported here, at collection: kafka-python's first import warns (DeprecationWarning),
# which the suite turns into an error inside a test.
kafka = pytest.importorskip("kafka")
kafka_errors = pytest.importorskip("kafka.errors")


@pytest.fixture
def door(tmp_path):
    with umlog.open(str(tmp_path / "d")) as b:
        yield KafkaDoor(b)


@pytest.mark.parametrize("version", [1, 2, 3])
async def test_find_coordinator_for_a_transaction_id(door, version):
    r = await call(door, request_class(10, version)(key="tx", key_type=1))
    assert r.error_code == ErrorCode.transactional_id_authorization_failed
    assert r.error_message == "transactions are not supported by umlog" and r.node_id == -1
    g = await call(door, request_class(10, version)(key="group", key_type=0))
    assert g.error_code == ErrorCode.none and g.node_id == door.node_id


async def test_find_coordinator_v4_refuses_each_transaction_key(door):
    r = await call(door, request_class(10, 4)(key_type=1, coordinator_keys=("a", "b")))
    assert [(c.key, c.error_code, c.error_message) for c in r.coordinators] == [
        (k, ErrorCode.transactional_id_authorization_failed, "transactions are not supported by umlog")
        for k in ("a", "b")]


@pytest.mark.parametrize("version", [0, 2, 4])
async def test_init_producer_id_with_a_transactional_id(door, version):
    kw = {"producer_id": -1, "producer_epoch": -1} if version >= 3 else {}
    r = await call(door, request_class(22, version)(transactional_id="tx", transaction_timeout=ms(60000), **kw))
    assert (r.error_code, r.producer_id) == (ErrorCode.transactional_id_authorization_failed, -1)


@pytest.mark.clients
def test_real_clients_fail_init_transactions_at_once(tmp_path):
    ck = pytest.importorskip("confluent_kafka")

    s = ServeProcess(os.path.join(str(tmp_path), "data"))
    try:
        p = ck.Producer({"bootstrap.servers": s.bootstrap, "transactional.id": "tx1", "log_level": 0})
        t0 = time.monotonic()
        with pytest.raises(ck.KafkaException) as e:
            p.init_transactions(scaled(30))
        err = e.value.args[0]
        assert err.fatal() and "transactions are not supported by umlog" in err.str()
        assert err.code() == ck.KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED
        assert time.monotonic() - t0 < scaled(10)  # fatal at once, not retried until the timeout
        kp = kafka.KafkaProducer(bootstrap_servers=s.bootstrap, transactional_id="tx2")
        try:
            with pytest.raises(kafka_errors.TransactionalIdAuthorizationFailedError):
                kp.init_transactions()
        finally:
            kp.close(timeout=scaled(5))
        assert s.alive()
        assert "transactions are not supported by umlog" in s.stderr_text()
    finally:
        s.stop()

"""Error paths with real clients: every error answer a client can be driven into, and what it does.

One table of scenarios x clients (librdkafka through confluent-kafka and Debian's
kcat, kafka-python, aiokafka) against one ``umlog serve``. Each case asserts what
the client does with the error (auto.offset.reset applied, the error it reports
when told not to reset, that it goes on working afterwards) and the rule this file
keeps: **no client ever logs a protocol error**. A response a client cannot parse
is the worst answer a server can give: librdkafka logs PROTOERR, retries forever
and never applies auto.offset.reset (a null Fetch records field did exactly that).
So librdkafka's log is captured with protocol debugging on (confluent-kafka's
``logger``, kcat's ``-d``), kafka-python's and aiokafka's through ``logging``, and
every case fails on a parse failure, whatever else it checks.

Combinations a client cannot express are named in comments, not faked; the
in-process golden test (``test_error_frames.py``) covers their frames. Consumer
groups meet UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION, NOT_COORDINATOR and
REBALANCE_IN_PROGRESS across a server restart (the last section). Not driven
with real clients: idempotent sequence errors (librdkafka only gaps its sequences
when a broker lost data) and ListOffsets errors (every client checks its metadata
first and never sends one for a topic it knows is gone).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import re
import shutil
import socket
import subprocess

import pytest
from helpers import scaled, wait_until

import umlog
from umlog._native.core import encode_batch

from .serve_process import ServeProcess

pytestmark = pytest.mark.clients

ck = pytest.importorskip("confluent_kafka")
kafka = pytest.importorskip("kafka")
aiokafka = pytest.importorskip("aiokafka")
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

KCAT = shutil.which("kcat") or shutil.which("kafkacat")
CLIENTS = ["confluent", "kcat", "kafka-python", "aiokafka"]
RESETS = ["earliest", "latest", "error"]

# What a client logs when it cannot parse an answer: librdkafka's PROTOERR and
# "Protocol parse failure"; kafka-python's and aiokafka's decoders ("Unable to
# decode", struct.error, CorruptRecord... from a bad record set).
PROTOCOL_ERROR = re.compile(r"PROTOERR|parse failure|unable to decode|struct\.error|corrupt ?record|"
                            r"buffer underflow|protocol error", re.IGNORECASE)


def needs_kcat():
    """kcat is optional on a developer's machine, never in CI."""
    if KCAT is None:
        if os.environ.get("CI") == "true":
            pytest.fail("kcat is not installed and CI=true (apt-get install kcat)")
        pytest.skip("kcat is not installed (apt-get install kcat)")


class LogCapture(logging.Handler):
    """Every record of a logger, as text, for the protocol-error check."""

    def __init__(self, *names: str, level: int = logging.DEBUG) -> None:
        super().__init__(level)
        self.lines: list[str] = []
        self.loggers = [logging.getLogger(n) for n in names]
        self.saved = [(lg.level, lg.propagate) for lg in self.loggers]
        for lg in self.loggers:
            lg.addHandler(self)
            lg.setLevel(level)
            lg.propagate = False  # a debug flood into pytest's capture slows every case

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(record.getMessage())
        except Exception:  # a record that cannot be formatted is a line still
            self.lines.append(repr(record.msg))

    def close(self) -> None:
        for lg, (level, propagate) in zip(self.loggers, self.saved):
            lg.removeHandler(self)
            lg.setLevel(level)
            lg.propagate = propagate
        super().close()

    def protocol_errors(self) -> list[str]:
        return [ln for ln in self.lines if PROTOCOL_ERROR.search(ln)]


_counter = iter(range(1_000_000))


def librdkafka_logger() -> tuple[logging.Logger, LogCapture]:
    name = f"test.rdkafka.{next(_counter)}"
    cap = LogCapture(name)
    return logging.getLogger(name), cap


# --- the server and the topics it starts with ---------------------------------------------------

PAST_END = 10  # records in a past-end topic; clients are assigned at offset 1000
LOW_BATCHES = 10  # batches of 10 records, one a segment, retention keeps the last few


def value(topic: str, offset: int) -> bytes:
    return f"{topic}@{offset}".encode()


def _populate(data: str) -> dict[str, tuple[int, int]]:
    """Topics whose state a live server cannot reach quickly: a start offset moved by
    retention (the server's cleaner runs every 30 s). Written with the embedded API
    before the server starts; returns topic -> (start, end)."""
    ranges = {}
    with umlog.open(data, cleaner_interval_ms=None) as b:
        for client in CLIENTS:
            for reset in RESETS:
                t = b.create_topic(f"past_end-{client}-{reset}")
                p = t.partition(0)
                p.append_batches(encode_batch([value(t.name, i) for i in range(PAST_END)], [None] * PAST_END))
                ranges[t.name] = (0, PAST_END)
                # retention.bytes of about three segments: the first ones go.
                t = b.create_topic(f"below_start-{client}-{reset}",
                                   config={"segment.bytes": 4096, "retention.bytes": 600})
                p = t.partition(0)
                for n in range(LOW_BATCHES):
                    p.append_batches(encode_batch([value(t.name, n * 10 + i) for i in range(10)], [None] * 10))
                    p.roll()
                b.run_retention(t.name)
                assert p.start_offset > 0, "retention deleted nothing"
                ranges[t.name] = (p.start_offset, p.end_offset)
    return ranges


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = str(tmp_path_factory.mktemp("errors") / "data")
    ranges = _populate(data)
    # --no-auto-create: a client's metadata request must not bring a deleted
    # topic back behind the test's back (kafka-python asks to auto-create).
    s = ServeProcess(data, "--no-auto-create")
    s.ranges = ranges
    s.admin = AdminClient({"bootstrap.servers": s.bootstrap})
    yield s
    s.admin = None  # its threads would reconnect to the stopped server until collected
    rc = s.stop()
    err = s.stderr_text()
    assert rc == 0, err
    assert "Traceback" not in err and " ERROR " not in err, err


def create_topic(server, name: str, **config: str) -> None:
    for f in server.admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1,
                                                  config=config)]).values():
        f.result(timeout=scaled(30))


def delete_topic(server, name: str) -> None:
    for f in server.admin.delete_topics([name]).values():
        f.result(timeout=scaled(30))


def produce(server, topic: str, values: list[bytes]) -> None:
    p = ck.Producer({"bootstrap.servers": server.bootstrap, "linger.ms": 0})
    errors = []
    for v in values:
        p.produce(topic, v, partition=0, on_delivery=lambda err, msg: err and errors.append(err))
    assert p.flush(scaled(30)) == 0 and not errors, errors


# --- consumers: one interface over the four clients ---------------------------------------------
#
# assign(topic, offset) starts fetching there; pump() polls once and keeps what
# came (values, errors); reset_to(topic, offset) is true once the client fetches
# from the offset its reset chose; out_of_range(err) recognises the client's
# report of OFFSET_OUT_OF_RANGE under auto.offset.reset=error/none.


class ClientWrapper:
    """What every client wrapper below shares: its captured log in ``self.log``,
    and ``close`` = the client's own ``_stop`` and then the log's release."""

    def protocol_errors(self) -> list[str]:
        return self.log.protocol_errors()

    def _stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        try:
            self._stop()
        finally:
            self.log.close()


class AioClientWrapper(ClientWrapper):
    """An aiokafka client on a loop of its own (``self.loop``), stopped by ``_client().stop()``."""

    def _stop(self) -> None:
        try:
            self.loop.run_until_complete(self._client().stop())
        finally:
            self.loop.close()


class ConfluentConsumer(ClientWrapper):
    def __init__(self, bootstrap: str, reset: str) -> None:
        logger, self.log = librdkafka_logger()
        self.c = ck.Consumer({
            "bootstrap.servers": bootstrap, "group.id": "error-paths", "enable.auto.commit": False,
            "auto.offset.reset": reset, "logger": logger, "debug": "protocol,fetch,broker,topic",
            "fetch.wait.max.ms": 100, "topic.metadata.refresh.interval.ms": 1000,
        })
        self.values: list[bytes] = []
        self.errors: list = []

    def assign(self, topic: str, offset: int) -> None:
        self.c.assign([ck.TopicPartition(topic, 0, offset)])

    def pump(self) -> None:
        for m in self.c.consume(100, 0.1):
            if m.error():
                self.errors.append(m.error())
            else:
                self.values.append(m.value())

    def reset_to(self, topic: str, offset: int) -> bool:
        self.pump()
        return any(f"{topic} [0] start fetching at offset {offset} " in ln for ln in self.log.lines)

    def saw_unknown_topic(self, topic: str) -> bool:
        self.pump()
        return any(topic in ln and "UNKNOWN_TOPIC_OR_PART" in ln for ln in self.log.lines)

    @staticmethod
    def out_of_range(err) -> bool:
        return err.code() == ck.KafkaError._AUTO_OFFSET_RESET and "Offset out of range" in err.str()

    def pause(self, topic: str) -> None:
        self.c.pause([ck.TopicPartition(topic, 0)])

    def resume(self, topic: str) -> None:
        self.c.resume([ck.TopicPartition(topic, 0)])

    def _stop(self) -> None:
        self.c.close()


class KafkaPythonConsumer(ClientWrapper):
    def __init__(self, bootstrap: str, reset: str) -> None:
        self.log = LogCapture("kafka")
        self.c = kafka.KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                     auto_offset_reset="none" if reset == "error" else reset,
                                     fetch_max_wait_ms=100, metadata_max_age_ms=1000,
                                     request_timeout_ms=int(scaled(30_000)))
        self.values: list[bytes] = []
        self.errors: list = []
        self.tp = None

    def assign(self, topic: str, offset: int) -> None:
        self.tp = kafka.TopicPartition(topic, 0)
        self.c.assign([self.tp])
        self.c.seek(self.tp, offset)

    def pump(self) -> None:
        try:
            for recs in self.c.poll(100).values():
                self.values += [r.value for r in recs]
        except kafka.errors.KafkaError as e:
            self.errors.append(e)

    def reset_to(self, topic: str, offset: int) -> bool:
        self.pump()
        return self.c.position(self.tp, timeout_ms=int(scaled(10_000))) == offset

    def saw_unknown_topic(self, topic: str) -> bool:
        # A fetch answered UNKNOWN_TOPIC_OR_PARTITION is logged at debug level; the
        # metadata refresh it asks for then drops the topic from the client's view.
        self.pump()
        return (any(topic in ln and "UnknownTopicOrPartition" in ln for ln in self.log.lines)
                or self.c._client.cluster.partitions_for_topic(topic) is None)

    @staticmethod
    def out_of_range(err) -> bool:
        return isinstance(err, kafka.errors.OffsetOutOfRangeError)

    def pause(self, topic: str) -> None:
        self.c.pause(self.tp)

    def resume(self, topic: str) -> None:
        self.c.resume(self.tp)

    def _stop(self) -> None:
        self.c.close()


class AioKafkaConsumer(AioClientWrapper):
    """aiokafka on a loop of its own, driven one step at a time."""

    def __init__(self, bootstrap: str, reset: str) -> None:
        self.log = LogCapture("aiokafka", level=logging.INFO)
        self.loop = asyncio.new_event_loop()

        async def start():  # aiokafka binds to the running loop
            c = aiokafka.AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                          auto_offset_reset="none" if reset == "error" else reset,
                                          fetch_max_wait_ms=100, metadata_max_age_ms=1000,
                                          request_timeout_ms=int(scaled(30_000)))
            await c.start()
            return c

        self.c = self.loop.run_until_complete(start())
        self.values: list[bytes] = []
        self.errors: list = []
        self.tp = None

    def _call(self, fn, *args):
        """A synchronous aiokafka call: it too wants a running loop."""
        async def call():
            return fn(*args)
        return self.loop.run_until_complete(call())

    def assign(self, topic: str, offset: int) -> None:
        self.tp = aiokafka.TopicPartition(topic, 0)
        self._call(self.c.assign, [self.tp])
        self._call(self.c.seek, self.tp, offset)

    def pump(self) -> None:
        try:
            got = self.loop.run_until_complete(self.c.getmany(timeout_ms=100))
            for recs in got.values():
                self.values += [r.value for r in recs]
        except aiokafka.errors.KafkaError as e:
            self.errors.append(e)

    def reset_to(self, topic: str, offset: int) -> bool:
        self.pump()
        return self.loop.run_until_complete(self.c.position(self.tp)) == offset

    def saw_unknown_topic(self, topic: str) -> bool:
        # aiokafka logs nothing for UNKNOWN_TOPIC_OR_PARTITION in a fetch; it asks
        # for metadata at once, which drops the topic from its view.
        self.pump()
        return self.c._client.cluster.partitions_for_topic(topic) is None

    @staticmethod
    def out_of_range(err) -> bool:
        return isinstance(err, aiokafka.errors.OffsetOutOfRangeError)

    def pause(self, topic: str) -> None:
        self._call(self.c.pause, self.tp)

    def resume(self, topic: str) -> None:
        self._call(self.c.resume, self.tp)

    def _client(self):
        return self.c


CONSUMERS = {"confluent": ConfluentConsumer, "kafka-python": KafkaPythonConsumer, "aiokafka": AioKafkaConsumer}


def kcat(server, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    """One kcat run with librdkafka's protocol debugging on stderr."""
    return subprocess.run([KCAT, "-b", server.bootstrap, "-d", "protocol,fetch,broker", *args], input=input,
                          capture_output=True, timeout=scaled(60))


def kcat_protocol_errors(r: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in r.stderr.decode(errors="replace").splitlines() if PROTOCOL_ERROR.search(ln)]


# --- consuming from an offset the partition does not have -----------------------------------------


def expect_reset(c, server, topic: str, start: int, end: int, reset: str) -> None:
    """The client was assigned out of range of [start, end): it resets as told, or
    reports the error, and goes on working afterwards."""
    want = [value(topic, i) for i in range(start, end)]
    if reset == "earliest":
        wait_until(lambda: c.pump() or len(c.values) >= len(want), 30, f"{topic}: records after the reset")
        assert c.values == want and not c.errors
    elif reset == "latest":
        wait_until(lambda: c.reset_to(topic, end), 30, f"{topic}: reset to the end ({end})")
        assert c.values == [] and not c.errors
        more = [value(topic, i) for i in range(end, end + 3)]
        produce(server, topic, more)
        wait_until(lambda: c.pump() or len(c.values) >= 3, 30, f"{topic}: records produced after the reset")
        assert c.values == more
    else:
        wait_until(lambda: c.pump() or c.errors, 30, f"{topic}: the out-of-range error")
        assert c.values == [] and all(c.out_of_range(e) for e in c.errors), c.errors
        c.assign(topic, start)  # and a valid position works
        wait_until(lambda: c.pump() or len(c.values) >= len(want), 30, f"{topic}: records after seeking back")
        assert c.values == want


def kcat_expect_reset(server, topic: str, offset: int, start: int, end: int, reset: str) -> None:
    """kcat is one process a run: -e exits at the end of the partition, so it shows
    the reset, and an error exits it (it cannot go on: a new run is a new client)."""
    r = kcat(server, "-C", "-t", topic, "-p", "0", "-o", str(offset), "-e", "-f", "%s\n",
             "-X", f"auto.offset.reset={reset}")
    assert kcat_protocol_errors(r) == []
    got = r.stdout.decode().split()
    if reset == "error":
        assert r.returncode != 0 and got == []
        assert "Offset out of range" in r.stderr.decode()
        return
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert got == ([value(topic, i).decode() for i in range(start, end)] if reset == "earliest" else [])


@pytest.mark.parametrize("reset", RESETS)
@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("scenario", ["past_end", "below_start"])
def test_fetch_out_of_range(server, scenario, client, reset):
    """OFFSET_OUT_OF_RANGE past the end (offset 1000 of 10) and below the start
    (offset 0 of a partition whose first segments retention deleted)."""
    topic = f"{scenario}-{client}-{reset}"
    start, end = server.ranges[topic]
    offset = 1000 if scenario == "past_end" else 0
    if client == "kcat":
        needs_kcat()
        kcat_expect_reset(server, topic, offset, start, end, reset)
        return
    c = CONSUMERS[client](server.bootstrap, reset)
    try:
        c.assign(topic, offset)
        expect_reset(c, server, topic, start, end, reset)
    finally:
        c.close()
    assert c.protocol_errors() == []


# kcat is left out: it cannot be held between deletion and re-creation (one run,
# no pause), and its librdkafka is exercised by the out-of-range cases above.
@pytest.mark.parametrize("reset", RESETS)
@pytest.mark.parametrize("client", ["confluent", "kafka-python", "aiokafka"])
def test_topic_deleted_while_consumed_and_created_again(server, client, reset):
    """UNKNOWN_TOPIC_OR_PARTITION while the topic is gone; then, created again with
    fewer records, the client's position is past the new end: OFFSET_OUT_OF_RANGE."""
    topic = f"recreated-{client}-{reset}"
    create_topic(server, topic)
    produce(server, topic, [b"old%d" % i for i in range(20)])
    c = CONSUMERS[client](server.bootstrap, reset)
    try:
        c.assign(topic, 0)
        wait_until(lambda: c.pump() or len(c.values) >= 20, 30, "the first 20 records")
        delete_topic(server, topic)
        wait_until(lambda: c.saw_unknown_topic(topic), 30, f"{client} seeing {topic} gone")
        # Paused while the new topic is filled: a reset to "latest" must land
        # after these records, not between the creation and the produce.
        c.pause(topic)
        create_topic(server, topic)
        produce(server, topic, [value(topic, i) for i in range(5)])
        c.resume(topic)
        c.values.clear()
        c.errors.clear()
        expect_reset(c, server, topic, 0, 5, reset)
    finally:
        c.close()
    assert c.protocol_errors() == []


# --- producing what the topic refuses ------------------------------------------------------------
#
# send(topic, value, key) waits for the acknowledgement and returns None or the
# client's error. The topics are made per case so that every client meets the
# refusal on its own partition.

PRODUCE_SCENARIOS = {
    # A batch over the topic's max.message.bytes: MESSAGE_TOO_LARGE. The client's
    # own limit (1 MB by default) is far above, so the batch reaches the server.
    "message_too_large": ({"max.message.bytes": "1000"}, 5000, None),
    # A partition's records over segment.bytes: RECORD_LIST_TOO_LARGE.
    "record_list_too_large": ({"segment.bytes": "4096"}, 10_000, None),
    # A keyless record to a compacted topic: INVALID_RECORD.
    "invalid_record": ({"cleanup.policy": "compact"}, 10, None),
}

# What each client reports for each refusal: (error names it may use).
EXPECTED = {
    # _DESTROY: seen once under load, librdkafka purging the queue of a partition
    # that left its metadata.
    "confluent": {"message_too_large": {"MSG_SIZE_TOO_LARGE"}, "record_list_too_large": {"RECORD_LIST_TOO_LARGE"},
                  "invalid_record": {"INVALID_RECORD"},
                  "deleted": {"UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_TOPIC", "_MSG_TIMED_OUT", "_UNKNOWN_PARTITION",
                              "_DESTROY"}},
    "kafka-python": {"message_too_large": {"MessageSizeTooLargeError"},
                     "record_list_too_large": {"RecordListTooLargeError"}, "invalid_record": {"InvalidRecordError"},
                     "deleted": {"UnknownTopicOrPartitionError", "KafkaTimeoutError"}},
    # aiokafka 0.14 has no class for code 87 (INVALID_RECORD): UnknownError.
    "aiokafka": {"message_too_large": {"MessageSizeTooLargeError"},
                 "record_list_too_large": {"RecordListTooLargeError"}, "invalid_record": {"UnknownError"},
                 # aiokafka reports a partition its metadata no longer has a leader for.
                 "deleted": {"UnknownTopicOrPartitionError", "KafkaTimeoutError", "RequestTimedOutError",
                             "NotLeaderForPartitionError"}},
    "kcat": {"message_too_large": {"Message size too large"},
             "record_list_too_large": {"Message batch larger than configured server segment size"},
             "invalid_record": {"Broker: Broker failed to validate record"}},
}


class ConfluentProducer(ClientWrapper):
    def __init__(self, bootstrap: str) -> None:
        logger, self.log = librdkafka_logger()
        self.p = ck.Producer({
            "bootstrap.servers": bootstrap, "logger": logger, "debug": "protocol,broker,msg,topic",
            "linger.ms": 0, "message.timeout.ms": int(scaled(10_000)), "topic.metadata.refresh.interval.ms": 1000,
            "topic.metadata.propagation.max.ms": 1000,
        })

    def send(self, topic: str, value: bytes, key: bytes | None = None):
        result = []
        try:
            self.p.produce(topic, value, key=key, partition=0, on_delivery=lambda err, msg: result.append(err))
        except ck.KafkaException as e:  # a topic its metadata says is gone is refused at once
            return e.args[0].name()
        # poll() also serves log events: wait for the delivery report itself.
        wait_until(lambda: (self.p.poll(0.1), result)[1], 60, f"the delivery report from {topic}")
        err = result[0]
        return None if err is None else err.name()

    def _stop(self) -> None:
        assert self.p.flush(scaled(30)) == 0


class KafkaPythonProducer(ClientWrapper):
    def __init__(self, bootstrap: str) -> None:
        self.log = LogCapture("kafka")
        # Not idempotent: kafka-python 3.0's idempotent producer classifies every
        # non-retriable produce error (MESSAGE_TOO_LARGE, INVALID_RECORD, ...) as
        # fatal (TransactionManager.classify_batch_error) and fails every later
        # send locally, whatever the broker; and after a batch expired while the
        # topic was gone it sent nothing more here. Neither reaches the server.
        self.p = kafka.KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, metadata_max_age_ms=1000,
                                     enable_idempotence=False,
                                     max_block_ms=int(scaled(5_000)), request_timeout_ms=int(scaled(5_000)),
                                     delivery_timeout_ms=int(scaled(10_000)), retries=1)

    def send(self, topic: str, value: bytes, key: bytes | None = None):
        try:
            self.p.send(topic, value, key=key, partition=0).get(timeout=scaled(60))
        except kafka.errors.KafkaError as e:
            return type(e).__name__
        return None

    def _stop(self) -> None:
        self.p.close(timeout=scaled(30))


class AioKafkaProducer(AioClientWrapper):
    def __init__(self, bootstrap: str) -> None:
        self.log = LogCapture("aiokafka")
        self.loop = asyncio.new_event_loop()

        async def start():
            p = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, metadata_max_age_ms=1000,
                                          request_timeout_ms=int(scaled(5_000)))
            await p.start()
            return p

        self.p = self.loop.run_until_complete(start())

    def send(self, topic: str, value: bytes, key: bytes | None = None):
        async def send():
            return await asyncio.wait_for(self.p.send_and_wait(topic, value, key=key, partition=0), scaled(60))
        try:
            self.loop.run_until_complete(send())
        except aiokafka.errors.KafkaError as e:
            return type(e).__name__
        return None

    def _client(self):
        return self.p


PRODUCERS = {"confluent": ConfluentProducer, "kafka-python": KafkaPythonProducer, "aiokafka": AioKafkaProducer}


def stored(server, topic: str) -> list[bytes]:
    """Every value in partition 0, read back with a fresh consumer."""
    c = ConfluentConsumer(server.bootstrap, "earliest")
    try:
        c.assign(topic, ck.OFFSET_BEGINNING)
        wait_until(lambda: c.reset_to(topic, 0) or c.values, 30, f"{topic}: the consumer started")
        ends = c.c.get_watermark_offsets(ck.TopicPartition(topic, 0), timeout=scaled(10))
        wait_until(lambda: c.pump() or len(c.values) >= ends[1] - ends[0], 30, f"{topic}: every record")
        return c.values
    finally:
        c.close()


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("scenario", list(PRODUCE_SCENARIOS))
def test_produce_refused(server, scenario, client):
    """The client reports the refusal for that message and goes on: the next
    message (small, keyed) is stored, the refused one is not."""
    config, size, _ = PRODUCE_SCENARIOS[scenario]
    topic = f"{scenario}-{client}"
    create_topic(server, topic, **config)
    bad = b"x" * size
    good = b"fine"
    if client == "kcat":
        needs_kcat()
        # One run a message: kcat's exit code and delivery report are per run.
        r = kcat(server, "-P", "-t", topic, "-p", "0", input=bad + b"\n")
        assert kcat_protocol_errors(r) == []
        err = r.stderr.decode(errors="replace")
        assert any(e in err for e in EXPECTED["kcat"][scenario]), err[-3000:]
        r = kcat(server, "-P", "-t", topic, "-p", "0", "-K", ":", input=b"k:" + good + b"\n")
        assert r.returncode == 0 and kcat_protocol_errors(r) == [], r.stderr.decode()[-3000:]
    else:
        p = PRODUCERS[client](server.bootstrap)
        try:
            assert p.send(topic, bad) in EXPECTED[client][scenario]
            assert p.send(topic, good, key=b"k") is None
        finally:
            p.close()
        assert p.protocol_errors() == []
    assert stored(server, topic) == [good]


# kcat is left out: it cannot be held while the topic is deleted and created again.
@pytest.mark.parametrize("client", ["confluent", "kafka-python", "aiokafka"])
def test_topic_deleted_while_produced_to_and_created_again(server, client):
    """UNKNOWN_TOPIC_OR_PARTITION from Produce (the client still knows the topic),
    then Metadata's: the message fails; created again, the same producer goes on."""
    topic = f"deleted-produce-{client}"
    create_topic(server, topic)
    p = PRODUCERS[client](server.bootstrap)
    try:
        assert p.send(topic, b"before") is None
        delete_topic(server, topic)
        assert p.send(topic, b"while gone") in EXPECTED[client]["deleted"]
        create_topic(server, topic)
        wait_until(lambda: p.send(topic, b"after") is None, 60, f"{client} producing to {topic} again")
    finally:
        p.close()
    assert p.protocol_errors() == []
    assert set(stored(server, topic)) == {b"after"}  # one or more: a send per attempt


# --- consumer groups across a server restart ------------------------------------------------------
#
# UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION, NOT_COORDINATOR and REBALANCE_IN_PROGRESS
# from a real coordinator: two members consume and commit; one stops polling
# and a third joins, so the others' joins are held (REBALANCE_IN_PROGRESS, then a
# JoinGroup that waits for the member that does not poll); the server is stopped
# (held joins answered NOT_COORDINATOR) and started again on the same port, where
# no member is known (UNKNOWN_MEMBER_ID to heartbeats, commits refused). Every
# member must rejoin and go on from the committed offsets: nothing lost, and no
# protocol error in any client's log. kcat is left out: its balanced consumer
# (-G) is one process that cannot be held from polling.

SESSION_MS = int(scaled(10) * 1000)  # tests/README.md, rule 8
GROUP_DELAY = ("--group-initial-rebalance-delay-ms", "100")
# As each client names them: librdkafka's NAME and text, kafka-python's and
# aiokafka's error classes, and the error_code of the responses they log.
GROUP_ERRORS = {
    "NOT_COORDINATOR": re.compile(r"not.?coordinator|error_code=16\b", re.IGNORECASE),
    "UNKNOWN_MEMBER_ID": re.compile(r"unknown.?member|error_code=25\b", re.IGNORECASE),
    "REBALANCE_IN_PROGRESS": re.compile(r"rebalance.?in.?progress|error_code=27\b", re.IGNORECASE),
    "ILLEGAL_GENERATION": re.compile(r"illegal.?generation|generation id is not valid|error_code=22\b",
                                     re.IGNORECASE),
}


class ConfluentGroupMember(ClientWrapper):
    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        logger, self.log = librdkafka_logger()
        self.c = ck.Consumer({
            "bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "session.timeout.ms": SESSION_MS, "heartbeat.interval.ms": 500,
            "logger": logger, "debug": "protocol,cgrp", "reconnect.backoff.max.ms": 200,
            "topic.metadata.refresh.interval.ms": 1000, "fetch.wait.max.ms": 100,
        })
        self.c.subscribe([topic])
        self.values: list[bytes] = []
        self.dirty = False  # consumed since the last commit that succeeded

    def pump(self) -> None:
        got = [m for m in self.c.consume(100, 0.1) if m.error() is None]
        self.values += [m.value() for m in got]
        self.dirty |= bool(got)
        if self.dirty:
            try:
                self.c.commit(asynchronous=False)
                self.dirty = False
            except ck.KafkaException:  # refused in a rebalance: again at the next pump
                pass

    def log_lines(self) -> list[str]:
        return self.log.lines

    def _stop(self) -> None:
        self.c.close()


class KafkaPythonGroupMember:
    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        self.c = kafka.KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                                     auto_offset_reset="earliest", session_timeout_ms=SESSION_MS,
                                     heartbeat_interval_ms=500, fetch_max_wait_ms=100, metadata_max_age_ms=1000,
                                     reconnect_backoff_max_ms=200, request_timeout_ms=int(scaled(30_000)))
        self.values: list[bytes] = []
        self.dirty = False  # consumed since the last commit that succeeded

    def pump(self) -> None:
        try:
            got = [r.value for recs in self.c.poll(100).values() for r in recs]
            self.values += got
            self.dirty |= bool(got)
            if self.dirty:
                self.c.commit()
                self.dirty = False
        except kafka.errors.KafkaError:  # commit refused in a rebalance: again at the next pump
            pass

    def close(self) -> None:
        self.c.close()


class AioKafkaGroupMember:
    """On the test's one loop, run whenever any member is pumped: aiokafka heartbeats
    and rejoins in background tasks, so a member that is not pumped still rejoins
    (it cannot be stalled as the others can; its joins are held only by chance)."""

    def __init__(self, bootstrap: str, group: str, topic: str, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

        async def start():
            c = aiokafka.AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                                          enable_auto_commit=False, auto_offset_reset="earliest",
                                          session_timeout_ms=SESSION_MS, heartbeat_interval_ms=500,
                                          fetch_max_wait_ms=100, metadata_max_age_ms=1000,
                                          request_timeout_ms=int(scaled(30_000)))
            await c.start()
            return c

        self.c = self.loop.run_until_complete(start())
        self.values: list[bytes] = []
        self.dirty = False  # consumed since the last commit that succeeded

    def pump(self) -> None:
        async def step():
            got = [r.value for recs in (await self.c.getmany(timeout_ms=100)).values() for r in recs]
            self.values += got
            self.dirty |= bool(got)
            if self.dirty:
                await self.c.commit()
                self.dirty = False
        try:
            self.loop.run_until_complete(step())
        except aiokafka.errors.KafkaError:  # commit refused in a rebalance: again at the next pump
            pass

    def close(self) -> None:
        self.loop.run_until_complete(self.c.stop())


def close_refused_sockets() -> None:
    """kafka-python (3.0, kafka/net/inet.py) drops the socket of a refused connection
    (each attempt while the server is down) without closing it; the collector finds
    it later, in whichever test runs then, as a ResourceWarning (an error here). Such
    sockets never connected and do not listen: they are closed here, nothing else."""
    for o in gc.get_objects():
        if not isinstance(o, socket.socket) or o.fileno() == -1 or o.family != socket.AF_INET:
            continue
        try:
            if o.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                continue
            o.getpeername()
        except OSError:  # not connected
            o.close()


GROUP_MEMBERS = {"confluent": ConfluentGroupMember, "kafka-python": KafkaPythonGroupMember,
                 "aiokafka": AioKafkaGroupMember}


def restart_on(data: str, port: int) -> ServeProcess:
    """The server again on the port its clients know. The port was the OS's (rule 5)
    until the stop; another process may take it in between: a few tries."""
    started: list[ServeProcess] = []

    def start() -> bool:
        try:
            started.append(ServeProcess(data, "--no-auto-create", *GROUP_DELAY, "--kafka", f"127.0.0.1:{port}",
                                        verbose=2))
        except RuntimeError as e:  # only a port still held is retried
            if "in use" not in str(e).lower():
                raise
            return False
        return True

    wait_until(start, 30, f"umlog serve listening on port {port} again", interval=0.5)
    return started[0]


def committed_and_ends(bootstrap: str, group: str, topic: str) -> tuple[dict, dict]:
    from confluent_kafka import ConsumerGroupTopicPartitions
    from confluent_kafka.admin import OffsetSpec

    a = AdminClient({"bootstrap.servers": bootstrap})
    tps = [ck.TopicPartition(topic, p) for p in range(2)]
    res = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)])[group].result(scaled(30))
    committed = {tp.partition: tp.offset for tp in res.topic_partitions}
    ends = {tp.partition: f.result(scaled(30)).offset
            for tp, f in a.list_offsets({tp: OffsetSpec.latest() for tp in tps}).items()}
    return committed, ends


def produce_spread(bootstrap: str, topic: str, values: list[bytes]) -> None:
    p = ck.Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    for i, v in enumerate(values):
        p.produce(topic, v, partition=i % 2)
    assert p.flush(scaled(30)) == 0


# kafka-python leaves the socket of each refused connection (while the server is
# down) to the garbage collector: a ResourceWarning in __del__, not this test's.
# kafka-python under -m slow: on a loaded machine (stress-ng, CI=true) its two
# members sometimes never finished consuming and committing (180 s), before or
# after the restart; the cause is not found yet, and the default run must not
# fail by chance.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("client", ["confluent", pytest.param("kafka-python", marks=pytest.mark.slow), "aiokafka"])
def test_group_members_across_a_server_restart(tmp_path, client):
    data = str(tmp_path / "data")
    topic = group = f"restart-{client}"
    first = [b"a%d" % i for i in range(40)]
    then = [b"b%d" % i for i in range(40)]
    # kafka-python and aiokafka log through ``logging``; librdkafka per consumer.
    cap = LogCapture("kafka" if client == "kafka-python" else "aiokafka")
    loop = asyncio.new_event_loop()
    s = ServeProcess(data, "--no-auto-create", *GROUP_DELAY, verbose=2)
    port = s.port
    members = []
    try:
        a = AdminClient({"bootstrap.servers": s.bootstrap})
        for f in a.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)]).values():
            f.result(timeout=scaled(30))
        a = None  # its threads would reconnect to the stopped server until collected
        produce_spread(s.bootstrap, topic, first)
        make = GROUP_MEMBERS[client]
        if client == "aiokafka":
            make = functools.partial(make, loop=loop)
        members = [make(s.bootstrap, group, topic), make(s.bootstrap, group, topic)]

        def pump(ms) -> None:
            for m in ms:
                m.pump()

        def seen() -> set[bytes]:
            return {v for m in members for v in m.values}

        wait_until(lambda: pump(members) or seen() >= set(first) and committed_and_ends(s.bootstrap, group, topic)[0]
                   == {0: 20, 1: 20}, 60, "both members consuming and committing the first records")
        # The first member stalls; a third joins: the second's and the third's joins
        # are held for the first, which does not rejoin.
        members.append(make(s.bootstrap, group, topic))
        held = re.compile(rf"group '{group}': JoinGroup member='[^']+' .* in PreparingRebalance")
        wait_until(lambda: pump(members[1:]) or held.search(s.stderr_text()), 60, "a JoinGroup held")
        assert s.stop() == 0, s.stderr_text()
        assert "Traceback" not in s.stderr_text(), s.stderr_text()
        before = [len(m.values) for m in members]
        s = restart_on(data, port)
        produce_spread(s.bootstrap, topic, then)
        wait_until(lambda: pump(members) or seen() >= set(first + then)
                   and committed_and_ends(s.bootstrap, group, topic)[0] == {0: 40, 1: 40},
                   90, "every member back, every record consumed and committed")
        assert seen() == set(first + then)  # nothing lost, nothing foreign
        # From the committed offsets: every first record was committed before the
        # stop, so none is read again (what was not committed may be, at least once).
        after = [v for m, n in zip(members, before) for v in m.values[n:]]
        assert set(after) <= set(then), sorted(set(after) - set(then))[:10]
    finally:
        for m in members:
            m.close()
        loop.close()
        close_refused_sockets()
        rc = s.stop()
        cap.close()
    err = s.stderr_text()
    assert rc == 0, err
    assert "Traceback" not in err and " ERROR " not in err, err
    lines = cap.lines + [ln for m in members if isinstance(m, ConfluentGroupMember) for ln in m.log_lines()]
    assert [ln for ln in lines if PROTOCOL_ERROR.search(ln)] == []
    met = {name for name, rx in GROUP_ERRORS.items() if any(rx.search(ln) for ln in lines)}
    print(client, "met", sorted(met))
    assert met >= ({"UNKNOWN_MEMBER_ID"} if client == "aiokafka" else {"NOT_COORDINATOR", "UNKNOWN_MEMBER_ID"})

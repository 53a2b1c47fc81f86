"""Webhooks on an embedded broker: the service on the test's loop, a real aiohttp
receiver on loopback that checks every signature with ``standardwebhooks``."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import time

import pytest
from delivery.share_helpers import dead_letters
from delivery.webhook_helpers import OK, SECRET, Receiver
from helpers import scaled, wait_until_async

import umlog
from umlog.delivery.webhook import Webhook, WebhookConfig, Webhooks, retry_after_ms, secret_key, sign


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, scaled(60)))


async def _service(b, receiver, **cfg):
    c = WebhookConfig(**{"name": "w", "topic": "t", "url": receiver.url, "secret": SECRET,
                         "backoff_ms": (10, 40), "start": "earliest", **cfg})
    svc = Webhooks(b, [c], poll_s=scaled(0.05))
    await svc.start()
    return svc


class _Env:
    def __init__(self, data_dir, policy=None, secret=SECRET, work_s=0.0):
        self.data_dir = data_dir
        self.receiver = Receiver(policy, secret=secret, work_s=work_s)

    async def __aenter__(self):
        self.b = umlog.open(self.data_dir, cleaner_interval_ms=None)
        await self.receiver.start()
        self.svc = None
        return self

    async def start(self, **cfg):
        self.svc = await _service(self.b, self.receiver, **cfg)
        return self.svc

    async def __aexit__(self, *exc):
        if self.svc is not None:
            await self.svc.stop(scaled(2))
        await self.receiver.close()
        self.b.close()
        assert not self.receiver.errors, self.receiver.errors


def test_signature_and_headers_verify_with_standardwebhooks(data_dir):
    async def main():
        async with _Env(data_dir) as env:
            await env.start()
            t = env.b.topic("t")  # made by the webhook
            t.append(b'{"order": 1}', key=b"cust-7", headers=[("content-type", b"application/json"),
                                                               ("trace", b"abc"), ("bin", b"\x00\xff")])
            t.append(b"\x00\x01raw", key=None)
            await wait_until_async(lambda: len(env.receiver.ok_ids()) == 2, 10, "two deliveries")
            d0, d1 = sorted(env.receiver.deliveries, key=lambda d: d.offset)
            assert d0.id == "t/0/0" and d0.body == b'{"order": 1}'
            assert d0.headers["content-type"] == "application/json"
            assert d0.headers["umlog-key"] == "cust-7" and d0.headers["umlog-header-trace"] == "abc"
            assert base64.b64decode(d0.headers["umlog-header-bin-b64"]) == b"\x00\xff"
            assert d0.headers["umlog-offset"] == "0" and d0.headers["umlog-delivery-count"] == "1"
            assert abs(int(d0.headers["webhook-timestamp"]) - time.time()) < scaled(60)
            assert d1.headers["content-type"] == "application/octet-stream" and "umlog-key" not in d1.headers
            # the signature is the standard's, computed by hand
            ts = int(d1.headers["webhook-timestamp"])
            assert d1.headers["webhook-signature"] == sign(secret_key(SECRET), "t/0/1", ts, b"\x00\x01raw")
    run(main())


def test_a_raw_secret_is_its_utf8_bytes(data_dir):
    async def main():
        async with _Env(data_dir, secret=b"not-a-whsec-secret") as env:
            await env.start(secret="not-a-whsec-secret")
            env.b.topic("t").append(b"hello")
            await wait_until_async(lambda: env.receiver.ok_ids() == ["t/0/0"], 10, "a delivery")
    run(main())


@pytest.mark.parametrize("status", [500, 503, 408])
def test_500s_retry_with_the_same_id_and_then_ack(data_dir, status):
    def policy(d):
        return (status, {}) if d.attempt <= 2 else OK

    async def main():
        async with _Env(data_dir, policy) as env:
            svc = await env.start()
            env.b.topic("t").append(b"v")
            await wait_until_async(lambda: env.receiver.ok_ids() == ["t/0/0"], 10, "the third attempt")
            attempts = [d for d in env.receiver.deliveries if d.id == "t/0/0"]
            assert [d.status for d in attempts] == [status, status, 204]
            assert [d.headers["umlog-delivery-count"] for d in attempts] == ["1", "2", "3"]
            await wait_until_async(lambda: svc.running["w"].stats.delivered == 1, 10, "the delivery")
            # acks are written together a few milliseconds later (ACK_LINGER_S): wait for it
            group = env.b.share_group("webhook.w", ["t"], **_group_settings(svc))
            await wait_until_async(lambda: group.describe()["unacked"] == 0, 10, "the ack")
            assert svc.running["w"].stats.retried == 2 and f"HTTP {status}" in svc.running["w"].stats.last_error
    run(main())


def _group_settings(svc):
    c = svc.running["w"].config
    return {"max_attempts": c.max_attempts, "lock_ms": c.lock_ms, "backoff_ms": c.backoff_ms,
            "dead_letter": c.dead_letter_topic, "start": c.start}


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_429_honours_retry_after(data_dir, form):
    def policy(d):
        if d.attempt == 1:
            when = "1" if form == "seconds" else email.utils.formatdate(time.time() + 2, usegmt=True)
            return 429, {"Retry-After": when}
        return OK

    async def main():
        async with _Env(data_dir, policy) as env:
            await env.start(backoff_ms=(1, 2))  # the backoff alone would retry at once
            env.b.topic("t").append(b"v")
            await wait_until_async(lambda: env.receiver.ok_ids() == ["t/0/0"], 15, "the retry")
            first, second = env.receiver.deliveries
            # an HTTP date has one-second resolution: at least the second it names, less rounding
            assert second.at - first.at >= (0.95 if form == "seconds" else 1.0)
    run(main())


def test_retry_after_parsing():
    now = 1_700_000_000.0
    assert retry_after_ms("3") == 3000 and retry_after_ms(None) is None and retry_after_ms("soon") is None
    assert retry_after_ms(email.utils.formatdate(now + 10, usegmt=True), now=now) == 10_000
    assert retry_after_ms(email.utils.formatdate(now - 10, usegmt=True), now=now) == 0


def test_400_dead_letters_at_once_with_the_status(data_dir):
    async def main():
        async with _Env(data_dir, lambda d: (400, {}) if d.body == b"bad" else OK) as env:
            svc = await env.start()
            t = env.b.topic("t")
            t.append(b"bad", key=b"k", headers=[("h", b"1")])
            t.append(b"good")
            await wait_until_async(lambda: "webhook.w.dlq" in env.b.topics() and dead_letters(env.b, "webhook.w.dlq")
                                   and svc.running["w"].stats.delivered == 1, 10, "a dead letter and an ack")
            [dl] = dead_letters(env.b, "webhook.w.dlq")
            assert dl["reason"] == "HTTP 400 Bad Request" and dl["count"] == 1
            assert (dl["topic"], dl["partition"], dl["offset"], dl["value"], dl["key"]) == ("t", 0, 0, b"bad", b"k")
            assert ("h", b"1") in dl["headers"]
            assert [d.id for d in env.receiver.deliveries].count("t/0/0") == 1
    run(main())


def test_max_attempts_then_the_dead_letter_topic(data_dir):
    async def main():
        async with _Env(data_dir, lambda d: (503, {})) as env:
            svc = await env.start(max_attempts=3, dead_letter="dead")
            env.b.topic("t").append(b"v")
            await wait_until_async(lambda: "dead" in env.b.topics() and dead_letters(env.b, "dead"), 10,
                                   "the dead letter")
            [dl] = dead_letters(env.b, "dead")
            assert "HTTP 503" in dl["reason"] and "attempt 3 of max_attempts 3" in dl["reason"]
            assert len(env.receiver.deliveries) == 3 and svc.running["w"].stats.dead_lettered == 1
    run(main())


def test_a_stalled_endpoint_times_out_and_recovers(data_dir):
    async def main():
        async with _Env(data_dir, lambda d: "stall" if d.attempt == 1 else OK) as env:
            svc = await env.start(timeout_ms=200)
            env.b.topic("t").append(b"v")
            await wait_until_async(lambda: env.receiver.ok_ids() == ["t/0/0"], 10, "the retry after the timeout")
            assert "timed out after 200 ms" in svc.running["w"].stats.last_error
    run(main())


def test_connection_refused_is_retried(data_dir):
    async def main():
        async with _Env(data_dir) as env:
            url = env.receiver.url.replace(str(env.receiver.port), "1")  # nothing listens on port 1
            env.receiver.url = url
            svc = await env.start(max_attempts=2)
            env.b.topic("t").append(b"v")
            await wait_until_async(lambda: svc.running["w"].stats.dead_lettered == 1, 10, "two refused attempts")
            assert "connection error" in dead_letters(env.b, "webhook.w.dlq")[0]["reason"]
    run(main())


def test_ordering_key_one_at_a_time_in_order_under_retries(data_dir):
    # Each key's first attempt at every third record fails: with ordering "key" no later
    # record of that key may be sent before it is acked, whatever the concurrency.
    def policy(d):
        return (500, {}) if d.offset % 3 == 0 and d.attempt == 1 else OK

    async def main():
        async with _Env(data_dir, policy, work_s=0.002) as env:
            await env.start(ordering="key", concurrency=4)
            t = env.b.topic("t")
            n, keys = 120, [b"a", b"b", b"c", b"d", b"e", b"f"]
            for i in range(n):
                t.append(str(i).encode(), key=keys[i % len(keys)])
            await wait_until_async(lambda: len(set(env.receiver.ok_ids())) == n, 20, "every record")
            assert env.receiver.max_per_key == 1
            assert env.receiver.max_in_flight > 1  # the keys did go in parallel
            by_key: dict = {}
            for d in env.receiver.deliveries:  # arrival order
                by_key.setdefault(d.key, []).append(d)
            for k, ds in by_key.items():
                offsets = [d.offset for d in ds]
                # in order, a failed one repeated right after itself, never overtaken
                assert offsets == sorted(offsets), (k, offsets)
                assert [d.offset for d in ds if d.status == 204] == sorted(set(offsets)), k
    run(main())


def test_ordering_none_keeps_concurrency(data_dir):
    async def main():
        async with _Env(data_dir, lambda d: OK, work_s=0.002) as env:
            await env.start(concurrency=3)
            for i in range(30):
                env.b.topic("t").append(str(i).encode(), key=b"same")
            await wait_until_async(lambda: len(set(env.receiver.ok_ids())) == 30, 20, "every record")
            assert 1 < env.receiver.max_in_flight <= 3  # one key, yet in parallel: no order asked
    run(main())


def test_stop_lets_a_delivery_in_flight_finish_and_ack(data_dir):
    async def main():
        async with _Env(data_dir, lambda d: "stall") as env:
            svc = await env.start(timeout_ms=int(scaled(30) * 1000))
            env.b.topic("t").append(b"v")
            await wait_until_async(lambda: env.receiver.deliveries, 10, "the request")
            w = svc.running["w"]
            stopping = asyncio.create_task(svc.stop(scaled(10)))
            await asyncio.sleep(0)
            env.receiver._never.set()  # the endpoint answers now, during the grace period
            await stopping
            env.svc = None
            assert w.stats.delivered == 1
            q = env.b.share_group("webhook.w", ["t"], max_attempts=w.config.max_attempts, lock_ms=w.config.lock_ms,
                                  backoff_ms=w.config.backoff_ms, dead_letter=w.config.dead_letter_topic,
                                  start="earliest")
            assert q.describe()["unacked"] == 0
    run(main())


def test_appends_from_another_thread_wake_the_webhook(data_dir):
    async def main():
        async with _Env(data_dir) as env:
            await env.start()
            env.svc.running["w"].idle_s = 3600  # only the append listener can wake it
            env.svc.running["w"]._wake.set()  # (the pump takes the new ceiling)
            t = env.b.topic("t")
            await asyncio.get_running_loop().run_in_executor(None, lambda: t.append(b"from a thread"))
            await wait_until_async(lambda: env.receiver.ok_ids() == ["t/0/0"], 10, "the delivery")
    run(main())


def test_config_checks():
    with pytest.raises(ValueError, match="url"):
        WebhookConfig(name="w", topic="t", url="ftp://x", secret=SECRET)
    with pytest.raises(ValueError, match="ordering"):
        WebhookConfig(name="w", topic="t", url="http://x", secret=SECRET, ordering="fifo")
    with pytest.raises(ValueError, match="secret"):
        WebhookConfig(name="w", topic="t", url="http://x", secret="")
    c = WebhookConfig.from_dict({"name": "w", "topic": "t", "url": "http://x", "secret": "s", "backoff_ms": [1, 2]})
    assert c.backoff_ms == (1, 2) and c.dead_letter_topic == "webhook.w.dlq" and c.group == "webhook.w"
    assert isinstance(Webhook, type)

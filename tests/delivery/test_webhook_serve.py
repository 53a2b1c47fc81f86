"""Webhooks of a real ``umlog serve``: a SIGKILL mid-retry, the CLI beside a running
server, and the ``[[webhook]]`` checks of the config file. Records go in through
the Kafka door (confluent-kafka); a real aiohttp receiver checks every signature."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest
from delivery.webhook_helpers import OK, SECRET, ThreadedReceiver
from helpers import scaled, subprocess_env, wait_until
from server.kafka.serve_process import ServeProcess

from umlog.delivery.webhook import read_status


def _umlog(*args, cwd):
    return subprocess.run([sys.executable, "-m", "umlog", *args], capture_output=True, text=True,
                          timeout=scaled(60), cwd=cwd, env=subprocess_env())


def _config(tmp_path, url, **extra) -> str:
    hook = {"name": "w", "topic": "t", "url": url, "secret": SECRET, "start": "earliest", **extra}
    body = "[[webhook]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in hook.items())
    f = tmp_path / "umlog.toml"
    f.write_text(body)
    return str(f)


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    ck = pytest.importorskip("confluent_kafka")
    p = ck.Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "enable.idempotence": False})
    for v in values:
        p.produce(topic, v)
    assert p.flush(scaled(30)) == 0


def _status(tmp_path, data_dir) -> dict:
    r = _umlog("webhooks", "status", "--json", "--data-dir", data_dir, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return {w["name"]: w for w in json.loads(r.stdout)["webhooks"]}


def test_sigkill_mid_retry_loses_nothing_and_acks_nothing_twice(tmp_path, data_dir):
    phase = {"healed": False}

    def policy(d):
        return OK if phase["healed"] or d.offset % 2 == 0 else (500, {})

    n = 40
    with ThreadedReceiver(policy) as rx:
        cfg = _config(tmp_path, rx.url, backoff_ms=[20, 100], max_attempts=1000, concurrency=4)
        srv = ServeProcess(data_dir, "--config", cfg)
        try:
            _produce(srv.bootstrap, "t", [str(i).encode() for i in range(n)])
            evens = {f"t/0/{i}" for i in range(0, n, 2)}
            wait_until(lambda: evens <= set(rx.ok_ids()), 20, "the even records delivered")
            # the odd ones are being retried, and the evens' acks are written
            wait_until(lambda: all(rx.attempts.get(f"t/0/{i}", 0) >= 2 for i in range(1, n, 2)), 20,
                       "every odd record retried")
            wait_until(lambda: _status(tmp_path, data_dir)["w"]["unacked"] == n // 2, 20,
                       "the evens' acks in the share group's state")
            srv.proc.kill()
            srv.proc.wait(scaled(30))
        finally:
            srv.stop()
        phase["healed"] = True
        srv = ServeProcess(data_dir, "--config", cfg)
        try:
            wait_until(lambda: len(set(rx.ok_ids())) == n, 30, "every record delivered after the restart")
            wait_until(lambda: _status(tmp_path, data_dir)["w"]["unacked"] == 0, 20, "every record acked")
            st = _status(tmp_path, data_dir)["w"]
        finally:
            assert srv.stop() == 0, srv.stderr_text()
    assert not rx.errors, rx.errors
    twice = {i: c for i, c in Counter(rx.ok_ids()).items() if c > 1}
    assert not twice, f"acknowledged twice: {twice}"
    assert set(rx.ok_ids()) == {f"t/0/{i}" for i in range(n)}
    assert st["dead_letter_records"] == 0 and st["oldest_unacked_age_ms"] is None


def test_cli_add_list_status_remove_beside_a_running_server(tmp_path, data_dir):
    with ThreadedReceiver() as rx:
        cfg = _config(tmp_path, rx.url)
        srv = ServeProcess(data_dir, "--config", cfg)
        try:
            r = _umlog("webhooks", "add", "live", "--topic", "t2", "--url", rx.url, "--secret", SECRET,
                       "--start", "earliest", "--data-dir", data_dir, cwd=tmp_path)
            assert r.returncode == 0, r.stderr
            wait_until(lambda: _status(tmp_path, data_dir).get("live", {}).get("running"), 20,
                       "the server running the new webhook")
            _produce(srv.bootstrap, "t2", [b"hello"])
            wait_until(lambda: "t2/0/0" in rx.ok_ids(), 20, "the delivery")
            wait_until(lambda: _status(tmp_path, data_dir)["live"]["delivered"] == 1, 20, "the count")
            st = _status(tmp_path, data_dir)
            assert st["live"]["source"] == "cli" and st["w"]["source"] == "config"
            assert st["live"]["unacked"] == 0 and st["live"]["in_flight"] == 0

            r = _umlog("webhooks", "list", "--json", "--data-dir", data_dir, cwd=tmp_path)
            rows = {w["name"]: w for w in json.loads(r.stdout)}
            assert rows["w"]["source"] == "config" and rows["live"]["source"] == "cli"
            assert all("secret" not in w for w in rows.values())

            r = _umlog("webhooks", "remove", "w", "--data-dir", data_dir, cwd=tmp_path)
            assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "config file" in r.stderr
            r = _umlog("webhooks", "add", "live", "--topic", "t2", "--url", rx.url, "--data-dir", data_dir,
                       cwd=tmp_path)
            assert r.returncode == 1 and "exists" in r.stderr and len(r.stderr.strip().splitlines()) == 1

            r = _umlog("webhooks", "remove", "live", "--data-dir", data_dir, cwd=tmp_path)
            assert r.returncode == 0, r.stderr
            wait_until(lambda: read_status(data_dir)["webhooks"]["live"]["running"] is False, 20,
                       "the server stopping it")
            r = _umlog("webhooks", "list", "--json", "--data-dir", data_dir, cwd=tmp_path)
            assert [w["name"] for w in json.loads(r.stdout)] == ["w"]
        finally:
            assert srv.stop() == 0, srv.stderr_text()
    assert not rx.errors, rx.errors


@pytest.mark.parametrize("body, word", [
    ('[[webhook]]\nname = "w"\ntopic = "t"\nurl = "http://x/"\nsecret = "s"\ncolour = "blue"\n', "webhook.colour"),
    ('[[webhook]]\nname = "w"\ntopic = "t"\nsecret = "s"\n', "webhook.url is required"),
    ('[[webhook]]\nname = "w"\ntopic = "t"\nurl = "ftp://x/"\nsecret = "s"\n', "http:// or https://"),
    ('[[webhook]]\nname = "w"\ntopic = "t"\nurl = "http://x/"\nsecret = "s"\nbackoff_ms = [5, 1]\n', "backoff_ms"),
    ('[webhook]\nname = "w"\n', "array of tables"),
    ('[[webhook]]\nname = "w"\ntopic = "t"\nurl = "http://x/"\nsecret = "s"\n'
     '[[webhook]]\nname = "w"\ntopic = "u"\nurl = "http://x/"\nsecret = "s"\n', "given twice"),
])
def test_a_bad_webhook_entry_exits_2_with_one_line(tmp_path, body, word):
    f = tmp_path / "umlog.toml"
    f.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n[kafka]\nlisten = "127.0.0.1:0"\n' + body)
    r = _umlog("serve", "--config", str(f), cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and word in lines[0] and str(f) in lines[0], r.stderr
    assert not (tmp_path / "data").exists()


def test_cli_errors_are_one_line(tmp_path, data_dir):
    r = _umlog("webhooks", "list", "--data-dir", data_dir, cwd=tmp_path)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "no data dir" in r.stderr

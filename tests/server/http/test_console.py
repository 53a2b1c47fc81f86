"""The web console in a real browser (Debian's chromium-headless-shell driven by
playwright, no browser download) against a real ``umlog serve``: create a topic, produce,
browse, see a group's lag after a Kafka consumer commits, reset its offsets, redrive a
dead letter. Screenshots go to the test's tmp_path."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition
from helpers import require_tool, scaled

from server.kafka.serve_process import ServeProcess

from .conftest import Http

CHROMIUM = ("/usr/lib/chromium/chromium-headless-shell", "/usr/bin/chromium-headless-shell")
INSTALL = "apt-get install -y chromium-headless-shell; pip install playwright"


def call(http: Http, method: str, path: str, body=None) -> dict:
    """JSON over urllib (playwright's sync API holds an event loop on this thread)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(http.base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=scaled(30)) as r:
        return json.loads(r.read())


def chromium() -> str:
    found = next((p for p in CHROMIUM if os.path.exists(p)), None) or shutil.which("chromium-headless-shell")
    return require_tool(found, "chromium-headless-shell", INSTALL)


@pytest.fixture
def page(tmp_path):
    path = chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require_tool(None, "playwright", INSTALL)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, args=["--no-sandbox"])
        try:
            ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
            ctx.set_default_timeout(scaled(15) * 1000)
            p = ctx.new_page()
            errors: list[str] = []
            p.on("pageerror", lambda e: errors.append(str(e)))
            p.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            yield p
            assert not errors, errors
        finally:
            browser.close()


def test_create_produce_browse_lag_reset_redrive(page, tmp_path):
    from playwright.sync_api import expect

    s = ServeProcess(str(tmp_path / "data"))
    try:
        http = Http(s)
        shots = tmp_path / "screenshots"
        shots.mkdir()
        topic = "orders-" + uuid.uuid4().hex[:6]

        # create a topic
        page.goto(http.base + "/#/topics")
        expect(page.locator("h1")).to_have_text("Topics")
        page.fill("#new-topic-name", topic)
        page.fill("#new-topic-partitions", "2")
        page.fill("#new-topic-config", "retention.ms=86400000")
        page.click("#create-topic")
        expect(page.locator("#partitions tbody tr")).to_have_count(2)
        expect(page.locator("body")).to_contain_text("retention.ms")
        page.screenshot(path=str(shots / "1-topic.png"), full_page=True)

        # produce three records, by key to partition 0
        page.goto(http.base + f"/#/messages/{topic}")
        for i in range(3):
            page.fill("#produce-key", "c-1")
            page.fill("#produce-partition", "0")
            page.fill("#produce-value", f'{{"n": {i}, "item": "book"}}')
            page.click("#produce")
            expect(page.locator("#produced")).to_contain_text(f"offset {i}")

        # browse partition 0 from the beginning, open a record, switch views
        page.select_option("#partition", "0")
        page.select_option("#from", "beginning")
        page.click("#browse")
        expect(page.locator("#messages tbody tr")).to_have_count(3)
        page.locator("#messages tbody tr").nth(1).click()
        expect(page.locator("#record-value")).to_contain_text('"n": 1')
        page.click("#view-hex")
        expect(page.locator("#record-value")).to_contain_text("00000000  7b 22 6e 22")
        page.fill("#search-jmespath", "n >= `2`")
        page.click("#search")
        expect(page.locator("#messages tbody tr")).to_have_count(1)
        expect(page.locator("#result-info")).to_contain_text("1 matches")
        page.screenshot(path=str(shots / "2-messages.png"), full_page=True)

        # a Kafka consumer commits offset 1: the group's lag is 2, live
        group = "billing-" + uuid.uuid4().hex[:6]
        c = Consumer({"bootstrap.servers": s.bootstrap, "group.id": group})
        try:
            c.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
        finally:
            c.close()
        page.goto(http.base + "/#/groups")
        expect(page.locator(f'#groups tr[data-key="{group}"]')).to_contain_text("2")
        page.click(f'#groups a:text("{group}")')
        expect(page.locator(f'#lag tr[data-key="{topic}-0"] td').nth(4)).to_have_text("2")
        page.screenshot(path=str(shots / "3-group.png"), full_page=True)

        # reset to earliest, confirmed in the dialog: lag 3
        page.select_option("#reset-to", "earliest")
        page.click("#reset")
        expect(page.locator("#confirm")).to_be_visible()
        expect(page.locator("#confirm-text")).to_contain_text("1 → 0")
        page.screenshot(path=str(shots / "4-reset-confirm.png"))
        page.click("#confirm-ok")
        expect(page.locator(f'#lag tr[data-key="{topic}-0"] td').nth(4)).to_have_text("3")
        assert call(http, "GET", f"/api/groups/{group}")["offsets"][0]["committed"] == 0

        # a dead letter, redriven from the console
        dlq = topic + ".dlq"
        call(http, "POST", "/api/topics", {"name": dlq, "partitions": 1})
        call(http, "POST", f"/api/topics/{dlq}/messages", {
            "key": "c-9", "value": '{"n": 99}', "partition": 0,
            "headers": [["kafka_dlt-original-topic", topic], ["kafka_dlt-exception-message", "amount too large"]]},
            )
        page.goto(http.base + f"/#/dead-letters/{dlq}")
        row = page.locator('#dead-letters tr[data-offset="0"]')
        expect(row.locator("td.why")).to_have_text("amount too large")
        page.screenshot(path=str(shots / "5-dead-letters.png"), full_page=True)
        row.locator("button.redrive-one").click()
        page.click("#confirm-ok")
        expect(row).to_contain_text("redriven")
        records = call(http, "GET", f"/api/topics/{topic}/messages?from=beginning")["records"]
        assert [r["value"] for r in records if r["key"] == "c-9"] == ['{"n": 99}']

        # the throughput chart draws what was appended
        page.goto(http.base + "/#/throughput")
        call(http, "POST", f"/api/topics/{topic}/messages", {"value": "x"})
        for _ in range(int(scaled(20))):
            call(http, "POST", f"/api/topics/{topic}/messages", {"value": "x"})
            if page.locator(f'#legend [data-topic="{topic}"]').count():
                break
            page.wait_for_timeout(300)  # producing at a pace is the scenario: the sampler runs once a second
        expect(page.locator(f'#legend [data-topic="{topic}"]')).to_be_visible()
        page.screenshot(path=str(shots / "6-throughput.png"), full_page=True)
        assert len(list(shots.iterdir())) == 6
    finally:
        assert s.stop() == 0, s.stderr_text()

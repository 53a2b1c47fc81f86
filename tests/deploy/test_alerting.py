"""``deploy/``: the alert rules pass their promtool unit tests, the Grafana dashboard and
the rules name only metrics a real ``umlog serve`` serves, and a real Prometheus (Debian's
``prometheus``) scraping a real server reads a consumer group's lag back."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import urllib.parse
import urllib.request
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition
from helpers import require_tool, scaled, wait_until
from prometheus_client.parser import text_string_to_metric_families
from server.http.conftest import JSONV2, Http
from server.kafka.serve_process import ServeProcess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")
ALERTS = os.path.join(DEPLOY, "prometheus", "alerts.yml")
INSTALL = "apt-get install -y prometheus"

if not os.path.isdir(DEPLOY):
    pytest.skip("not running from a source checkout", allow_module_level=True)

# PromQL words that are not metric names
_WORDS = {"sum", "by", "max", "min", "rate", "delta", "histogram_quantile", "le", "without", "avg", "count",
          "instance", "job", "topic", "consumergroup", "group", "route", "door", "webhook", "partition", "up"}


def promql_metrics(expr: str) -> set[str]:
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\([^()]*\)\s*\(", "(", expr)  # "by (a, b) (" groupings
    return {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr) if w not in _WORDS and not w[0].isupper()
            and "_" in w}


def served_names(http: Http) -> set[str]:
    assert http.call("GET", "/healthz").status == 200  # a request timed: the request histogram has a series
    r = http.call("GET", "/metrics")
    names = set()
    for fam in text_string_to_metric_families(r.body.decode()):
        names.add(fam.name + "_total" if fam.type == "counter" else fam.name)  # counters without a series yet
        names.update(s.name for s in fam.samples)
    return names


def test_alert_rules_pass_promtool():
    promtool = require_tool(shutil.which("promtool"), "promtool", INSTALL)
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        r = subprocess.run([promtool, *args], cwd=os.path.dirname(ALERTS), capture_output=True, text=True,
                           timeout=scaled(120))
        assert r.returncode == 0, r.stdout + r.stderr
    with open(ALERTS) as f:
        text = f.read()
    for alert in ("UmlogDown", "UmlogConsumerLagHigh", "UmlogDiskNearlyFull", "UmlogDeadLettersGrowing",
                  "UmlogFsyncSlow"):
        assert f"alert: {alert}" in text


def test_dashboard_and_rules_name_metrics_the_server_serves(tmp_path):
    with open(os.path.join(DEPLOY, "grafana", "umlog.json")) as f:
        dash = json.load(f)
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    with open(ALERTS) as f:
        rules = re.findall(r"^\s+expr: (.+)$", f.read(), re.M)
    assert len(rules) == 5
    exprs += rules
    wanted = set().union(*map(promql_metrics, exprs))
    assert {"kafka_consumergroup_lag_seconds", "umlog_fsync_seconds_bucket", "umlog_disk_free_bytes"} <= wanted
    s = ServeProcess(str(tmp_path / "data"))
    try:
        names = served_names(Http(s))
    finally:
        assert s.stop() == 0, s.stderr_text()
    assert wanted <= names, sorted(wanted - names)


class Prometheus:
    """Debian's prometheus binary on a loopback port, with its own config and storage.

    Prometheus cannot listen on port 0 and tell which port it got, so a port is
    picked by the OS and handed over; if something took it in between, Prometheus
    exits at once with "address already in use" and another port is tried. The
    process answering is checked to be this one (its storage path)."""

    def __init__(self, binary: str, workdir: str, scrape: str) -> None:
        self.workdir = workdir
        self.storage = os.path.join(workdir, "tsdb")
        cfg = os.path.join(workdir, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write(f"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                    f"rule_files:\n  - {ALERTS}\n"
                    f"scrape_configs:\n  - job_name: umlog\n    static_configs:\n      - targets: ['{scrape}']\n")
        self.proc = None
        self.log = None
        for attempt in range(5):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self.port = sock.getsockname()[1]
            if self.log is not None:
                self.log.close()
            self.log = log = open(os.path.join(workdir, f"prometheus-{attempt}.log"), "w+")
            self.proc = subprocess.Popen(
                [binary, f"--config.file={cfg}", f"--storage.tsdb.path={self.storage}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=info"],
                stdout=log, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)
            if self._ready():
                return
            self.stop()
            text = self.text()
            if "address already in use" not in text:
                self.log.close()
                raise AssertionError(f"prometheus did not start:\n{text}")
        self.log.close()
        raise AssertionError("prometheus found no free port in 5 tries")

    def text(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def _ready(self) -> bool:
        def ready():
            if self.proc.poll() is not None:
                return "exited"
            try:
                flags = self.get("/api/v1/status/flags")["data"]
            except OSError:
                return False
            return "ours" if flags.get("storage.tsdb.path") == self.storage else False

        return wait_until(ready, 60, "prometheus to answer", interval=0.1) == "ours"

    def get(self, path: str, **query) -> dict:
        url = f"http://127.0.0.1:{self.port}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        with urllib.request.urlopen(url, timeout=scaled(10)) as r:
            return json.loads(r.read())

    def query(self, expr: str) -> list:
        return self.get("/api/v1/query", query=expr)["data"]["result"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(scaled(30))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> None:
        self.stop()
        if self.log is not None:
            self.log.close()


def test_a_real_prometheus_reads_a_groups_lag(tmp_path):
    binary = require_tool(shutil.which("prometheus"), "prometheus", INSTALL)
    s = ServeProcess(str(tmp_path / "data"))
    prom = None
    try:
        http = Http(s)
        host, port = s.addresses["http"]
        topic = http.create_topic(1, "prom")
        group = "prom-" + uuid.uuid4().hex[:8]
        r = http.call("POST", f"/topics/{topic}", {"records": [{"value": i} for i in range(10)]}, ctype=JSONV2)
        assert r.status == 200, r
        c = Consumer({"bootstrap.servers": s.bootstrap, "group.id": group})
        try:
            c.commit(offsets=[TopicPartition(topic, 0, 4)], asynchronous=False)
        finally:
            c.close()
        prom = Prometheus(binary, str(tmp_path), f"{host}:{port}")
        expr = f'kafka_consumergroup_lag{{consumergroup="{group}", topic="{topic}", partition="0"}}'
        got = wait_until(lambda: prom.query(expr), 60, "the lag in Prometheus", interval=0.2)
        assert float(got[0]["value"][1]) == 6 and got[0]["metric"]["job"] == "umlog"
        up = prom.query('up{job="umlog"}')
        assert float(up[0]["value"][1]) == 1
        secs = wait_until(lambda: prom.query(f'kafka_consumergroup_lag_seconds{{consumergroup="{group}"}}'), 60,
                          "the lag in seconds")
        assert float(secs[0]["value"][1]) >= 0
        # the rules loaded: every alert of alerts.yml is known to this Prometheus
        rules = {r["name"] for g in prom.get("/api/v1/rules")["data"]["groups"] for r in g["rules"]}
        assert {"UmlogDown", "UmlogConsumerLagHigh", "UmlogDiskNearlyFull", "UmlogDeadLettersGrowing",
                "UmlogFsyncSlow"} <= rules
        # the group catches up: Prometheus sees the lag fall to 0
        c = Consumer({"bootstrap.servers": s.bootstrap, "group.id": group})
        try:
            c.commit(offsets=[TopicPartition(topic, 0, 10)], asynchronous=False)
        finally:
            c.close()
        wait_until(lambda: float(prom.query(expr)[0]["value"][1]) == 0, 60, "the lag back to 0", interval=0.2)
    finally:
        if prom is not None:
            prom.close()
        assert s.stop() == 0, s.stderr_text()

"""The audit log: one JSON CloudEvent per security decision in the topic ``__audit``.

Every authentication (success and failure), every denial and every admin
change made through a door (topics, configs, partitions, groups and their
offsets, ACLs, users) is one record of the internal topic ``__audit`` (key:
the principal), a CloudEvents 1.0 JSON object::

    {"specversion": "1.0", "id": "<uuid>", "type": "umlog.security.denied",
     "source": "kafka", "subject": "topic:orders", "time": "2024-05-01T12:00:00.123Z",
     "datacontenttype": "application/json",
     "data": {"principal": "User:alice", "client": "127.0.0.1:53122", "operation": "WRITE",
              "resource": "topic:orders", "result": "denied", "reason": "..."}}

Types: ``umlog.security.authentication`` (result ``success`` or ``failure``),
``umlog.security.denied``, ``umlog.admin.<operation>`` (e.g.
``umlog.admin.create_topics``). The topic is time-retained
(``[security] audit_retention_ms``) and readable through any door by whoever
may READ it (super users). A client that keeps retrying a denied request (or a
failing login) writes one record per second per (principal, client,
operation, resource), counting the ones left out in ``data.repeated``.

Records are appended on the server's loop (the engine batches them); they
are as durable as the server's fsync policy makes any record.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
import uuid
from typing import Any

__all__ = ["Audit", "AUDIT_TOPIC"]

AUDIT_TOPIC = "__audit"

log = logging.getLogger("umlog.server.security")


class Audit:
    def __init__(self, broker: Any, retention_ms: int, create_topic=None) -> None:
        self.broker = broker
        self.retention_ms = retention_ms
        self._create = create_topic or broker.create_topic
        self._topic = None
        self._recent: dict[tuple, list] = {}  # denial key -> [monotonic time, left out]

    def topic(self):
        if self._topic is None:
            from umlog.errors import TopicExistsError, UnknownTopicError

            try:
                self._topic = self.broker.topic(AUDIT_TOPIC)
                if self._topic.config["retention.ms"] != self.retention_ms:
                    self.broker.alter_topic_config(AUDIT_TOPIC, {"retention.ms": self.retention_ms})
            except UnknownTopicError:
                try:
                    self._topic = self._create(AUDIT_TOPIC, 1, {"retention.ms": self.retention_ms})
                except TopicExistsError:
                    self._topic = self.broker.topic(AUDIT_TOPIC)
        return self._topic

    def record(self, type_: str, source: str, subject: str | None, principal: str | None, client: str | None,
               operation: str | None, result: str, reason: str | None = None, **extra: Any) -> None:
        """Append one event (never raises: a failing audit write is logged)."""
        data: dict[str, Any] = {"principal": principal, "client": client, "operation": operation,
                                "resource": subject, "result": result}
        if reason:
            data["reason"] = reason
        data.update(extra)
        if result in ("denied", "failure"):
            key = (principal, client, operation, subject)
            now = time.monotonic()
            seen = self._recent.get(key)
            if seen is not None and now - seen[0] < 1.0:
                seen[1] += 1
                return
            if seen is not None and seen[1]:
                data["repeated"] = seen[1]
            if len(self._recent) > 10_000:
                self._recent.clear()
            self._recent[key] = [now, 0]
        now_dt = datetime.datetime.now(datetime.UTC)
        event = {"specversion": "1.0", "id": str(uuid.uuid4()), "type": type_, "source": source,
                 "time": now_dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now_dt.microsecond // 1000:03d}Z",
                 "datacontenttype": "application/json", "data": data}
        if subject is not None:
            event["subject"] = subject
        try:
            self.topic().append(json.dumps(event, separators=(",", ":")).encode(),
                                key=(principal or "").encode() or None)
        except Exception as e:  # the audit never takes a request down with it
            log.error("audit: cannot append %s: %r", type_, e)

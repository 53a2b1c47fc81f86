"""The ``[[webhook]]`` settings and the webhooks ``umlog serve`` runs on its loop.

Declarations only (light: the CLI builds its options and the README's table
from them); the service itself is ``umlog.delivery.webhook.Webhooks``, which
the runner starts once the hub is bound and stops, with the doors' grace
period, before the broker closes.
"""

from __future__ import annotations

from typing import Any

from .settings import ArrayOfTables, Setting, SettingsError, check_entry

__all__ = ["WEBHOOK_SETTINGS", "webhook_configs", "check_webhook", "parse_webhook"]

_INT31 = 2**31 - 1
_D = {"max_attempts": 8, "backoff_ms": [1_000, 600_000], "concurrency": 32, "ordering": "none",
      "timeout_ms": 10_000, "start": "latest"}

def check_webhook(entry: dict[str, Any], where: str) -> dict[str, Any]:
    """Past each key's own checks: what the service itself refuses (a URL that is
    not http(s), a secret that does not decode) is a SettingsError too."""
    from umlog.delivery.webhook import WebhookConfig

    try:
        WebhookConfig.from_dict(entry)
    except (TypeError, ValueError) as e:
        raise SettingsError(f"{where}: {' '.join(str(e).split())}") from None
    return entry


WEBHOOK_SETTINGS = ArrayOfTables("webhook", "Push a topic to an HTTP endpoint (README: Webhooks).", (
    Setting("webhook", "name", "str", None, "Webhook name (A-Z a-z 0-9 . _ -); its share group is webhook.NAME.",
            required=True, unique=True),
    Setting("webhook", "topic", "str", None, "Topic whose records are POSTed (created if missing).", required=True),
    Setting("webhook", "url", "str", None, "Endpoint URL, http:// or https://.", required=True),
    Setting("webhook", "secret", "str", None,
            "Signing secret: whsec_BASE64 (the HMAC key is the decoded bytes) or any other string "
            "(the key is its UTF-8 bytes).", required=True),
    Setting("webhook", "max_attempts", "int", _D["max_attempts"],
            "Attempts before a record is dead-lettered.", min=1, max=65_535),
    Setting("webhook", "backoff_ms", "intpair", _D["backoff_ms"],
            "Retry delay [min, max] in ms: min * 2**(attempt-1), capped at max, with jitter; "
            "Retry-After wins when the endpoint sends it.", min=0, max=_INT31),
    Setting("webhook", "dead_letter", "str", None,
            "Dead-letter topic [default: webhook.NAME.dlq]."),
    Setting("webhook", "concurrency", "int", _D["concurrency"], "Most POSTs in flight at once.", min=1, max=1024),
    Setting("webhook", "ordering", "choice", _D["ordering"],
            "key: one record of a key in flight at a time, in offset order (retries included); "
            "none: up to concurrency in any order.", choices=("none", "key")),
    Setting("webhook", "timeout_ms", "int", _D["timeout_ms"],
            "Request timeout; a timeout is retried.", min=1, max=3_600_000),
    Setting("webhook", "start", "choice", _D["start"],
            "Where a new webhook starts in its topic: latest (records appended from now) or earliest.",
            choices=("latest", "earliest")),
), check=check_webhook)


def parse_webhook(entry: Any, where: str) -> dict[str, Any]:
    """One webhook from elsewhere (the CLI), checked as the config file's are."""
    return check_webhook(check_entry(WEBHOOK_SETTINGS, entry, where), where)


def webhook_configs(settings) -> list:
    """The config file's webhooks as ``WebhookConfig`` s (checked again by the service)."""
    from umlog.delivery.webhook import WebhookConfig

    out = []
    for i, d in enumerate(settings.array("webhook")):
        try:
            out.append(WebhookConfig.from_dict(d, source="config"))
        except (TypeError, ValueError) as e:
            raise SettingsError(f"[[webhook]] #{i + 1}: {e}") from None
    return out

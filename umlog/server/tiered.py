"""``[tiered]``: the object store of tiered storage (umlog/log/tiered.py) for
``umlog serve``; topics opt in with ``remote.storage.enable=true``."""

from __future__ import annotations

from typing import Any

from .settings import Setting

__all__ = ["TIERED_SETTINGS", "tiered_options"]

_INT31 = 2**31 - 1

TIERED_SETTINGS: tuple[Setting, ...] = (
    Setting("tiered", "uri", "str", None,
            "Object store of tiered storage: s3://BUCKET/PATH, gs://BUCKET/PATH or a folder "
            "(credentials from the environment: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ...) [default: none: "
            "no tiered storage]."),
    Setting("tiered", "prefix", "str", "", "Path under the URI; objects are PREFIX/TOPIC-PARTITION/BASE.log etc."),
    Setting("tiered", "endpoint", "str", None,
            "S3 endpoint override for any S3-compatible store (http://127.0.0.1:9000) [default: AWS]."),
    Setting("tiered", "region", "str", None, "S3 region [default: the SDK's]."),
    Setting("tiered", "upload_concurrency", "int", 2, "Partitions uploaded at once.", min=1, max=256),
    Setting("tiered", "cache_bytes", "int", 64 << 20, "Bytes of remote segments cached in memory for reads.",
            min=1 << 20, max=2**62),
    Setting("tiered", "interval_ms", "int", 5000,
            "How often closed segments are looked for (Kafka's remote.log.manager.task.interval.ms).",
            min=10, max=_INT31),
    Setting("tiered", "retry_backoff_ms", "int", 500,
            "Backoff after a failed upload round, doubling each time...", min=1, max=_INT31),
    Setting("tiered", "retry_backoff_max_ms", "int", 30_000, "...up to this.", min=1, max=_INT31),
    Setting("tiered", "request_timeout_ms", "int", 10_000, "Timeout of one object-store request.",
            min=100, max=_INT31),
)


def tiered_options(settings) -> dict[str, Any] | None:
    """The ``tiered=`` option of ``umlog.open``, or None without a uri."""
    t = settings.table("tiered")
    if not t.get("uri"):
        return None
    out = {s.key: t.get(s.key) for s in TIERED_SETTINGS if t.get(s.key) is not None}
    out["retry_backoff_ms"] = [out["retry_backoff_ms"], max(out["retry_backoff_ms"], out.pop("retry_backoff_max_ms"))]
    return out

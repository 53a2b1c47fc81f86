"""A record as JSON, the one shape every HTTP read uses (SSE, WebSocket, ``/api``).

``{"topic", "partition", "offset", "timestamp", "key", "value", "headers"}``:
key and value as UTF-8 text; a value that is not UTF-8 comes base64-encoded
with ``"encoding": "base64"``, a key that is not with ``"key_encoding":
"base64"``; headers a list of ``[name, value]`` pairs (value null, text, or
``{"base64": "..."}`` when not UTF-8).
"""

from __future__ import annotations

import base64
from typing import Any

__all__ = ["record_json", "text_or_base64"]


def text_or_base64(b) -> tuple[str | None, bool]:
    """(text, is_base64) of bytes: UTF-8 text when it decodes, else base64."""
    if b is None:
        return None, False
    b = bytes(b)
    try:
        return b.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(b).decode("ascii"), True


def _header(v) -> Any:
    if v is None:
        return None
    text, b64 = text_or_base64(v)
    return {"base64": text} if b64 else text


def record_json(topic: str, r) -> dict:
    key, kb64 = text_or_base64(r.key)
    value, vb64 = text_or_base64(r.value)
    out = {"topic": topic, "partition": r.partition, "offset": r.offset, "timestamp": r.timestamp,
           "key": key, "value": value, "headers": [[k, _header(v)] for k, v in r.headers]}
    if vb64:
        out["encoding"] = "base64"
    if kb64:
        out["key_encoding"] = "base64"
    return out

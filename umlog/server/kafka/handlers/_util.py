"""Small helpers shared by handlers: kio response classes for the request's version."""

from __future__ import annotations

import dataclasses
import datetime
import sys
import types
from typing import Any

from kio.index import load_response_schema

__all__ = ["response_module", "make", "ZERO_MS", "to_ms", "ms", "TRANSACTIONS_NOT_SUPPORTED"]

ZERO_MS = datetime.timedelta(0)
# The one refusal of every transactional request (with TRANSACTIONAL_ID_AUTHORIZATION_FAILED).
TRANSACTIONS_NOT_SUPPORTED = "transactions are not supported by umlog"

_fields_cache: dict[type, frozenset[str]] = {}


def response_module(ctx: Any) -> types.ModuleType:
    """The kio module holding the response classes for the request's API and version."""
    cls = load_response_schema(ctx.api_key, ctx.version)
    return sys.modules[cls.__module__]


def make(cls: type, **kw: Any) -> Any:
    """Build a kio entity, dropping fields this version does not have.

    One handler serves many versions; each version's class has a subset of the fields.
    """
    names = _fields_cache.get(cls)
    if names is None:
        names = frozenset(f.name for f in dataclasses.fields(cls))
        _fields_cache[cls] = names
    return cls(**{k: v for k, v in kw.items() if k in names})


def to_ms(value: Any) -> int:
    """kio decodes *_ms fields as timedelta; plain ints pass through."""
    if isinstance(value, datetime.timedelta):
        return int(value.total_seconds() * 1000)
    return int(value)


def ms(n: int) -> datetime.timedelta:
    return datetime.timedelta(milliseconds=n)

"""Shared by the group handlers: the coordinator's clock on the event loop, error
codes, and futures for the requests the coordinator holds (JoinGroup, SyncGroup).

The coordinator (``umlog.groups.coordinator``, owned by the hub) knows no bytes and no sockets: the
handlers translate kio requests into its calls and its answers into kio
responses. A held request is an asyncio future resolved by the coordinator's
``respond`` callback; if the client goes away meanwhile, the connection's task
is cancelled, the future with it, and the late answer is dropped (the member
is then evicted by its session timeout, as in Kafka).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from kio.schema.errors import ErrorCode

from umlog.groups.coordinator import Err

__all__ = ["code", "waiter", "client_host"]

_CODES = {e: ErrorCode[e.value] for e in Err}


def code(err: Err) -> ErrorCode:
    """The wire code of a coordinator error (same names as Kafka's Errors)."""
    return _CODES[err]


def waiter() -> tuple[asyncio.Future, Callable[[Any], None]]:
    """A future and the ``respond`` callback that resolves it (once; late answers dropped)."""
    fut = asyncio.get_running_loop().create_future()

    def respond(result: Any) -> None:
        if not fut.done():
            fut.set_result(result)

    return fut, respond


def client_host(ctx) -> str:
    """Kafka's form: ``/`` and the peer's address."""
    conn = ctx.conn
    peer = getattr(conn, "peer", None) if conn is not None else None
    if not peer or peer == "?":
        return ""
    host = peer.rsplit(":", 1)[0]
    return "/" + host

"""Authentication and authorization of HTTP requests (security on: ``hub.security``).

Every path but ``/healthz`` and ``/readyz`` needs credentials: HTTP Basic
(checked against the users, ``hub.authenticate_plain``) or, on an ``https``
listener with ``tls_client_ca``, a client certificate (principal
``User:<subject>``). Missing or wrong credentials: 401 with
``WWW-Authenticate: Basic realm="umlog"``; an ACL denial: 403. Both are
JSON ``{"error_code", "message"}`` like every error of the door.

What each route needs (the hub's authorizer, Kafka's operations):

=========================================  ====================================
GET /topics                                 authenticated; lists only topics
                                            the principal may DESCRIBE
GET /topics/{t}[/partitions...]             DESCRIBE on TOPIC t
POST /topics/{t}[/partitions/{p}]           WRITE on TOPIC t
GET /topics/{t}/events, /topics/{t}/ws      READ on TOPIC t
/consumers/{g}...                           READ on GROUP g; subscribing or
                                            assigning also READ on each topic
                                            (a topic_pattern: super users only)
/metrics                                    DESCRIBE on the CLUSTER
GET /                                       authenticated
anything else (GET / other methods)         DESCRIBE / ALTER on the CLUSTER
=========================================  ====================================
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

__all__ = ["check", "filter_listing", "OPEN_PATHS"]

OPEN_PATHS = frozenset({"/healthz", "/readyz"})


def _error(status: int, message: str, basic: bool = False):
    from aiohttp import web

    headers = {"WWW-Authenticate": 'Basic realm="umlog", charset="UTF-8"'} if basic else None
    return web.Response(body=json.dumps({"error_code": status, "message": message}).encode(), status=status,
                        content_type="application/json", headers=headers)


def _principal(door, request) -> str | None:
    hub = door.hub
    peer = request.remote
    header = request.headers.get("Authorization", "")
    if header[:6].lower() == "basic ":
        try:
            user, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if not sep:
            return None
        return hub.authenticate_plain(user, password, "http", peer)
    from ..security.tls import cert_principal

    return cert_principal(request.transport)


async def check(door, request) -> Any:
    """None when the request may go on (``request["principal"]`` set), else the
    401/403 response."""
    path = request.path
    if path in OPEN_PATHS:
        return None
    principal = _principal(door, request)
    if principal is None:
        return _error(401, "authentication required: HTTP Basic with a umlog user (umlog users add)", True)
    request["principal"] = principal
    need = await _needs(request)
    hub = door.hub
    for op, rtype, name in need:
        if not hub.authorize(principal, op, rtype, name, request.remote or "*", "http", request.remote):
            return _error(403, f"{principal} may not {op} {rtype} {name}")
    return None


async def _needs(request) -> list[tuple[str, str, str]]:
    from ..security.acls import CLUSTER_NAME

    route = request.match_info.route
    resource = getattr(route, "resource", None)
    canonical = resource.canonical if resource is not None else ""
    info = request.match_info
    method = request.method
    if canonical == "/topics" or (canonical == "/" and method == "GET"):
        return []
    if canonical.startswith("/topics/{topic}"):
        topic = info["topic"]
        if canonical in ("/topics/{topic}/events", "/topics/{topic}/ws"):
            return [("READ", "TOPIC", topic)]
        return [("WRITE" if method == "POST" else "DESCRIBE", "TOPIC", topic)]
    if canonical.startswith("/consumers/{group}"):
        need = [("READ", "GROUP", info["group"])]
        if method == "POST" and canonical.endswith(("/subscription", "/assignments")):
            try:
                body = await request.json()
            except (ValueError, UnicodeDecodeError):
                body = None
            if isinstance(body, dict):
                if body.get("topic_pattern") is not None:
                    need.append(("ALTER", "CLUSTER", CLUSTER_NAME))  # every topic it may match: super users
                for t in body.get("topics") or ():
                    if isinstance(t, str):
                        need.append(("READ", "TOPIC", t))
                for p in body.get("partitions") or ():
                    if isinstance(p, dict) and isinstance(p.get("topic"), str):
                        need.append(("READ", "TOPIC", p["topic"]))
        return need
    if canonical == "/metrics":
        return [("DESCRIBE", "CLUSTER", CLUSTER_NAME)]
    return [("DESCRIBE" if method in ("GET", "HEAD") else "ALTER", "CLUSTER", CLUSTER_NAME)]


def filter_listing(door, request, response):
    """GET /topics: leave out the topics the principal may not DESCRIBE."""
    principal = request.get("principal")
    if principal is None or request.path != "/topics" or request.method != "GET" or response.status != 200:
        return response
    try:
        names = json.loads(response.body)
    except (TypeError, ValueError):
        return response
    if not isinstance(names, list):
        return response
    az = door.hub.authorizer
    host = request.remote or "*"
    keep = [n for n in names if isinstance(n, str) and az.authorize(principal, "DESCRIBE", "TOPIC", n, host)]
    from .door import json_response

    return json_response(keep)

"""SaslHandshake (key 17): pick the SASL mechanism of a SASL listener's connection.

Only v1 (the exchange continues in SaslAuthenticate requests, KIP-152); v0's
raw token framing is not served. Mechanisms: ``[security] sasl_mechanisms``
(PLAIN, SCRAM-SHA-256, SCRAM-SHA-512). A handshake on an authenticated
connection starts a re-authentication (KIP-368), which must name the same
principal again. On a listener without SASL, or without security, the
answer is ILLEGAL_SASL_STATE.
"""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from ._util import make, response_module

API_KEY = 17
API_VERSIONS = (1, 1)
# librdkafka before 1.x looks for v0 in ApiVersions before it uses SASL at all
# (then picks v1); a v0 request itself is answered UNSUPPORTED_VERSION.
ADVERTISED_VERSIONS = (0, 1)


class SaslState:
    """The exchange of one connection: its mechanism and, for SCRAM, the server side."""

    __slots__ = ("mechanism", "scram", "user")

    def __init__(self, mechanism: str) -> None:
        self.mechanism = mechanism
        self.scram = None
        self.user: str | None = None


async def handle_sasl_handshake(ctx, req):
    mod = response_module(ctx)
    security = ctx.door.security
    conn = ctx.conn
    listener = getattr(conn, "listener", None)
    if security is None or listener is None or not listener.sasl:
        return make(mod.SaslHandshakeResponse, error_code=ErrorCode.illegal_sasl_state, mechanisms=())
    offered = tuple(security.mechanisms)
    if req.mechanism not in offered:
        return make(mod.SaslHandshakeResponse, error_code=ErrorCode.unsupported_sasl_mechanism, mechanisms=offered)
    conn.sasl = SaslState(req.mechanism)
    return make(mod.SaslHandshakeResponse, error_code=ErrorCode.none, mechanisms=offered)

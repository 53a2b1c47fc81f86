"""SaslAuthenticate (key 36): the SASL exchange after SaslHandshake.

PLAIN (RFC 4616: ``authzid NUL user NUL password``, authzid empty or the
user) is checked against the user's stored SCRAM credential
(``hub.authenticate_plain``). SCRAM-SHA-256/512 (RFC 5802, the ``scramp``
package) takes two requests: client-first -> server-first, client-final ->
server-final. Success makes the connection's principal ``User:<name>``; the
response's ``session_lifetime`` (v1+) is ``[security]
connections_max_reauth_ms`` (0: none), after which the client must
authenticate again on the same connection (KIP-368), as the same user.

Failure answers SASL_AUTHENTICATION_FAILED and the connection is closed
after the answer, as Kafka does. Every outcome is audited.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from kio.schema.errors import ErrorCode

from ._util import make, ms, response_module

API_KEY = 36
API_VERSIONS = (0, 2)

log = logging.getLogger("umlog.server.kafka")

_FAILED = "Authentication failed: invalid username or password"


def _unescape(name: str) -> str:
    return name.replace("=2C", ",").replace("=3D", "=")


async def handle_sasl_authenticate(ctx, req):
    mod = response_module(ctx)
    conn = ctx.conn
    security = ctx.door.security
    state = getattr(conn, "sasl", None)
    if security is None or state is None:
        return make(mod.SaslAuthenticateResponse, error_code=ErrorCode.illegal_sasl_state,
                    error_message="SaslAuthenticate without a SaslHandshake", auth_bytes=b"", session_lifetime=ms(0))
    hub = ctx.door.hub
    principal = None
    out = b""
    try:
        if state.mechanism == "PLAIN":
            parts = bytes(req.auth_bytes).split(b"\0")
            if len(parts) != 3:
                raise ValueError("malformed PLAIN message")
            authzid, user, password = (p.decode("utf-8") for p in parts)
            if authzid and authzid != user:
                raise ValueError("authorization id differs from the user")
            principal = hub.authenticate_plain(user, password, "kafka", conn.peer)
            if principal is None:
                return _fail(ctx, mod, conn, None)
        else:
            principal, out = _scram(ctx, state, bytes(req.auth_bytes))
            if principal is None and out is None:
                return _fail(ctx, mod, conn, state.user)
            if principal is None:  # server-first: the exchange goes on
                return make(mod.SaslAuthenticateResponse, error_code=ErrorCode.none, error_message=None,
                            auth_bytes=out, session_lifetime=ms(0))
    except (ValueError, UnicodeDecodeError) as e:
        log.info("kafka %s: SASL %s: %s", conn.peer, state.mechanism, e)
        hub.audit("umlog.security.authentication", "kafka", None, None, conn.peer, state.mechanism, "failure",
                  str(e))
        return _fail(ctx, mod, conn, None)
    if conn.principal is not None and conn.principal != principal and conn.session_expires is not None:
        log.warning("kafka %s: re-authentication as %s, not %s; closing", conn.peer, principal, conn.principal)
        return _fail(ctx, mod, conn, None)
    conn.principal = principal
    conn.sasl = None
    lifetime = security.reauth_ms
    conn.session_expires = asyncio.get_running_loop().time() + lifetime / 1000 if lifetime else None
    return make(mod.SaslAuthenticateResponse, error_code=ErrorCode.none, error_message=None, auth_bytes=out,
                session_lifetime=ms(lifetime))


def _scram(ctx, state, data: bytes):
    """(principal, server-final) when done, (None, server-first) mid-way, (None, None) on failure."""
    from scramp import ScramException, ScramMechanism

    security = ctx.door.security
    conn = ctx.conn
    hub = ctx.door.hub
    if state.scram is None:

        def lookup(user):
            state.user = _unescape(user)
            found = security.users.lookup(state.user, state.mechanism)
            if found is None:
                raise ScramException("unknown user")
            return found

        server = ScramMechanism(state.mechanism).make_server(lookup, s_nonce=secrets.token_hex(18))
        try:
            server.set_client_first(data.decode("utf-8"))
            first = server.get_server_first()
        except ScramException as e:
            log.info("kafka %s: %s client-first refused: %s", conn.peer, state.mechanism, e)
            hub.audit("umlog.security.authentication", "kafka", f"user:{state.user}", f"User:{state.user}",
                      conn.peer, state.mechanism, "failure", str(e))
            return None, None
        state.scram = server
        return None, first.encode()
    try:
        state.scram.set_client_final(data.decode("utf-8"))
        final = state.scram.get_server_final()
    except ScramException as e:
        log.info("kafka %s: %s client-final refused: %s", conn.peer, state.mechanism, e)
        hub.audit("umlog.security.authentication", "kafka", f"user:{state.user}", f"User:{state.user}", conn.peer,
                  state.mechanism, "failure", str(e))
        return None, None
    hub.audit("umlog.security.authentication", "kafka", f"user:{state.user}", f"User:{state.user}", conn.peer,
              state.mechanism, "success")
    return f"User:{state.user}", final.encode()


def _fail(ctx, mod, conn, user):
    conn.sasl = None
    conn.close_after_answer = True
    return make(mod.SaslAuthenticateResponse, error_code=ErrorCode.sasl_authentication_failed,
                error_message=_FAILED, auth_bytes=b"", session_lifetime=ms(0))

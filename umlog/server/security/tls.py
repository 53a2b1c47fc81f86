"""TLS for every door's listeners: stdlib ``ssl``, TLS 1.2 and later.

``TlsContexts.server(cert, key, client_ca)`` makes one server context per
(cert, key, client CA) and remembers it; ``reload()`` (the server calls it on
SIGHUP) loads every remembered context's files again *into the same context
objects*: new handshakes use the new certificate, connections already open
keep theirs and are never dropped. Files that do not load (a half-written
key, a certificate that does not match its key) are tried in a scratch
context first, so a bad reload leaves the old certificate serving and says
why in one log line.

With ``client_ca`` the listener requires a client certificate signed by it
(mTLS); the connection's principal is then ``User:`` + the certificate's
subject in RFC 4514 order (``User:CN=alice,O=Example``), as Kafka's default
SSL principal builder makes it, unless SASL names another.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

__all__ = ["TlsContexts", "cert_principal"]

log = logging.getLogger("umlog.server.security")

_RDN_NAMES = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
              "countryName": "C", "stateOrProvinceName": "ST", "localityName": "L", "domainComponent": "DC",
              "emailAddress": "EMAILADDRESS", "streetAddress": "STREET", "userId": "UID"}


def cert_principal(transport: Any) -> str | None:
    """``User:<subject>`` of the client certificate a TLS transport verified, or None."""
    obj = transport.get_extra_info("ssl_object") if transport is not None else None
    if obj is None:
        return None
    try:
        cert = obj.getpeercert()
    except (ValueError, ssl.SSLError):
        return None
    if not cert or "subject" not in cert:
        return None
    rdns = []
    for rdn in reversed(cert["subject"]):
        rdns.append("+".join(f"{_RDN_NAMES.get(k, k)}={_escape(v)}" for k, v in rdn))
    return "User:" + ",".join(rdns) if rdns else None


def _escape(v: str) -> str:
    out = "".join("\\" + c if c in ',+"\\<>;=' else c for c in v)
    if out.startswith(("#", " ")):
        out = "\\" + out
    return out


def _load(ctx: ssl.SSLContext, cert: str, key: str, client_ca: str | None) -> None:
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.load_verify_locations(cafile=client_ca)


def _new(client_ca: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class TlsContexts:
    def __init__(self) -> None:
        self._contexts: dict[tuple, ssl.SSLContext] = {}

    def server(self, cert: str | None, key: str | None, client_ca: str | None = None,
               where: str = "") -> ssl.SSLContext:
        """The server context of these files (ValueError naming ``where`` when they
        are missing or do not load)."""
        if not cert or not key:
            raise ValueError(f"{where}: a TLS listener needs tls_cert and tls_key")
        k = (cert, key, client_ca)
        ctx = self._contexts.get(k)
        if ctx is None:
            ctx = _new(client_ca)
            try:
                _load(ctx, cert, key, client_ca)
            except (OSError, ssl.SSLError) as e:
                raise ValueError(f"{where}: cannot load the TLS certificate {cert} / key {key}: {e}") from None
            self._contexts[k] = ctx
        return ctx

    def reload(self) -> list[str]:
        """Load every context's files again (SIGHUP); the problems, one string each."""
        problems = []
        for (cert, key, ca), ctx in self._contexts.items():
            try:
                _load(_new(ca), cert, key, ca)  # a bad file must not reach the serving context
                _load(ctx, cert, key, ca)
                log.info("TLS certificate %s reloaded", cert)
            except (OSError, ssl.SSLError) as e:
                problems.append(f"{cert}: {e}")
                log.error("TLS certificate %s not reloaded, the old one still serves: %s", cert, e)
        return problems

"""The ``[security]`` table, the doors' TLS keys and listener addresses; a light module.

Listeners: a door's ``listen`` is one address or a list of them, each
``SCHEME://HOST:PORT`` or a bare ``HOST:PORT`` (the door's plain scheme).
Schemes: Kafka ``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT``, ``SASL_SSL`` (any
case); MQTT ``mqtt``, ``mqtts``, ``ws``, ``wss``; HTTP ``http``, ``https``.
"""

from __future__ import annotations

import dataclasses

from ..settings import Setting, SettingsError, parse_hostport

__all__ = ["SECURITY_SETTINGS", "Listener", "parse_listeners", "tls_settings", "KAFKA_SCHEMES", "MQTT_SCHEMES",
           "HTTP_SCHEMES"]

KAFKA_SCHEMES = ("plaintext", "ssl", "sasl_plaintext", "sasl_ssl")
MQTT_SCHEMES = ("mqtt", "mqtts", "ws", "wss")
HTTP_SCHEMES = ("http", "https")
_TLS = {"ssl", "sasl_ssl", "mqtts", "wss", "https"}
_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883, "ws": 8083, "wss": 8084, "http": 8080, "https": 8443}

_INT31 = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Listener:
    scheme: str  # lower case
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme in _TLS

    @property
    def sasl(self) -> bool:
        return self.scheme.startswith("sasl_")


def parse_listeners(value, schemes: tuple[str, ...], default_port: int = 9092) -> list[Listener]:
    """``listen`` (a string or a list) -> listeners; ValueError naming a bad one."""
    items = [value] if isinstance(value, str) else list(value or ())
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{item!r} is not an address")
        scheme, sep, rest = item.partition("://")
        if not sep:
            scheme, rest = schemes[0], item
        scheme = scheme.lower()
        if scheme not in schemes:
            raise ValueError(f"{item!r}: scheme {scheme!r} is not one of {', '.join(schemes)}")
        host, port = parse_hostport(rest, _DEFAULT_PORTS.get(scheme, default_port))
        out.append(Listener(scheme, host, port))
    if not out:
        raise ValueError("no listener given")
    return out


def tls_settings(table: str) -> tuple[Setting, ...]:
    return (
        Setting(table, "tls_cert", "str", None,
                "PEM certificate (chain) of this door's TLS listeners; reloaded on SIGHUP.",
                flag=f"--{table}-tls-cert"),
        Setting(table, "tls_key", "str", None, "PEM private key of tls_cert.", flag=f"--{table}-tls-key"),
        Setting(table, "tls_client_ca", "str", None,
                "PEM CA bundle: TLS clients must present a certificate it signed (mTLS; the principal is "
                "User:<subject>) [default: no client certificates].", flag=f"--{table}-tls-client-ca"),
    )


SECURITY_SETTINGS: tuple[Setting, ...] = (
    Setting("security", "super_users", "strlist", [],
            "Principals allowed everything, e.g. [\"User:admin\"]. The [security] table itself switches "
            "authentication and ACLs on for every door."),
    Setting("security", "allow_everyone_if_no_acl_found", "bool", False,
            "A resource no ACL names is open to everyone (Kafka's allow.everyone.if.no.acl.found)."),
    Setting("security", "sasl_mechanisms", "strlist", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
            "SASL mechanisms the Kafka door offers (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)."),
    Setting("security", "connections_max_reauth_ms", "int", 0,
            "SASL sessions last this long, then a Kafka client must authenticate again on its "
            "connection (KIP-368; Kafka's connections.max.reauth.ms); 0: forever.", min=0, max=_INT31),
    Setting("security", "audit", "bool", True,
            "Record authentications, denials and admin changes in the topic __audit."),
    Setting("security", "audit_retention_ms", "int", 7 * 24 * 3600 * 1000,
            "retention.ms of the topic __audit.", min=60_000, max=2**62),
)


def check_security(table: dict) -> None:
    """Checks across keys of [security] (the CLI names the file)."""
    bad = [m for m in table.get("sasl_mechanisms", ()) if m not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")]
    if bad:
        raise SettingsError(f"security.sasl_mechanisms: unknown mechanism {bad[0]!r}")
    bad = [p for p in table.get("super_users", ()) if ":" not in p]
    if bad:
        raise SettingsError(f"security.super_users: {bad[0]!r} is not a principal (User:NAME)")

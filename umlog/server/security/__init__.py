"""Security for every door: users, ACLs, one authorizer, the audit log, TLS.

A ``[security]`` table in the config switches authentication and
authorization on for every door at once; without it nothing here runs
(``hub.security`` is None) and no door pays for it. The pieces:

* ``users``: SCRAM credentials in ``DATA/meta/users.json`` (``umlog users``,
  Kafka's AlterUserScramCredentials). Kafka SASL PLAIN/SCRAM, MQTT CONNECT
  and HTTP Basic all check these.
* ``acls``: Kafka's ACL model in ``DATA/meta/acls.json`` and the
  ``Authorizer`` (``umlog acls``, CreateAcls/DescribeAcls/DeleteAcls).
* ``audit``: every authentication, denial and admin change as a CloudEvent in
  the topic ``__audit``.
* ``tls``: server contexts of every door's TLS listeners, reloaded on SIGHUP.
* ``settings``: ``[security]``, the doors' ``tls_*`` keys, listener addresses.

Principals are Kafka's strings: ``User:alice``; ``User:ANONYMOUS`` for a
client of a listener without SASL and without a client certificate (governed
by ACLs like anyone, so denied by default); ``User:CN=...`` for a verified
client certificate.

The API every door uses (and the AMQP door will), through the hub::

    principal = hub.authenticate_plain(user, password, source="mqtt", client=peer)   # or None
    hub.authorize(principal, "WRITE", "TOPIC", "orders", host, source="mqtt", client=peer) -> bool
    hub.audit("umlog.admin.create_topics", "kafka", "topic:orders", principal, peer, "CREATE", "success")

``hub.authorizer.authorize(principal, operation, resource_type, name, host)``
is the bare decision (no audit record).
"""

from __future__ import annotations

import logging
from typing import Any

from .acls import CLUSTER_NAME, AclStore, Authorizer, Operation, ResourceType
from .audit import AUDIT_TOPIC, Audit
from .users import UserStore

__all__ = ["Security", "ANONYMOUS", "CLUSTER_NAME", "Operation", "ResourceType", "AUDIT_TOPIC"]

ANONYMOUS = "User:ANONYMOUS"

log = logging.getLogger("umlog.server.security")


class Security:
    """Users, the authorizer and the audit of one server (see the module docstring)."""

    def __init__(self, broker: Any, options: dict[str, Any], create_topic=None) -> None:
        path = broker.path
        self.options = options
        self.users = UserStore(path)
        self.acls = AclStore(path)
        self.authorizer = Authorizer(self.acls, options.get("super_users") or (),
                                     bool(options.get("allow_everyone_if_no_acl_found")))
        self.mechanisms = tuple(options.get("sasl_mechanisms") or ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"))
        self.reauth_ms = int(options.get("connections_max_reauth_ms") or 0)
        self.audit_log = Audit(broker, options.get("audit_retention_ms") or 7 * 86_400_000, create_topic) \
            if options.get("audit", True) else None
        self.users.on_change = self._users_changed
        self.users.refresh()
        if self.audit_log is not None:
            self.audit_log.topic()

    def _users_changed(self, added, removed, changed) -> None:
        log.info("users changed on disk: added %s, removed %s, changed %s", added, removed, changed)
        self.audit("umlog.admin.users_file", "server", "users", None, None, "ALTER", "success",
                   added=added, removed=removed, changed=changed)

    def refresh(self) -> None:
        """Look for changes made by ``umlog users`` / ``umlog acls`` (every second)."""
        self.acls.refresh()
        self.users.refresh()

    def audit(self, type_: str, source: str, subject: str | None, principal: str | None, client: str | None,
              operation: str | None, result: str, reason: str | None = None, **extra: Any) -> None:
        if self.audit_log is not None:
            self.audit_log.record(type_, source, subject, principal, client, operation, result, reason, **extra)

    def authenticate_plain(self, user: str | None, password: str | None, source: str, client: str | None,
                           mechanism: str = "PLAIN") -> str | None:
        """``User:<user>`` when the password is right, else None; audited either way."""
        ok = bool(user) and password is not None and self.users.verify_plain(user, password)
        principal = f"User:{user}" if ok else None
        self.audit("umlog.security.authentication", source, f"user:{user}", f"User:{user}", client, mechanism,
                   "success" if ok else "failure", None if ok else "unknown user or bad password")
        return principal

    def authorize(self, principal: str, operation: str | Operation, resource_type: str | ResourceType, name: str,
                  host: str = "*", source: str = "", client: str | None = None) -> bool:
        """The authorizer's decision; a denial is audited."""
        if self.authorizer.authorize(principal, operation, resource_type, name, host):
            return True
        op = operation.name if isinstance(operation, Operation) else str(operation).upper()
        rt = resource_type.name if isinstance(resource_type, ResourceType) else str(resource_type).upper()
        self.audit("umlog.security.denied", source, f"{rt.lower()}:{name}", principal, client, op, "denied",
                   f"{principal} may not {op} {rt} {name}")
        return False

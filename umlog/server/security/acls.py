"""ACLs in Kafka's model, and the one authorizer every door asks.

A binding is Kafka's: (principal, host, operation, permission) on a resource
pattern (type TOPIC, GROUP, CLUSTER or TRANSACTIONAL_ID; a name, LITERAL or
PREFIXED; the LITERAL name ``*`` is every resource of the type). They live in
``DATA/meta/acls.json`` (replaced atomically under ``acls.json.lock``),
changed by CreateAcls/DeleteAcls through the Kafka door or by ``umlog acls``
on the data dir; a running server re-reads the file within a second of a
change made elsewhere.

``Authorizer.authorize(principal, operation, resource_type, name, host)``
decides as Kafka's AclAuthorizer does:

1. a super user (``[security] super_users``) may do anything;
2. no binding on the resource at all (any principal): allowed only when
   ``allow_everyone_if_no_acl_found``;
3. a matching DENY (its operation the one asked or ALL) wins;
4. else a matching ALLOW of the operation, of ALL, or of one that implies it
   (READ, WRITE, DELETE and ALTER imply DESCRIBE; ALTER_CONFIGS implies
   DESCRIBE_CONFIGS) allows;
5. else denied.

A binding matches the principal when equal or ``User:*``, the host when equal
or ``*``. Decisions are cached until the ACLs change, so a produce pays one
dict lookup per topic.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
from collections.abc import Iterable
from typing import Any

__all__ = ["Operation", "ResourceType", "PatternType", "Permission", "AclBinding", "AclFilter", "AclStore",
           "Authorizer"]

FILE_NAME = "acls.json"


class ResourceType(enum.IntEnum):  # Kafka's wire codes
    UNKNOWN = 0
    ANY = 1
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5
    DELEGATION_TOKEN = 6
    USER = 7


class PatternType(enum.IntEnum):
    UNKNOWN = 0
    ANY = 1
    MATCH = 2
    LITERAL = 3
    PREFIXED = 4


class Operation(enum.IntEnum):
    UNKNOWN = 0
    ANY = 1
    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    CLUSTER_ACTION = 9
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11
    IDEMPOTENT_WRITE = 12


class Permission(enum.IntEnum):
    UNKNOWN = 0
    ANY = 1
    DENY = 2
    ALLOW = 3


# operation asked -> operations whose ALLOW also allows it
_IMPLIED = {
    Operation.DESCRIBE: (Operation.DESCRIBE, Operation.READ, Operation.WRITE, Operation.DELETE, Operation.ALTER),
    Operation.DESCRIBE_CONFIGS: (Operation.DESCRIBE_CONFIGS, Operation.ALTER_CONFIGS),
}

CLUSTER_NAME = "kafka-cluster"  # the one CLUSTER resource's name, as Kafka's


def _enum(cls, value):
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        try:
            return cls[value.upper().replace("-", "_")]
        except KeyError:
            raise ValueError(f"unknown {cls.__name__.lower()} {value!r}") from None
    return cls(int(value))


@dataclasses.dataclass(frozen=True)
class AclBinding:
    resource_type: ResourceType
    name: str
    pattern_type: PatternType
    principal: str
    host: str
    operation: Operation
    permission: Permission

    def __post_init__(self) -> None:
        for f, cls in (("resource_type", ResourceType), ("pattern_type", PatternType), ("operation", Operation),
                       ("permission", Permission)):
            object.__setattr__(self, f, _enum(cls, getattr(self, f)))

    def check(self) -> str | None:
        """Why this binding cannot be stored (a message), or None."""
        if self.resource_type not in (ResourceType.TOPIC, ResourceType.GROUP, ResourceType.CLUSTER,
                                      ResourceType.TRANSACTIONAL_ID):
            return f"resource type {self.resource_type.name} is not supported"
        if self.pattern_type not in (PatternType.LITERAL, PatternType.PREFIXED):
            return f"pattern type {self.pattern_type.name} cannot be stored (LITERAL or PREFIXED)"
        if self.operation in (Operation.ANY, Operation.UNKNOWN):
            return f"operation {self.operation.name} cannot be stored"
        if self.permission not in (Permission.ALLOW, Permission.DENY):
            return f"permission {self.permission.name} cannot be stored"
        if not self.principal or ":" not in self.principal:
            return f"principal {self.principal!r} is not TYPE:NAME (e.g. User:alice)"
        if not self.name:
            return "empty resource name"
        if self.resource_type == ResourceType.CLUSTER and self.name != CLUSTER_NAME:
            return f"the cluster resource is named {CLUSTER_NAME!r}"
        return None

    def to_json(self) -> dict[str, Any]:
        return {"resource_type": self.resource_type.name, "name": self.name,
                "pattern_type": self.pattern_type.name, "principal": self.principal, "host": self.host,
                "operation": self.operation.name, "permission": self.permission.name}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AclBinding:
        return cls(d["resource_type"], d["name"], d["pattern_type"], d["principal"], d.get("host", "*"),
                   d["operation"], d["permission"])

    def describe(self) -> str:
        return (f"{self.permission.name} {self.principal} from {self.host} {self.operation.name} on "
                f"{self.resource_type.name} {self.pattern_type.name} {self.name!r}")


@dataclasses.dataclass(frozen=True)
class AclFilter:
    """A DescribeAcls/DeleteAcls filter: None (or ANY) fields match anything;
    pattern MATCH matches bindings that would apply to the named resource."""

    resource_type: ResourceType = ResourceType.ANY
    name: str | None = None
    pattern_type: PatternType = PatternType.ANY
    principal: str | None = None
    host: str | None = None
    operation: Operation = Operation.ANY
    permission: Permission = Permission.ANY

    def __post_init__(self) -> None:
        for f, cls in (("resource_type", ResourceType), ("pattern_type", PatternType), ("operation", Operation),
                       ("permission", Permission)):
            object.__setattr__(self, f, _enum(cls, getattr(self, f)))

    def matches(self, b: AclBinding) -> bool:
        if self.resource_type != ResourceType.ANY and b.resource_type != self.resource_type:
            return False
        if self.principal is not None and b.principal != self.principal:
            return False
        if self.host is not None and b.host != self.host:
            return False
        if self.operation != Operation.ANY and b.operation != self.operation:
            return False
        if self.permission != Permission.ANY and b.permission != self.permission:
            return False
        pt = self.pattern_type
        if pt == PatternType.MATCH:
            if self.name is None:
                return True
            return _name_matches(b, self.name)
        if pt not in (PatternType.ANY,) and b.pattern_type != pt:
            return False
        return self.name is None or b.name == self.name


def _name_matches(b: AclBinding, name: str) -> bool:
    if b.pattern_type == PatternType.LITERAL:
        return b.name == name or b.name == "*"
    return name.startswith(b.name)


class AclStore:
    """The bindings of one data dir's ``meta/acls.json``."""

    def __init__(self, data_dir: str) -> None:
        self.path = os.path.join(data_dir, "meta", FILE_NAME)
        self._stamp: tuple | None = None
        self.bindings: list[AclBinding] = []
        self.version = 0  # bumped at each change seen

    def _file_stamp(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def refresh(self) -> bool:
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return False
        self.bindings = self._read()
        self._stamp = stamp
        self.version += 1
        return True

    def _read(self) -> list[AclBinding]:
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read())
        except FileNotFoundError:
            return []
        out = []
        for d in data.get("acls", []) if isinstance(data, dict) else []:
            try:
                out.append(AclBinding.from_json(d))
            except (KeyError, ValueError, TypeError):
                continue
        return out

    def _locked(self):
        from umlog.log.files import file_lock

        return file_lock(self.path)

    def _write(self, bindings: list[AclBinding]) -> None:
        from umlog.log.files import atomic_write_json

        atomic_write_json(self.path, {"version": 1, "acls": [b.to_json() for b in bindings]})

    def add(self, new: Iterable[AclBinding]) -> list[AclBinding]:
        """Store ``new`` (already-stored ones are kept once); returns what was added."""
        new = list(new)
        for b in new:
            why = b.check()
            if why is not None:
                raise ValueError(why)
        with self._locked():
            have = self._read()
            added = [b for b in dict.fromkeys(new) if b not in have]
            if added:
                self._write(have + added)
        self.refresh()
        return added

    def remove(self, filters: Iterable[AclFilter]) -> list[list[AclBinding]]:
        """Delete every binding matching each filter; per filter, the bindings it deleted."""
        filters = list(filters)
        with self._locked():
            have = self._read()
            per = [[b for b in have if f.matches(b)] for f in filters]
            gone = {b for bs in per for b in bs}
            if gone:
                self._write([b for b in have if b not in gone])
        self.refresh()
        return per

    def describe(self, f: AclFilter) -> list[AclBinding]:
        self.refresh()
        return [b for b in self.bindings if f.matches(b)]


class Authorizer:
    """Kafka's authorization rules over an ``AclStore`` (module docstring)."""

    def __init__(self, store: AclStore, super_users: Iterable[str] = (),
                 allow_everyone_if_no_acl_found: bool = False) -> None:
        self.store = store
        self.super_users = frozenset(super_users)
        self.allow_if_no_acl = allow_everyone_if_no_acl_found
        self._cache: dict[tuple, bool] = {}
        self._version = -1
        store.refresh()

    def refresh(self) -> None:
        """Look at the file again (the server calls this every second)."""
        self.store.refresh()

    def authorize(self, principal: str, operation: Operation | str, resource_type: ResourceType | str, name: str,
                  host: str = "*") -> bool:
        """May ``principal`` connecting from ``host`` do ``operation`` on the resource?"""
        if principal in self.super_users:
            return True
        if self._version != self.store.version:
            self._cache.clear()
            self._version = self.store.version
        key = (principal, host, operation, resource_type, name)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        op = _enum(Operation, operation)
        rtype = _enum(ResourceType, resource_type)
        allowed = self._decide(principal, op, rtype, name, host)
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[key] = allowed
        return allowed

    def _decide(self, principal: str, op: Operation, rtype: ResourceType, name: str, host: str) -> bool:
        acls = [b for b in self.store.bindings if b.resource_type == rtype and _name_matches(b, name)]
        if not acls:
            return self.allow_if_no_acl

        def who(b: AclBinding) -> bool:
            return (b.principal == principal or b.principal == "User:*") and (b.host == "*" or b.host == host)

        for b in acls:
            if b.permission == Permission.DENY and who(b) and b.operation in (op, Operation.ALL):
                return False
        ok_ops = _IMPLIED.get(op, (op,))
        for b in acls:
            if b.permission == Permission.ALLOW and who(b) and (b.operation == Operation.ALL or b.operation in ok_ops):
                return True
        return False

    def authorize_any(self, principal: str, operation: Operation | str, resource_type: ResourceType | str,
                      host: str = "*") -> bool:
        """May the principal do ``operation`` on some resource of the type (Kafka's
        authorizeByResourceType, e.g. WRITE on any topic for an idempotent producer)?"""
        if principal in self.super_users:
            return True
        op = _enum(Operation, operation)
        rtype = _enum(ResourceType, resource_type)
        names = {b.name for b in self.store.bindings if b.resource_type == rtype}
        return any(self.authorize(principal, op, rtype, n if n != "*" else "*", host) for n in names)

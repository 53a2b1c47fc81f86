"""``umlog users add|passwd|remove|list`` and ``umlog acls add|list|remove``: security on a data dir.

Both edit files of ``DATA/meta`` (``users.json``, ``acls.json``; replaced
atomically under a lock, see ``umlog.server.security``), so they work whether
or not a server runs: a running ``umlog serve`` picks a change up within a
second, no restart. Passwords are read from a prompt, or from stdin with
``--password-stdin`` (one line); only salted SCRAM credentials are stored.
"""

from __future__ import annotations

import os
import sys

import click

from ._common import CliGroup, data_dir_option, emit_json, fail, json_option

__all__ = ["users", "acls"]


def _check_data_dir(data_dir: str) -> None:
    if not os.path.isdir(os.path.join(data_dir, "meta")):
        raise fail(f"no data dir at {data_dir} (start umlog serve or create a topic first)")


def _password(stdin: bool) -> str:
    if stdin:
        pw = sys.stdin.readline().rstrip("\r\n")
    else:
        pw = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not pw:
        raise fail("the password is empty")
    return pw


_pw_option = click.option("--password-stdin", "password_stdin", is_flag=True,
                          help="Read the password from the first line of stdin.")
_iter_option = click.option("--iterations", type=click.IntRange(4096, 16384), default=8192, show_default=True,
                            help="SCRAM iterations.")


@click.group("users", cls=CliGroup)
def users() -> None:
    """Users (SCRAM credentials) every door authenticates against: list, add, passwd, remove."""


@users.command("add")
@click.argument("name")
@_pw_option
@_iter_option
@data_dir_option
def users_add(name: str, password_stdin: bool, iterations: int, data_dir: str) -> None:
    """Add user NAME (SCRAM-SHA-256 and SCRAM-SHA-512 credentials)."""
    from umlog.server.security.users import UserStore

    _check_data_dir(data_dir)
    store = UserStore(data_dir)
    if name in store.users():
        raise fail(f"user {name!r} exists (umlog users passwd {name} to change the password)")
    try:
        store.set_password(name, _password(password_stdin), iterations=iterations)
    except ValueError as e:
        raise fail(str(e)) from None
    click.echo(f"added user {name}")


@users.command("passwd")
@click.argument("name")
@_pw_option
@_iter_option
@data_dir_option
def users_passwd(name: str, password_stdin: bool, iterations: int, data_dir: str) -> None:
    """Set user NAME's password."""
    from umlog.server.security.users import UserStore

    _check_data_dir(data_dir)
    store = UserStore(data_dir)
    if name not in store.users():
        raise fail(f"no user {name!r}")
    try:
        store.set_password(name, _password(password_stdin), iterations=iterations)
    except ValueError as e:
        raise fail(str(e)) from None
    click.echo(f"changed the password of {name}")


@users.command("remove")
@click.argument("name")
@data_dir_option
def users_remove(name: str, data_dir: str) -> None:
    """Remove user NAME (its ACLs stay: umlog acls remove --principal User:NAME)."""
    from umlog.server.security.users import UserStore

    _check_data_dir(data_dir)
    if not UserStore(data_dir).remove(name):
        raise fail(f"no user {name!r}")
    click.echo(f"removed user {name}")


@users.command("list")
@data_dir_option
@json_option
def users_list(data_dir: str, as_json: bool) -> None:
    """Every user and its SCRAM mechanisms (never a secret)."""
    from umlog.server.security.users import UserStore

    _check_data_dir(data_dir)
    rows = [{"user": u, "mechanisms": {m: c.get("iterations") for m, c in sorted(creds.items())}}
            for u, creds in sorted(UserStore(data_dir).users().items())]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        click.echo(f"{r['user']}\t" + " ".join(f"{m}({i})" for m, i in r["mechanisms"].items()))


_RESOURCE = click.Choice(["topic", "group", "cluster", "transactional-id"], case_sensitive=False)
_OPERATIONS = ["all", "read", "write", "create", "delete", "alter", "describe", "cluster-action",
               "describe-configs", "alter-configs", "idempotent-write"]


def _resource(topic, group, cluster, txn):
    given = [(k, v) for k, v in (("TOPIC", topic), ("GROUP", group), ("TRANSACTIONAL_ID", txn)) if v is not None]
    if cluster:
        from umlog.server.security.acls import CLUSTER_NAME

        given.append(("CLUSTER", CLUSTER_NAME))
    return given


_resource_options = [
    click.option("--topic", default=None, help="A topic name (or prefix with --prefixed; * for every topic)."),
    click.option("--group", default=None, help="A consumer group name (or prefix; * for every group)."),
    click.option("--transactional-id", "txn", default=None, help="A transactional id."),
    click.option("--cluster", is_flag=True, help="The cluster (admin operations)."),
]


def _with_resource_options(f):
    for o in reversed(_resource_options):
        f = o(f)
    return f


@click.group("acls", cls=CliGroup)
def acls() -> None:
    """ACLs in Kafka's model every door obeys: list, add, remove."""


@acls.command("add")
@click.option("--allow", "allow", multiple=True, help="Principal to allow (User:alice); repeatable.")
@click.option("--deny", "deny", multiple=True, help="Principal to deny (User:mallory); repeatable.")
@click.option("--operation", "operations", multiple=True, required=True,
              type=click.Choice(_OPERATIONS, case_sensitive=False), help="Operation; repeatable.")
@click.option("--host", default="*", show_default=True, help="Client IP address the ACL applies to.")
@click.option("--prefixed", is_flag=True, help="The resource name is a prefix (PREFIXED pattern).")
@_with_resource_options
@data_dir_option
def acls_add(allow, deny, operations, host, prefixed, topic, group, txn, cluster, data_dir: str) -> None:
    """Add ACLs: each principal x operation x resource given."""
    from umlog.server.security.acls import AclBinding, AclStore

    _check_data_dir(data_dir)
    resources = _resource(topic, group, cluster, txn)
    if not resources:
        raise fail("give a resource: --topic, --group, --transactional-id or --cluster")
    if not allow and not deny:
        raise fail("give --allow PRINCIPAL or --deny PRINCIPAL")
    pattern = "PREFIXED" if prefixed else "LITERAL"
    new = [AclBinding(rt, name, pattern, p, host, op, perm)
           for perm, principals in (("ALLOW", allow), ("DENY", deny)) for p in principals
           for op in operations for rt, name in resources]
    try:
        added = AclStore(data_dir).add(new)
    except ValueError as e:
        raise fail(str(e)) from None
    for b in added:
        click.echo(f"added {b.describe()}")


@acls.command("list")
@click.option("--principal", default=None, help="Only this principal's.")
@_with_resource_options
@data_dir_option
@json_option
def acls_list(principal, topic, group, txn, cluster, data_dir: str, as_json: bool) -> None:
    """Every ACL (or those of a principal / resource)."""
    from umlog.server.security.acls import AclFilter, AclStore

    _check_data_dir(data_dir)
    store = AclStore(data_dir)
    filters = [AclFilter(rt, name, "ANY", principal) for rt, name in _resource(topic, group, cluster, txn)] \
        or [AclFilter(principal=principal)]
    found = list(dict.fromkeys(b for f in filters for b in store.describe(f)))
    if as_json:
        emit_json([b.to_json() for b in found])
        return
    for b in found:
        click.echo(b.describe())


@acls.command("remove")
@click.option("--principal", default=None, help="Only this principal's.")
@click.option("--operation", "operation", default=None, type=click.Choice(_OPERATIONS, case_sensitive=False))
@_with_resource_options
@data_dir_option
def acls_remove(principal, operation, topic, group, txn, cluster, data_dir: str) -> None:
    """Remove the ACLs matching a principal and/or resource (and operation)."""
    from umlog.server.security.acls import AclFilter, AclStore

    _check_data_dir(data_dir)
    resources = _resource(topic, group, cluster, txn)
    if not resources and principal is None:
        raise fail("give a principal or a resource (removing every ACL needs both left out on purpose: not done)")
    op = operation or "ANY"
    filters = [AclFilter(rt, name, "ANY", principal, None, op) for rt, name in resources] \
        or [AclFilter(principal=principal, operation=op)]
    removed = {b for bs in AclStore(data_dir).remove(filters) for b in bs}
    for b in removed:
        click.echo(f"removed {b.describe()}")
    if not removed:
        raise fail("no ACL matched")

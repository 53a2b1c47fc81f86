"""Authorization of Kafka requests: which ACL each API needs, as Kafka asks.

Runs only with security on (``door.security`` set; ``dispatch`` skips this
module otherwise). ``check(ctx, req)`` is called before the handler and
returns an error code that refuses the *whole* request (answered with that
code in every error field: ``dispatch.error_response``), or None. Per-topic
answers are the handlers' own: Produce (WRITE), Fetch and ListOffsets (READ,
DESCRIBE) answer TOPIC_AUTHORIZATION_FAILED for the topics denied and serve
the others; Metadata leaves out the topics the principal may not DESCRIBE.

What each API needs (Kafka's table, simplified where noted):

===========================  =============================================
JoinGroup, SyncGroup,         READ on the GROUP
Heartbeat, LeaveGroup,
OffsetCommit, share APIs
OffsetCommit, OffsetDelete    and READ on every TOPIC named
OffsetFetch, DescribeGroups,  DESCRIBE on the GROUP
FindCoordinator
DeleteGroups, OffsetDelete    DELETE on the GROUP
ListGroups                    the groups the principal may DESCRIBE
CreateTopics                  CREATE on the CLUSTER or on each TOPIC
DeleteTopics                  DELETE on each TOPIC
CreatePartitions              ALTER on each TOPIC
DescribeConfigs               DESCRIBE_CONFIGS on each TOPIC / the CLUSTER
AlterConfigs, Incremental...  ALTER_CONFIGS on each TOPIC / the CLUSTER
InitProducerId                IDEMPOTENT_WRITE on the CLUSTER or WRITE on some TOPIC
DescribeAcls, Describe...Scram DESCRIBE on the CLUSTER
CreateAcls, DeleteAcls,       ALTER on the CLUSTER
AlterUserScramCredentials
===========================  =============================================

Simplified: an admin request naming several resources is refused whole when
one of them is denied (Kafka answers per resource).

``audited(ctx, req)`` after a handler: admin changes become ``umlog.admin.*``
records of ``__audit``.
"""

from __future__ import annotations

import dataclasses

from kio.schema.errors import ErrorCode

from ..security.acls import CLUSTER_NAME, Operation, ResourceType

__all__ = ["check", "audited", "allowed"]

TOPIC, GROUP, CLUSTER = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.CLUSTER
_TOPIC_DENIED = ErrorCode.topic_authorization_failed
_GROUP_DENIED = ErrorCode.group_authorization_failed
_CLUSTER_DENIED = ErrorCode.cluster_authorization_failed


def allowed(ctx, op: Operation, rtype: ResourceType, name: str, audit: bool = True) -> bool:
    """May this connection's principal do ``op`` on the resource? (A denial is audited.)"""
    conn = ctx.conn
    principal = getattr(conn, "principal", None) or "User:ANONYMOUS"
    host = getattr(conn, "host", "*")
    hub = ctx.door.hub
    if not audit:
        return hub.authorizer.authorize(principal, op, rtype, name, host)
    return hub.authorize(principal, op, rtype, name, host, "kafka", getattr(conn, "peer", None))


def _group(op: Operation):
    def fn(ctx, req):
        return None if allowed(ctx, op, GROUP, req.group_id) else _GROUP_DENIED
    return fn


def _group_and_topics(op: Operation):
    def fn(ctx, req):
        if not allowed(ctx, op, GROUP, req.group_id):
            return _GROUP_DENIED
        for t in req.topics or ():
            if not allowed(ctx, Operation.READ, TOPIC, t.name):
                return _TOPIC_DENIED
        return None
    return fn


def _offset_fetch(ctx, req):
    groups = [g.group_id for g in req.groups] if getattr(req, "groups", None) else [req.group_id]
    return None if all(allowed(ctx, Operation.DESCRIBE, GROUP, g) for g in groups) else _GROUP_DENIED


def _find_coordinator(ctx, req):
    if getattr(req, "key_type", 0) != 0:
        return None  # transactions: refused by the handler anyway
    keys = req.coordinator_keys if getattr(req, "coordinator_keys", None) else [req.key]
    return None if all(allowed(ctx, Operation.DESCRIBE, GROUP, k) for k in keys) else _GROUP_DENIED


def _describe_groups(ctx, req):
    return None if all(allowed(ctx, Operation.DESCRIBE, GROUP, g) for g in req.groups) else _GROUP_DENIED


def _delete_groups(ctx, req):
    return None if all(allowed(ctx, Operation.DELETE, GROUP, g) for g in req.groups_names) else _GROUP_DENIED


def _offset_delete(ctx, req):
    if not allowed(ctx, Operation.DELETE, GROUP, req.group_id):
        return _GROUP_DENIED
    return None if all(allowed(ctx, Operation.READ, TOPIC, t.name) for t in req.topics) else _TOPIC_DENIED


def _create_topics(ctx, req):
    if allowed(ctx, Operation.CREATE, CLUSTER, CLUSTER_NAME, audit=False):
        return None
    return None if all(allowed(ctx, Operation.CREATE, TOPIC, t.name) for t in req.topics) else _TOPIC_DENIED


def _topic_names(req):
    if hasattr(req, "topic_names"):
        return list(req.topic_names)
    return [t.name for t in req.topics if t.name is not None]


def _delete_topics(ctx, req):
    return None if all(allowed(ctx, Operation.DELETE, TOPIC, n) for n in _topic_names(req)) else _TOPIC_DENIED


def _create_partitions(ctx, req):
    return None if all(allowed(ctx, Operation.ALTER, TOPIC, t.name) for t in req.topics) else _TOPIC_DENIED


def _configs(op: Operation):
    def fn(ctx, req):
        for r in req.resources:
            rt = int(r.resource_type)
            if rt == 2 and not allowed(ctx, op, TOPIC, r.resource_name):
                return _TOPIC_DENIED
            if rt != 2 and not allowed(ctx, op, CLUSTER, CLUSTER_NAME):
                return _CLUSTER_DENIED
        return None
    return fn


def _init_producer_id(ctx, req):
    if getattr(req, "transactional_id", None) is not None:
        return None  # refused by the handler (no transactions)
    conn = ctx.conn
    principal = getattr(conn, "principal", None) or "User:ANONYMOUS"
    az = ctx.door.hub.authorizer
    host = getattr(conn, "host", "*")
    if (az.authorize(principal, Operation.IDEMPOTENT_WRITE, CLUSTER, CLUSTER_NAME, host)
            or az.authorize_any(principal, Operation.WRITE, TOPIC, host)):
        return None
    allowed(ctx, Operation.IDEMPOTENT_WRITE, CLUSTER, CLUSTER_NAME)  # audited
    return _CLUSTER_DENIED


def _cluster(op: Operation):
    def fn(ctx, req):
        return None if allowed(ctx, op, CLUSTER, CLUSTER_NAME) else _CLUSTER_DENIED
    return fn


CHECKS = {
    8: _group_and_topics(Operation.READ),  # OffsetCommit
    9: _offset_fetch,
    10: _find_coordinator,
    11: _group(Operation.READ),  # JoinGroup
    12: _group(Operation.READ),  # Heartbeat
    13: _group(Operation.READ),  # LeaveGroup
    14: _group(Operation.READ),  # SyncGroup
    15: _describe_groups,
    19: _create_topics,
    20: _delete_topics,
    22: _init_producer_id,
    29: _cluster(Operation.DESCRIBE),  # DescribeAcls
    30: _cluster(Operation.ALTER),  # CreateAcls
    31: _cluster(Operation.ALTER),  # DeleteAcls
    32: _configs(Operation.DESCRIBE_CONFIGS),
    33: _configs(Operation.ALTER_CONFIGS),
    37: _create_partitions,
    42: _delete_groups,
    44: _configs(Operation.ALTER_CONFIGS),
    47: _offset_delete,
    50: _cluster(Operation.DESCRIBE),  # DescribeUserScramCredentials
    51: _cluster(Operation.ALTER),  # AlterUserScramCredentials
    76: _group(Operation.READ),  # ShareGroupHeartbeat
    77: lambda ctx, req: None if all(allowed(ctx, Operation.DESCRIBE, GROUP, g) for g in req.group_ids)
    else _GROUP_DENIED,
    78: _group(Operation.READ),  # ShareFetch
    79: _group(Operation.READ),  # ShareAcknowledge
}


def check(ctx, req) -> ErrorCode | None:
    fn = CHECKS.get(ctx.api_key)
    return fn(ctx, req) if fn is not None else None


def filter_response(ctx, result):
    """ListGroups: only the groups the principal may DESCRIBE (unless it may DESCRIBE the cluster)."""
    if ctx.api_key == 16 and dataclasses.is_dataclass(result):
        if allowed(ctx, Operation.DESCRIBE, CLUSTER, CLUSTER_NAME, audit=False):
            return result
        keep = tuple(g for g in result.groups if allowed(ctx, Operation.DESCRIBE, GROUP, g.group_id, audit=False))
        return dataclasses.replace(result, groups=keep)
    return result


# admin APIs whose success is audited: key -> (name, operation, fn(req) -> subjects)
ADMIN = {
    19: ("create_topics", "CREATE", lambda r: [f"topic:{t.name}" for t in r.topics]),
    20: ("delete_topics", "DELETE", lambda r: [f"topic:{n}" for n in _topic_names(r)]),
    33: ("alter_configs", "ALTER_CONFIGS", lambda r: [f"config:{x.resource_name}" for x in r.resources]),
    44: ("incremental_alter_configs", "ALTER_CONFIGS",
         lambda r: [f"config:{x.resource_name}" for x in r.resources]),
    37: ("create_partitions", "ALTER", lambda r: [f"topic:{t.name}" for t in r.topics]),
    42: ("delete_groups", "DELETE", lambda r: [f"group:{g}" for g in r.groups_names]),
    47: ("offset_delete", "DELETE", lambda r: [f"group:{r.group_id}"]),
    30: ("create_acls", "ALTER", lambda r: ["acls"]),
    31: ("delete_acls", "ALTER", lambda r: ["acls"]),
    51: ("alter_user_scram_credentials", "ALTER",
         lambda r: [f"user:{d.name}" for d in (*r.deletions, *r.upsertions)]),
}


def audited(ctx, req) -> None:
    """One ``umlog.admin.<api>`` record per resource an admin request named."""
    spec = ADMIN.get(ctx.api_key)
    if spec is None or getattr(req, "validate_only", False):
        return
    name, op, subjects = spec
    conn = ctx.conn
    hub = ctx.door.hub
    for s in subjects(req):
        hub.audit(f"umlog.admin.{name}", "kafka", s, getattr(conn, "principal", None), getattr(conn, "peer", None),
                  op, "success")


# --- whole-request denials answered per item ---------------------------------------------
#
# librdkafka expects one result per item it asked about (an empty array makes
# its admin client fail an assertion), so a denied admin request is answered
# with every item carrying the error code.

def _per_item(ctx, req, code: ErrorCode):
    from .handlers._util import ZERO_MS, make, response_module

    key = ctx.api_key
    mod = response_module(ctx)
    msg = f"{code.name}: {getattr(ctx.conn, 'principal', None)} is not authorized"
    if key == 19:
        return make(mod.CreateTopicsResponse, throttle_time=ZERO_MS, topics=tuple(
            make(mod.CreatableTopicResult, name=t.name, topic_id=None, error_code=code, error_message=msg,
                 topic_config_error_code=ErrorCode.none, num_partitions=-1, replication_factor=-1, configs=())
            for t in req.topics))
    if key == 20:
        names = _topic_names(req)
        return make(mod.DeleteTopicsResponse, throttle_time=ZERO_MS, responses=tuple(
            make(mod.DeletableTopicResult, name=n, topic_id=None, error_code=code, error_message=msg)
            for n in names))
    if key == 37:
        return make(mod.CreatePartitionsResponse, throttle_time=ZERO_MS, results=tuple(
            make(mod.CreatePartitionsTopicResult, name=t.name, error_code=code, error_message=msg)
            for t in req.topics))
    if key == 32:
        return make(mod.DescribeConfigsResponse, throttle_time=ZERO_MS, results=tuple(
            make(mod.DescribeConfigsResult, error_code=code, error_message=msg, resource_type=r.resource_type,
                 resource_name=r.resource_name, configs=()) for r in req.resources))
    if key in (33, 44):
        cls = mod.AlterConfigsResponse if key == 33 else mod.IncrementalAlterConfigsResponse
        return make(cls, throttle_time=ZERO_MS, responses=tuple(
            make(mod.AlterConfigsResourceResponse, error_code=code, error_message=msg,
                 resource_type=r.resource_type, resource_name=r.resource_name) for r in req.resources))
    if key == 30:
        return make(mod.CreateAclsResponse, throttle_time=ZERO_MS, results=tuple(
            make(mod.AclCreationResult, error_code=code, error_message=msg) for _ in req.creations))
    if key == 31:
        return make(mod.DeleteAclsResponse, throttle_time=ZERO_MS, filter_results=tuple(
            make(mod.DeleteAclsFilterResult, error_code=code, error_message=msg, matching_acls=())
            for _ in req.filters))
    if key == 29:
        return make(mod.DescribeAclsResponse, throttle_time=ZERO_MS, error_code=code, error_message=msg,
                    resources=())
    if key == 51:
        users = dict.fromkeys(d.name for d in (*req.deletions, *req.upsertions))
        return make(mod.AlterUserScramCredentialsResponse, throttle_time=ZERO_MS, results=tuple(
            make(mod.AlterUserScramCredentialsResult, user=u, error_code=code, error_message=msg) for u in users))
    if key == 50:
        return make(mod.DescribeUserScramCredentialsResponse, throttle_time=ZERO_MS, error_code=code,
                    error_message=msg, results=())
    if key == 15:
        return make(mod.DescribeGroupsResponse, throttle_time=ZERO_MS, groups=tuple(
            make(mod.DescribedGroup, error_code=code, error_message=msg, group_id=g, group_state="",
                 protocol_type="", protocol_data="", members=(), authorized_operations=-2147483648)
            for g in req.groups))
    if key == 42:
        return make(mod.DeleteGroupsResponse, throttle_time=ZERO_MS, results=tuple(
            make(mod.DeletableGroupResult, group_id=g, error_code=code) for g in req.groups_names))
    return None


def refusal(ctx, req, code: ErrorCode):
    """The response refusing a whole request: per item where the API has items,
    else None (``dispatch.error_response`` then fills every error field)."""
    return _per_item(ctx, req, code)

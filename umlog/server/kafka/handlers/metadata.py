"""Metadata (key 3): this one node, the cluster id, topics and their partitions.

Node id 0 leads every partition (replicas and ISR are [0]). Topics asked for by
name that do not exist are created on the spot when the server allows it
(``--auto-create``, default on) and the request does too (v4+
``allow_auto_topic_creation``; always for v0-v3, as in Kafka), with
``--default-partitions`` partitions. Unlike Kafka, creation is synchronous, so
the first answer already lists the partitions (no LEADER_NOT_AVAILABLE round).

With security on, the full listing leaves out topics the principal may not
DESCRIBE; a topic asked for by name that it may not DESCRIBE answers
TOPIC_AUTHORIZATION_FAILED, and auto-creation needs CREATE on the cluster or
the topic (as Kafka).
"""

from __future__ import annotations

import logging

from kio.schema.errors import ErrorCode

from umlog import errors
from umlog.broker import INTERNAL_TOPICS
from umlog.errors import RemoteProtocolError

from ._util import ZERO_MS, make, response_module

API_KEY = 3
API_VERSIONS = (0, 12)

log = logging.getLogger("umlog.server.kafka")

def ensure_topic(door, name: str, allow_create: bool):
    """(topic or None, error code): look up ``name``, auto-creating it when allowed."""
    b = door.broker
    try:
        return b.topic(name), ErrorCode.none
    except errors.UnknownTopicError:
        pass
    if not (allow_create and door.auto_create):
        return None, ErrorCode.unknown_topic_or_partition
    why = door.partition_budget_error(door.default_partitions)
    if why is not None:
        log.warning("not auto-creating topic %r: %s", name, why)
        return None, ErrorCode.unknown_topic_or_partition
    try:
        t = door.create_topic(name, door.default_partitions)
        log.info("auto-created topic %r with %d partition(s)", name, door.default_partitions)
        return t, ErrorCode.none
    except errors.TopicExistsError:
        try:
            return b.topic(name), ErrorCode.none  # created meanwhile
        except errors.UnknownTopicError:
            # Collides with another topic ('.' and '_' are one to Kafka): found
            # by tools/fuzz_kafka.py, this escaped as an ERROR.
            return None, ErrorCode.invalid_topic_exception
    except (ValueError, errors.InvalidConfigError):
        return None, ErrorCode.invalid_topic_exception


def topic_entry(ctx, mod, name, topic, code):
    door = ctx.door
    parts = ()
    if topic is not None:
        parts = tuple(
            make(mod.MetadataResponsePartition, error_code=ErrorCode.none, partition_index=i,
                 leader_id=door.node_id, leader_epoch=0, replica_nodes=(door.node_id,),
                 isr_nodes=(door.node_id,), offline_replicas=())
            for i in range(topic.num_partitions))
    return make(mod.MetadataResponseTopic, error_code=code, name=name,
                topic_id=door.topic_id(name) if topic is not None else None,
                is_internal=name in INTERNAL_TOPICS, partitions=parts,
                topic_authorized_operations=-2147483648)


async def handle_metadata(ctx, req):
    door = ctx.door
    mod = response_module(ctx)
    requested = req.topics
    if requested is not None and ctx.version == 0 and len(requested) == 0:
        requested = None  # v0: an empty list means every topic
    allow = bool(getattr(req, "allow_auto_topic_creation", True))
    entries = []
    secure = door.security is not None and ctx.conn is not None
    if secure:
        from ...security.acls import CLUSTER_NAME, Operation, ResourceType
        from ..authz import allowed

        def may(op, name, audit=True):
            return allowed(ctx, op, ResourceType.TOPIC, name, audit)
    if requested is None:
        for name in sorted(door.broker.topics(internal=True)):  # as Kafka: internal ones too, is_internal set
            if secure and not may(Operation.DESCRIBE, name, False):
                continue
            try:
                t = door.broker.topic(name)
            except errors.UnknownTopicError:  # deleted meanwhile
                continue
            entries.append(topic_entry(ctx, mod, name, t, ErrorCode.none))
    else:
        for rt in requested:
            name = rt.name
            if name is None and ctx.version < 12:
                # Found by tools/fuzz_kafka.py: a null name (allowed in the v10-v11
                # request) cannot be echoed (non-nullable in those responses);
                # Kafka refuses such a request too.
                raise RemoteProtocolError(f"Metadata v{ctx.version} does not support null topic names")
            if name is None:  # by topic id only (v12): the share consumer asks so for its assignment
                known = door.topic_by_id(rt.topic_id)
                if known is not None:
                    try:
                        entries.append(topic_entry(ctx, mod, known, door.broker.topic(known), ErrorCode.none))
                        continue
                    except errors.UnknownTopicError:  # deleted meanwhile
                        pass
                entries.append(make(mod.MetadataResponseTopic, error_code=ErrorCode.unknown_topic_id,
                                    name=None, topic_id=rt.topic_id, is_internal=False,
                                    partitions=(), topic_authorized_operations=-2147483648))
                continue
            create = allow
            if secure:
                if not may(Operation.DESCRIBE, name):
                    entries.append(topic_entry(ctx, mod, name, None, ErrorCode.topic_authorization_failed))
                    continue
                if allow and name not in door.broker.topics(internal=True):
                    create = (allowed(ctx, Operation.CREATE, ResourceType.CLUSTER, CLUSTER_NAME, False)
                              or may(Operation.CREATE, name))
            t, code = ensure_topic(door, name, create)
            entries.append(topic_entry(ctx, mod, name, t, code))
    host, port = door.advertised(ctx.conn)
    broker = make(mod.MetadataResponseBroker, node_id=door.node_id, host=host, port=port, rack=None)
    return make(mod.MetadataResponse, throttle_time=ZERO_MS, brokers=(broker,),
                cluster_id=door.broker.cluster_id, controller_id=door.node_id,
                topics=tuple(entries), cluster_authorized_operations=-2147483648)

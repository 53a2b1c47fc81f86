"""CreateTopics (key 19): partitions, configs and a replication factor of 1.

num_partitions -1 means ``--default-partitions``; replication_factor must be 1
or -1 (single node), manual assignments must name only this node. An invalid
name is INVALID_TOPIC_EXCEPTION, a bad config INVALID_CONFIG; validate_only
checks all of that and creates nothing. Replies carry the effective configs (v5+).
"""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from ._admin import SOURCE_DEFAULT, SOURCE_DYNAMIC_TOPIC, admin_error, check_new_topic, check_replicas, config_str
from ._util import ZERO_MS, make, response_module

API_KEY = 19
API_VERSIONS = (2, 7)


async def handle_create_topics(ctx, req):
    door = ctx.door
    mod = response_module(ctx)
    names = [t.name for t in req.topics]
    results = []
    for ct in req.topics:
        name = ct.name
        partitions = ct.num_partitions
        configs = {c.name: c.value for c in ct.configs if c.value is not None}
        topic = None
        err = None
        if names.count(name) > 1:
            err = ErrorCode.invalid_request, f"topic {name!r} appears more than once in the request"
        if err is None:
            err = check_replicas(door.node_id, ct.replication_factor, ct.assignments, partitions)
        if err is None and partitions == -1:
            partitions = len(ct.assignments) if ct.assignments else door.default_partitions
        if err is None and (msg := door.partition_budget_error(partitions)) is not None:
            err = ErrorCode.policy_violation, msg
        if err is None:
            if req.validate_only:
                err = check_new_topic(door, name, partitions, configs)
            else:
                try:
                    if partitions < 1:
                        raise ValueError(f"partitions must be >= 1, not {partitions}")
                    topic = door.create_topic(name, partitions, configs)
                except Exception as e:
                    code, msg = admin_error(e)
                    if code == ErrorCode.invalid_request and partitions < 1:
                        code = ErrorCode.invalid_partitions
                    elif code == ErrorCode.invalid_request:
                        code = ErrorCode.invalid_topic_exception
                    err = code, msg
        if err is not None:
            results.append(make(mod.CreatableTopicResult, name=name, topic_id=None, error_code=err[0],
                                error_message=err[1], num_partitions=-1, replication_factor=-1,
                                configs=None))
            continue
        cfg_rows = None
        if topic is not None and hasattr(mod, "CreatableTopicConfigs"):
            cfg_rows = tuple(
                make(mod.CreatableTopicConfigs, name=k, value=config_str(v), read_only=False,
                     config_source=SOURCE_DEFAULT if topic.config.is_default(k) else SOURCE_DYNAMIC_TOPIC,
                     is_sensitive=False)
                for k, v in sorted(topic.config.items()))
        results.append(make(mod.CreatableTopicResult, name=name,
                            topic_id=door.topic_id(name) if topic is not None else None,
                            error_code=ErrorCode.none, error_message=None, num_partitions=partitions,
                            replication_factor=1, configs=cfg_rows))
    return make(mod.CreateTopicsResponse, throttle_time=ZERO_MS, topics=tuple(results))

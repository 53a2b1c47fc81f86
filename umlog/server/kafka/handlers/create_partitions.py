"""CreatePartitions (key 37): grow a topic; shrinking or staying equal is INVALID_PARTITIONS."""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from umlog import errors

from ._admin import admin_error
from ._util import ZERO_MS, make, response_module

API_KEY = 37
API_VERSIONS = (0, 3)


async def handle_create_partitions(ctx, req):
    door = ctx.door
    mod = response_module(ctx)
    results = []
    for ct in req.topics:
        code, msg = ErrorCode.none, None
        try:
            t = door.broker.topic(ct.name)
            if ct.count <= t.num_partitions:
                code, msg = (ErrorCode.invalid_partitions,
                             f"topic {ct.name!r} has {t.num_partitions} partitions; {ct.count} is not more")
            elif ct.assignments and any(tuple(a.broker_ids) != (door.node_id,) for a in ct.assignments):
                code, msg = ErrorCode.invalid_replica_assignment, f"replicas must be [{door.node_id}]"
            elif (msg := door.partition_budget_error(ct.count - t.num_partitions)) is not None:
                code = ErrorCode.policy_violation
            elif not req.validate_only:
                door.broker.add_partitions(ct.name, ct.count)
        except errors.UnknownTopicError as e:
            code, msg = ErrorCode.unknown_topic_or_partition, str(e)
        except Exception as e:
            code, msg = admin_error(e)
        results.append(make(mod.CreatePartitionsTopicResult, name=ct.name, error_code=code,
                            error_message=msg))
    return make(mod.CreatePartitionsResponse, throttle_time=ZERO_MS, results=tuple(results))

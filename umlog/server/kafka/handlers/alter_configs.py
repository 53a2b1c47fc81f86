"""AlterConfigs (key 33): replace a topic's overrides with the given set.

As in Kafka, every config not named goes back to its default. All values are
validated first; a bad one changes nothing (INVALID_CONFIG).
"""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from umlog.config import validate_overrides

from ._admin import RESOURCE_TOPIC, admin_error
from ._util import ZERO_MS, make, response_module

API_KEY = 33
API_VERSIONS = (0, 2)


async def handle_alter_configs(ctx, req):
    door = ctx.door
    mod = response_module(ctx)
    out = []
    for res in req.resources:
        code, msg = ErrorCode.none, None
        if res.resource_type != RESOURCE_TOPIC:
            code, msg = ErrorCode.invalid_request, "only topic configs can be altered"
        else:
            try:
                t = door.broker.topic(res.resource_name)
                new = {c.name: c.value for c in res.configs if c.value is not None}
                if req.validate_only:
                    validate_overrides(new)
                else:
                    drop = [k for k in t.config.overrides if k not in new]
                    door.broker.alter_topic_config(res.resource_name, set=new, delete=drop)
            except Exception as e:
                code, msg = admin_error(e)
        out.append(make(mod.AlterConfigsResourceResponse, error_code=code, error_message=msg,
                        resource_type=res.resource_type, resource_name=res.resource_name))
    return make(mod.AlterConfigsResponse, throttle_time=ZERO_MS, responses=tuple(out))

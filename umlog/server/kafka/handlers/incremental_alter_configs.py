"""IncrementalAlterConfigs (key 44): SET / DELETE a topic's configs one by one.

APPEND and SUBTRACT apply only to list-valued configs; the one list-like topic
config here is cleanup.policy, which they edit as a comma-separated set.
"""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from umlog.config import validate_overrides

from ._admin import RESOURCE_TOPIC, admin_error, config_str
from ._util import ZERO_MS, make, response_module

API_KEY = 44
API_VERSIONS = (0, 1)

OP_SET, OP_DELETE, OP_APPEND, OP_SUBTRACT = 0, 1, 2, 3


async def handle_incremental_alter_configs(ctx, req):
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
                set_, delete = {}, []
                for c in res.configs:
                    op = c.config_operation
                    if op == OP_SET:
                        set_[c.name] = c.value
                    elif op == OP_DELETE:
                        delete.append(c.name)
                    elif op in (OP_APPEND, OP_SUBTRACT) and c.name == "cleanup.policy":
                        cur = set(config_str(t.config["cleanup.policy"]).split(","))
                        vals = {v.strip() for v in (c.value or "").split(",") if v.strip()}
                        cur = cur | vals if op == OP_APPEND else cur - vals
                        set_[c.name] = ",".join(sorted(cur))
                    else:
                        raise ValueError(f"operation {op} is not valid for {c.name!r}")
                if req.validate_only:
                    validate_overrides(set_)
                else:
                    door.broker.alter_topic_config(res.resource_name, set=set_, delete=delete)
            except Exception as e:
                code, msg = admin_error(e)
                if code == ErrorCode.invalid_request and "operation" in msg:
                    code = ErrorCode.invalid_config
        out.append(make(mod.AlterConfigsResourceResponse, error_code=code, error_message=msg,
                        resource_type=res.resource_type, resource_name=res.resource_name))
    return make(mod.IncrementalAlterConfigsResponse, throttle_time=ZERO_MS, responses=tuple(out))

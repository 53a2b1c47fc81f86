"""DescribeConfigs (key 32): topic configs (effective values, overrides marked as
DYNAMIC_TOPIC_CONFIG, the rest DEFAULT_CONFIG); for the broker resource, the
topic defaults (Kafka's broker-level defaults play that role)."""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from umlog import errors

from ._admin import (
    RESOURCE_BROKER,
    RESOURCE_TOPIC,
    SOURCE_DEFAULT,
    SOURCE_DYNAMIC_TOPIC,
    TOPIC_CONFIGS,
    config_str,
)
from ._util import ZERO_MS, make, response_module

API_KEY = 32
API_VERSIONS = (1, 4)

# config_type (v3+, Kafka ConfigEntry.ConfigType): 1 BOOLEAN 2 STRING 5 LONG
_TYPE_BOOLEAN, _TYPE_STRING, _TYPE_LONG = 1, 2, 5


def _type_of(value) -> int:
    if isinstance(value, bool):
        return _TYPE_BOOLEAN
    if isinstance(value, int):
        return _TYPE_LONG
    return _TYPE_STRING


async def handle_describe_configs(ctx, req):
    door = ctx.door
    mod = response_module(ctx)
    results = []
    for res in req.resources:
        keys = set(res.configuration_keys) if res.configuration_keys else None
        code, msg, rows = ErrorCode.none, None, []
        if res.resource_type == RESOURCE_TOPIC:
            try:
                cfg = door.broker.topic(res.resource_name).config
                items = [(k, v, SOURCE_DEFAULT if cfg.is_default(k) else SOURCE_DYNAMIC_TOPIC)
                         for k, v in sorted(cfg.items())]
            except errors.UnknownTopicError as e:
                code, msg, items = ErrorCode.unknown_topic_or_partition, str(e), []
        elif res.resource_type == RESOURCE_BROKER:
            if res.resource_name not in ("", str(door.node_id)):
                code, msg, items = ErrorCode.invalid_request, f"no broker {res.resource_name!r}", []
            else:
                items = [(k, s.default, SOURCE_DEFAULT) for k, s in sorted(TOPIC_CONFIGS.items())]
        else:
            code, msg, items = (ErrorCode.invalid_request,
                                f"resource type {res.resource_type} is not supported", [])
        for k, v, source in items:
            if keys is not None and k not in keys:
                continue
            doc = TOPIC_CONFIGS[k].doc if k in TOPIC_CONFIGS else None
            rows.append(make(mod.DescribeConfigsResourceResult, name=k, value=config_str(v),
                             read_only=res.resource_type == RESOURCE_BROKER, config_source=source,
                             is_default=source == SOURCE_DEFAULT, is_sensitive=False, synonyms=(),
                             config_type=_type_of(v),
                             documentation=doc if getattr(req, "include_documentation", False) else None))
        results.append(make(mod.DescribeConfigsResult, error_code=code, error_message=msg,
                            resource_type=res.resource_type, resource_name=res.resource_name,
                            configs=tuple(rows)))
    return make(mod.DescribeConfigsResponse, throttle_time=ZERO_MS, results=tuple(results))

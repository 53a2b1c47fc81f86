"""DeleteTopics (key 20): by name (v1-v6); by topic id (v6) when the id is ours."""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from ._admin import admin_error
from ._util import ZERO_MS, make, response_module

API_KEY = 20
API_VERSIONS = (1, 6)


async def handle_delete_topics(ctx, req):
    door = ctx.door
    mod = response_module(ctx)
    if hasattr(req, "topic_names"):
        wanted = [(n, None) for n in req.topic_names]
    else:
        wanted = [(t.name, t.topic_id) for t in req.topics]
    results = []
    for name, topic_id in wanted:
        if name is None and topic_id is not None:
            name = next((n for n in door.broker.topics() if door.topic_id(n) == topic_id), None)
            if name is None:
                results.append(make(mod.DeletableTopicResult, name=None, topic_id=topic_id,
                                    error_code=ErrorCode.unknown_topic_id, error_message="unknown topic id"))
                continue
        tid = None
        code, msg = ErrorCode.none, None
        try:
            tid = door.topic_id(name)
            door.broker.delete_topic(name)
        except Exception as e:
            code, msg = admin_error(e)
            tid = None
        results.append(make(mod.DeletableTopicResult, name=name, topic_id=tid, error_code=code,
                            error_message=msg))
    return make(mod.DeleteTopicsResponse, throttle_time=ZERO_MS, responses=tuple(results))

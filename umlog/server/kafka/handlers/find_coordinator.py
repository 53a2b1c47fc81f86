"""FindCoordinator (key 10): this node coordinates every group and transaction id.

Advertised from v0: librdkafka derives its LZ4 and group features from
FindCoordinator v0 being offered (rdkafka_feature.c), and ``kcat -G`` hangs
without it. The group APIs themselves are in ``join_group.py`` and its siblings.
"""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from ._util import ZERO_MS, make, response_module

API_KEY = 10
API_VERSIONS = (0, 4)


async def handle_find_coordinator(ctx, req):
    door = ctx.door
    mod = response_module(ctx)
    if ctx.version >= 4:
        coords = tuple(
            make(mod.Coordinator, key=k, node_id=door.node_id, host=door.advertise_host,
                 port=door.advertise_port, error_code=ErrorCode.none, error_message=None)
            for k in req.coordinator_keys)
        return make(mod.FindCoordinatorResponse, throttle_time=ZERO_MS, coordinators=coords)
    return make(mod.FindCoordinatorResponse, throttle_time=ZERO_MS, error_code=ErrorCode.none,
                error_message=None, node_id=door.node_id, host=door.advertise_host,
                port=door.advertise_port)

"""FindCoordinator (key 10): this node coordinates every group; transactions are
refused.

A transaction id (key type 1) gets TRANSACTIONAL_ID_AUTHORIZATION_FAILED with
the message "transactions are not supported by umlog": librdkafka makes it a
fatal error at once ("Failed to find transaction coordinator: ...: Broker:
Transactional Id authorization failed: transactions are not supported by
umlog"), kafka-python raises TransactionalIdAuthorizationFailedError. The same
code answers InitProducerId and Produce with a transactional id; the other
transaction APIs (AddPartitionsToTxn, EndTxn, ...) are not advertised, so no
client sends them.

Advertised from v0: librdkafka derives its LZ4 and group features from
FindCoordinator v0 being offered (rdkafka_feature.c), and ``kcat -G`` hangs
without it. The group APIs themselves are in ``join_group.py`` and its siblings.
"""

from __future__ import annotations

import logging

from kio.schema.errors import ErrorCode

from ._util import TRANSACTIONS_NOT_SUPPORTED, ZERO_MS, make, response_module

log = logging.getLogger("umlog.server.kafka")

API_KEY = 10
API_VERSIONS = (0, 4)


_TRANSACTION = 1  # key_type: 0 group, 1 transaction


async def handle_find_coordinator(ctx, req):
    door = ctx.door
    mod = response_module(ctx)
    txn = getattr(req, "key_type", 0) == _TRANSACTION
    if txn:
        log.warning("FindCoordinator for a transaction id refused: %s", TRANSACTIONS_NOT_SUPPORTED)
        code, message = ErrorCode.transactional_id_authorization_failed, TRANSACTIONS_NOT_SUPPORTED
        node, host, port = -1, "", -1
    else:
        code, message = ErrorCode.none, None
        node, (host, port) = door.node_id, door.advertised(ctx.conn)
    if ctx.version >= 4:
        coords = tuple(make(mod.Coordinator, key=k, node_id=node, host=host, port=port, error_code=code,
                            error_message=message) for k in req.coordinator_keys)
        return make(mod.FindCoordinatorResponse, throttle_time=ZERO_MS, coordinators=coords)
    return make(mod.FindCoordinatorResponse, throttle_time=ZERO_MS, error_code=code, error_message=message,
                node_id=node, host=host, port=port)

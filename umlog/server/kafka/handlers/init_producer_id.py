"""InitProducerId (key 22): producer ids for idempotent producers.

Transactions are not supported: a request with a transactional id gets
TRANSACTIONAL_ID_AUTHORIZATION_FAILED, the refusal every transactional request
gets here (see ``find_coordinator.py``): librdkafka and kafka-python treat it
as fatal and fail ``init_transactions()`` at once (INVALID_REQUEST, answered
before, made librdkafka retry until its timeout). A request naming
a producer id and epoch we issued (v3+, KIP-360) bumps the epoch and forgets
its sequence state; otherwise a new id with epoch 0.
"""

from __future__ import annotations

import logging

from kio.schema.errors import ErrorCode

from ._util import TRANSACTIONS_NOT_SUPPORTED, ZERO_MS, make, response_module

API_KEY = 22
API_VERSIONS = (0, 4)

log = logging.getLogger("umlog.server.kafka")


async def handle_init_producer_id(ctx, req):
    door = ctx.door
    mod = response_module(ctx)
    if req.transactional_id is not None:
        log.warning("InitProducerId for transactional id %r refused: %s", req.transactional_id,
                    TRANSACTIONS_NOT_SUPPORTED)
        return make(mod.InitProducerIdResponse, throttle_time=ZERO_MS,
                    error_code=ErrorCode.transactional_id_authorization_failed, producer_id=-1, producer_epoch=-1)
    pid = getattr(req, "producer_id", -1)
    epoch = getattr(req, "producer_epoch", -1)
    st = door.producers.get(pid) if pid >= 0 else None
    if pid >= 0:
        # A client asking to move an existing producer on (KIP-360) re-sends
        # the batches whose fate it does not know under the new epoch with new
        # sequence numbers: no broker can tell those from new records, so the
        # line is worth having when duplicates are investigated.
        log.warning("producer %d (epoch %d) asks for a new epoch%s", pid, epoch,
                    "" if st is not None else "; unknown here, a new producer id is issued")
    if st is not None and epoch == st.epoch and st.epoch < 32767:
        st.epoch += 1
    else:
        if st is not None and epoch != st.epoch:
            return make(mod.InitProducerIdResponse, throttle_time=ZERO_MS,
                        error_code=ErrorCode.invalid_producer_epoch, producer_id=-1,
                        producer_epoch=-1)
        st = door.new_producer()
    return make(mod.InitProducerIdResponse, throttle_time=ZERO_MS, error_code=ErrorCode.none,
                producer_id=st.producer_id, producer_epoch=st.epoch)

"""Engine exception -> Kafka error code: the one place wire codes meet engine errors.

The engine (``umlog.errors``) knows nothing of the wire; the Kafka door maps its
exceptions here, most specific class first (``CorruptBatchError`` before
``DecodeError``). The codes themselves come from kio's generated
``ErrorCode`` enum (Kafka's ``Errors.java``), so nothing here is hand-numbered.
"""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from umlog import errors as E

__all__ = ["ErrorCode", "error_code_for", "ERROR_CODES"]

# Order matters: the first isinstance match wins.
ERROR_CODES: tuple[tuple[type[BaseException], ErrorCode], ...] = (
    (E.CorruptBatchError, ErrorCode.corrupt_message),
    (E.DecodeError, ErrorCode.corrupt_message),
    (E.OffsetOutOfRangeError, ErrorCode.offset_out_of_range),
    (E.UnknownTopicError, ErrorCode.unknown_topic_or_partition),
    (E.TopicExistsError, ErrorCode.topic_already_exists),
    (E.InvalidConfigError, ErrorCode.invalid_config),
    (E.InvalidRecordError, ErrorCode.invalid_record),  # keyless record, compacted topic
    (E.IndexOffsetOverflowError, ErrorCode.kafka_storage_error),
    (E.CorruptIndexError, ErrorCode.kafka_storage_error),
    (E.ReadOnlyError, ErrorCode.not_leader_or_follower),
    (E.BrokerClosedError, ErrorCode.broker_not_available),
    (OSError, ErrorCode.kafka_storage_error),
)


def error_code_for(exc: BaseException) -> ErrorCode:
    """The Kafka error code for an engine exception; UNKNOWN_SERVER_ERROR otherwise."""
    for cls, code in ERROR_CODES:
        if isinstance(exc, cls):
            return code
    return ErrorCode.unknown_server_error

"""Engine exception -> Kafka error code: the one place wire codes meet engine errors.

The engine (``umlog.errors``) knows nothing of the wire; the Kafka door maps its
exceptions here, most specific class first (``CorruptBatchError`` before
``DecodeError``). The codes themselves come from kio's generated
``ErrorCode`` enum (Kafka's ``Errors.java``), so nothing here is hand-numbered.
"""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from umlog import errors

__all__ = ["ErrorCode", "error_code_for", "ERROR_CODES"]

# Order matters: the first isinstance match wins.
ERROR_CODES: tuple[tuple[type[BaseException], ErrorCode], ...] = (
    (errors.CorruptBatchError, ErrorCode.corrupt_message),
    (errors.DecodeError, ErrorCode.corrupt_message),
    (errors.OffsetOutOfRangeError, ErrorCode.offset_out_of_range),
    (errors.UnknownTopicError, ErrorCode.unknown_topic_or_partition),
    (errors.TopicExistsError, ErrorCode.topic_already_exists),
    (errors.InvalidConfigError, ErrorCode.invalid_config),
    (errors.InvalidRecordError, ErrorCode.invalid_record),  # keyless record, compacted topic
    (errors.IndexOffsetOverflowError, ErrorCode.kafka_storage_error),
    (errors.CorruptIndexError, ErrorCode.kafka_storage_error),
    (errors.ReadOnlyError, ErrorCode.not_leader_or_follower),
    (errors.BrokerClosedError, ErrorCode.broker_not_available),
    (OSError, ErrorCode.kafka_storage_error),
)


def error_code_for(exc: BaseException) -> ErrorCode:
    """The Kafka error code for an engine exception; UNKNOWN_SERVER_ERROR otherwise."""
    for cls, code in ERROR_CODES:
        if isinstance(exc, cls):
            return code
    return ErrorCode.unknown_server_error

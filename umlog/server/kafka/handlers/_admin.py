"""Helpers shared by the admin handlers (topics and configs)."""

from __future__ import annotations

from typing import Any

from kio.schema.errors import ErrorCode

from umlog import errors
from umlog.config import TOPIC_CONFIGS, validate_overrides, validate_topic_name

__all__ = ["config_str", "check_new_topic", "admin_error", "RESOURCE_TOPIC", "RESOURCE_BROKER",
           "SOURCE_DYNAMIC_TOPIC", "SOURCE_DEFAULT", "TOPIC_CONFIGS"]

RESOURCE_TOPIC = 2
RESOURCE_BROKER = 4
# DescribeConfigs config_source values (Kafka ConfigSource)
SOURCE_DYNAMIC_TOPIC = 1
SOURCE_DEFAULT = 5


def config_str(value: Any) -> str:
    """Kafka renders configs as strings; booleans are lower case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def admin_error(exc: BaseException) -> tuple[ErrorCode, str]:
    """Error code and message for an engine error raised by an admin call."""
    if isinstance(exc, errors.TopicExistsError):
        return ErrorCode.topic_already_exists, str(exc)
    if isinstance(exc, errors.UnknownTopicError):
        return ErrorCode.unknown_topic_or_partition, str(exc)
    if isinstance(exc, errors.InvalidConfigError):
        return ErrorCode.invalid_config, str(exc)
    if isinstance(exc, (ValueError, TypeError)):
        return ErrorCode.invalid_request, str(exc)
    if isinstance(exc, errors.ReadOnlyError):
        return ErrorCode.cluster_authorization_failed, str(exc)
    return ErrorCode.unknown_server_error, repr(exc)


def check_replicas(node_id: int, replication_factor: int, assignments, partitions: int):
    """(code, message) when the replica request cannot be met by one node, else None."""
    if replication_factor not in (-1, 1):
        return (ErrorCode.invalid_replication_factor,
                f"replication factor {replication_factor}: umlog is a single node, use 1 (or -1)")
    if assignments:
        if partitions not in (-1, len(assignments)):
            return ErrorCode.invalid_request, "both num_partitions and assignments given"
        for a in assignments:
            if tuple(a.broker_ids) != (node_id,):
                return (ErrorCode.invalid_replica_assignment,
                        f"partition {a.partition_index}: replicas must be [{node_id}] on a single node")
    return None


def check_new_topic(door, name: str, partitions: int, configs: dict) -> tuple[ErrorCode, str] | None:
    """Validate a topic creation without doing it (validate_only)."""
    try:
        validate_topic_name(name)
        validate_overrides(configs)
    except errors.InvalidConfigError as e:
        return ErrorCode.invalid_config, str(e)
    except (ValueError, TypeError) as e:
        return ErrorCode.invalid_topic_exception, str(e)
    if name in door.broker.topics():
        return ErrorCode.topic_already_exists, f"topic {name!r} already exists"
    if partitions < 1:
        return ErrorCode.invalid_partitions, f"partitions must be >= 1, not {partitions}"
    return None

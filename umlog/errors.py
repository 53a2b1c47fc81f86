"""The engine's error tree. Engine-level only: wire codes live in the Kafka door.

::

    UmlogError
    ├─ DecodeError(UmlogError, ValueError)   "truncated batch at position 4096"
    │  └─ CorruptBatchError (.position)      bad length/magic/CRC/count on disk or wire
    ├─ CorruptIndexError                     the loader rebuilds; never reaches a client
    ├─ IndexOffsetOverflowError              relative offset > u32: roll
    ├─ OffsetOutOfRangeError                 read below start_offset or past end_offset
    ├─ InvalidOffsetError(UmlogError, ValueError)  a group commit outside [start, end]
    ├─ InvalidRecordError(UmlogError, ValueError)  a keyless record for a compacted topic
    ├─ UnknownTopicError(UmlogError, KeyError)
    ├─ TopicExistsError
    ├─ InvalidConfigError(UmlogError, ValueError)
    ├─ DataDirLockedError                    names the holder's pid
    ├─ DataDirError                          not a umlog data dir / foreign files
    ├─ ReadOnlyError                         write on a broker opened readonly=True
    ├─ BrokerClosedError
    └─ ProtocolError → LocalProtocolError / RemoteProtocolError
"""

from __future__ import annotations

__all__ = [
    "UmlogError",
    "DecodeError",
    "CorruptBatchError",
    "CorruptIndexError",
    "IndexOffsetOverflowError",
    "OffsetOutOfRangeError",
    "UnknownTopicError",
    "TopicExistsError",
    "InvalidConfigError",
    "DataDirLockedError",
    "DataDirError",
    "ReadOnlyError",
    "BrokerClosedError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "InvalidOffsetError",
    "InvalidRecordError",
    "RemoteStorageError",
]


class UmlogError(Exception):
    """Base of every error umlog raises on purpose."""


class DecodeError(UmlogError, ValueError):
    """Bytes that do not decode: truncated, too long, or malformed."""


class CorruptBatchError(DecodeError):
    """A RecordBatch failed validation (length, magic, CRC, count, offsets).

    ``position`` is the byte offset of the batch in the buffer or segment it was
    read from (``-1`` when unknown).
    """

    def __init__(self, message: str, position: int = -1) -> None:
        super().__init__(message)
        self.position = position


class CorruptIndexError(UmlogError):
    """An index file fails its sanity check; the loader rebuilds it."""


class IndexOffsetOverflowError(UmlogError):
    """An offset does not fit the segment's u32 relative offsets: roll first."""


class OffsetOutOfRangeError(UmlogError):
    """A read below the partition's start offset or beyond its end offset."""


class RemoteStorageError(UmlogError, OSError):
    """The object store of tiered storage failed (unreachable, missing object):
    retriable; the Kafka door answers KAFKA_STORAGE_ERROR."""


class UnknownTopicError(UmlogError, KeyError):
    """The topic does not exist."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message plain
        return str(self.args[0]) if self.args else ""


class TopicExistsError(UmlogError):
    """create_topic for a name that already exists."""


class InvalidConfigError(UmlogError, ValueError):
    """An unknown config key, a value of the wrong type, or out of range."""


class DataDirLockedError(UmlogError):
    """Another process holds the data dir's writer lock; ``pid`` names it."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class DataDirError(UmlogError):
    """The path is not usable as a data dir (foreign files, not a directory)."""


class ReadOnlyError(UmlogError):
    """A write on a broker opened with ``readonly=True``."""


class BrokerClosedError(UmlogError):
    """An operation on a closed broker."""


class ProtocolError(UmlogError):
    """A protocol-level error in a front door."""


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""


class InvalidOffsetError(UmlogError, ValueError):
    """A consumer-group commit of an offset the partition does not have: below
    its start offset, beyond its end offset, or of a partition that does not exist."""


class InvalidRecordError(UmlogError, ValueError):
    """A record the topic refuses: a record without a key for a compacted topic
    (``cleanup.policy=compact``), as Kafka's INVALID_RECORD."""

"""umlog: a unified message log.

A native, segmented commit log in Kafka's on-disk format, usable in-process
(``umlog.open``) or served over the Kafka protocol (``umlog serve``).

::

    import umlog
    with umlog.open("data") as b:
        b.create_topic("orders", partitions=4)
        md = b.topic("orders").append(b"v", key=b"k")
"""

from __future__ import annotations

import os

from ._native.core import Record
from .broker import Broker, RecordMetadata, Topic
from .errors import (
    BrokerClosedError,
    CorruptBatchError,
    CorruptIndexError,
    DataDirError,
    DataDirLockedError,
    DecodeError,
    InvalidConfigError,
    InvalidOffsetError,
    OffsetOutOfRangeError,
    ReadOnlyError,
    TopicExistsError,
    UmlogError,
    UnknownTopicError,
)
from .groups import Consumer, Group
from .log.partition import Partition

__all__ = [
    "open",
    "Broker",
    "Topic",
    "Partition",
    "Group",
    "Consumer",
    "Record",
    "RecordMetadata",
    "UmlogError",
    "DecodeError",
    "CorruptBatchError",
    "CorruptIndexError",
    "OffsetOutOfRangeError",
    "UnknownTopicError",
    "TopicExistsError",
    "InvalidConfigError",
    "InvalidOffsetError",
    "DataDirLockedError",
    "DataDirError",
    "ReadOnlyError",
    "BrokerClosedError",
]

__version__ = "0.1.0"


def open(path: str | os.PathLike = "umlog-data", *, fsync: str = "never", readonly: bool = False, **kw) -> Broker:
    """Open (creating if needed) a data dir; use it as a context manager.

    :param path: the data dir.
    :param fsync: ``"never"`` (page cache), ``"interval"`` (fdatasync every
        ``interval_ms``) or ``"always"`` (appends return after fdatasync).
    :param readonly: tail a data dir another process writes; takes no lock.
    :raises DataDirLockedError: another process has it open for writing.
    :raises DataDirError: the path holds files that are not umlog's.
    """
    return Broker(path, fsync=fsync, readonly=readonly, **kw)

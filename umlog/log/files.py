"""File names and file-level helpers of a partition directory (Kafka LogFileUtils).

::

    DATA/<topic>-<partition>/00000000000000000000.log        batches, as Kafka stores them
                             00000000000000000000.index      offset index (u32 rel offset, u32 position)
                             00000000000000000000.timeindex  time index (i64 timestamp, u32 rel offset)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from typing import Any

__all__ = [
    "LOG_SUFFIX",
    "INDEX_SUFFIX",
    "TIMEINDEX_SUFFIX",
    "DELETED_SUFFIX",
    "CLEANED_SUFFIX",
    "SWAP_SUFFIX",
    "segment_name",
    "parse_segment_name",
    "partition_dir_name",
    "parse_partition_dir",
    "fsync_dir",
    "atomic_write_json",
    "read_json",
    "write_all",
]

LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
TIMEINDEX_SUFFIX = ".timeindex"
DELETED_SUFFIX = ".deleted"
CLEANED_SUFFIX = ".cleaned"
SWAP_SUFFIX = ".swap"

_SEGMENT_RE = re.compile(r"^(\d{20})\.(log|index|timeindex)$")
_PARTITION_RE = re.compile(r"^(.+)-(\d+)$")


def segment_name(base_offset: int, suffix: str) -> str:
    return f"{base_offset:020d}{suffix}"


def parse_segment_name(name: str) -> tuple[int, str] | None:
    """(base offset, '.log'|'.index'|'.timeindex') or None for other names."""
    m = _SEGMENT_RE.match(name)
    if not m:
        return None
    return int(m.group(1)), "." + m.group(2)


def partition_dir_name(topic: str, partition: int) -> str:
    return f"{topic}-{partition}"


def parse_partition_dir(name: str) -> tuple[str, int] | None:
    m = _PARTITION_RE.match(name)
    if not m:
        return None
    return m.group(1), int(m.group(2))


def fsync_dir(path: str) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: str):
    """Hold an exclusive ``flock`` on ``path + ".lock"`` (made if missing): one
    read-modify-write of a meta file at a time across processes (the server and
    the CLI)."""
    import fcntl

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def atomic_write_json(path: str, obj: Any) -> None:
    """Replace ``path`` atomically: write a temp file, fsync, rename, fsync the dir."""
    tmp = path + ".tmp"
    data = json.dumps(obj, indent=1, sort_keys=True).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


def read_json(path: str) -> Any:
    with open(path, "rb") as f:
        return json.loads(f.read())


def write_all(fd: int, data) -> int:
    """os.write until every byte is written (short writes happen on full disks)."""
    view = memoryview(data)
    total = len(view)
    done = os.write(fd, view)
    while done < total:
        done += os.write(fd, view[done:])
    return total

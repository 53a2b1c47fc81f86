"""Share-group state of one partition: the in-flight window and its bytes.

Theory of operation
-------------------
A share group reads a partition as a queue without copying it. Its state per
(group, topic, partition) is a *window* over the log:

- ``start``: every offset below it is done (acked or archived);
- ``end``: the next offset never handed out (records in ``[start, end)`` were
  fetched at least once; those at and past ``end`` are fresh);
- ``entries``: the state of each fetched offset in ``[start, end)``. An offset
  of the window with no entry is not a record (compaction or a transaction
  marker left a gap) and counts as done.

Each entry is one of::

                 acquire (count += 1)
    AVAILABLE ---------------------------> ACQUIRED --ack--> ACKED
        ^                                   |  |  |
        |  release / lock expiry            |  |  +--reject, TTL, count >= max_attempts--+
        +-----------------------------------+  |                                         v
           (available again after a delay)     +--------------------------------> DEAD_PENDING --> ARCHIVED
                                                         (dead letter being written)

``ACKED`` and ``ARCHIVED`` are done; when the entries at ``start`` are done
``start`` moves past them and they are forgotten, so the window only holds
what is in flight. Its span ``end - start`` is bounded by ``max_in_flight``
(Kafka's share.record.lock.partition.limit): a full window fetches nothing new
from the partition, but still hands out what in it is available again.

``DEAD_PENDING`` makes dead letters exactly-once across a crash: the state
says "being dead-lettered, the dead-letter partition ended at offset X" before
the dead letter is appended, and "archived" after. Opening a group that finds
a pending entry looks for its dead letter from X on and writes it only if it
is not there (see ``group.py``).

What is durable: everything above except lock deadlines and lock owners. An
acquire is written (its delivery count), so that a record that crashes the
process that holds it is still dead-lettered after ``max_attempts`` even if
every attempt is a crash: after a restart an ``ACQUIRED`` entry is
``AVAILABLE`` again with the delivery count it had. Availability delays are
wall-clock ms (they must survive a restart); lock deadlines are monotonic.

State record bytes
------------------
One record of the compacted topic ``__share_group_state`` per (group, topic,
partition), the newest winning; all big-endian::

    key:   version int16 (0) | group_len uint16 | group utf-8
           | topic_len uint16 | topic utf-8 | partition int32

    value: version int16 (0) | start_offset int64 | end_offset int64
           | entry_count int32 | entry_count x entry

    entry (15 bytes):
           +--------------+-------+----------------+---------------+
           | delta uint32 | state | delivery_count | aux int64     |
           | offset-start | int8  | uint16         |               |
           +--------------+-------+----------------+---------------+

``state``: 0 AVAILABLE, 1 ACQUIRED, 2 ACKED, 3 ARCHIVED, 4 DEAD_PENDING.
``aux``: AVAILABLE: wall-clock ms from which it may be handed out (0: now);
DEAD_PENDING: end offset of the dead-letter partition before the dead letter
was appended; else 0. A null value (tombstone) forgets the partition's state.
A full window is at most 2,000 x 15 bytes: every write is the whole window,
which keeps replay a plain "last record per key wins".
"""

from __future__ import annotations

import struct

from .._native.core import ShareEntry, share_advance, share_encode_window
from ..errors import DecodeError

__all__ = ["AVAILABLE", "ACQUIRED", "ACKED", "ARCHIVED", "DEAD_PENDING", "STATE_NAMES", "Entry", "Window",
           "encode_key", "decode_key", "encode_window", "decode_window"]

AVAILABLE, ACQUIRED, ACKED, ARCHIVED, DEAD_PENDING = range(5)
STATE_NAMES = ("available", "acquired", "acked", "archived", "dead_pending")
DONE = (ACKED, ARCHIVED)

KEY_VERSION = 0
VALUE_VERSION = 0
_h = struct.Struct(">h")
_H = struct.Struct(">H")
_i = struct.Struct(">i")
_head = struct.Struct(">hqqi")
_entry = struct.Struct(">IbHq")


# One fetched offset's state: ``state``, ``count``, ``aux`` (durable) and the lock,
# ``deadline`` and ``owner`` (in memory only). Native: a window holds thousands,
# created and touched on every acquire and ack.
Entry = ShareEntry


class Window:
    """The in-flight window of one partition (see the module docstring). Not
    thread-safe: the group that owns it holds its lock."""

    __slots__ = ("topic", "partition", "start", "end", "entries")

    def __init__(self, topic: str, partition: int, start: int, end: int | None = None,
                 entries: dict[int, Entry] | None = None) -> None:
        self.topic = topic
        self.partition = partition
        self.start = start
        self.end = start if end is None else end
        self.entries: dict[int, Entry] = entries if entries is not None else {}

    def __repr__(self) -> str:
        return f"<Window {self.topic}-{self.partition} [{self.start}, {self.end}) {len(self.entries)} entries>"

    @property
    def span(self) -> int:
        return self.end - self.start

    def advance(self) -> bool:
        """Move ``start`` past the done entries and gaps at its head; True if it moved."""
        s = share_advance(self.entries, self.start, self.end)
        moved = s != self.start
        self.start = s
        return moved

    def skip_to(self, offset: int) -> None:
        """Retention deleted everything below ``offset``: it is gone, whatever its state."""
        if offset <= self.start:
            return
        for o in [o for o in self.entries if o < offset]:
            del self.entries[o]
        self.start = offset
        self.end = max(self.end, offset)


# -- bytes ------------------------------------------------------------------------


def encode_key(group: str, topic: str, partition: int) -> bytes:
    g, t = group.encode(), topic.encode()
    return b"".join((_h.pack(KEY_VERSION), _H.pack(len(g)), g, _H.pack(len(t)), t, _i.pack(partition)))


def decode_key(buf: bytes) -> tuple[str, str, int]:
    """(group, topic, partition); DecodeError on anything else."""
    try:
        (version,) = _h.unpack_from(buf, 0)
        if version != KEY_VERSION:
            raise DecodeError(f"share state key version {version} is not {KEY_VERSION}")
        pos = 2
        out = []
        for _ in range(2):
            (n,) = _H.unpack_from(buf, pos)
            out.append(bytes(buf[pos + 2:pos + 2 + n]).decode())
            pos += 2 + n
        (partition,) = _i.unpack_from(buf, pos)
        if pos + 4 != len(buf):
            raise DecodeError(f"share state key has {len(buf) - pos - 4} trailing bytes")
    except (struct.error, UnicodeDecodeError) as e:
        raise DecodeError(f"bad share state key: {e}") from None
    return out[0], out[1], partition


def encode_window(w: Window) -> bytes:
    # Lock owners and deadlines are not state (see the module docstring).
    return share_encode_window(VALUE_VERSION, w.start, w.end, w.entries)


def decode_window(topic: str, partition: int, buf: bytes) -> Window:
    """A window as a restart sees it: acquired entries are available again,
    keeping their delivery count."""
    try:
        version, start, end, n = _head.unpack_from(buf, 0)
        if version != VALUE_VERSION:
            raise DecodeError(f"share state value version {version} is not {VALUE_VERSION}")
        if len(buf) != _head.size + n * _entry.size or end < start or n < 0:
            raise DecodeError(f"share state value of {len(buf)} bytes does not hold {n} entries")
        entries = {}
        for i in range(n):
            delta, state, count, aux = _entry.unpack_from(buf, _head.size + i * _entry.size)
            if not 0 <= state <= DEAD_PENDING:
                raise DecodeError(f"share state entry has state {state}")
            if state == ACQUIRED:
                state, aux = AVAILABLE, 0
            entries[start + delta] = Entry(state, count, aux)
    except struct.error as e:
        raise DecodeError(f"bad share state value: {e}") from None
    return Window(topic, partition, start, end, entries)

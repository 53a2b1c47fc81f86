"""Type stubs and the CONTRACT of the native core ``umlog._native.core``.

Everything per record happens here; Python calls once per batch (or once per
record for ``BatchBuilder.append``, which adds to an open batch).

``Buffer`` is anything with the buffer protocol: bytes, bytearray, memoryview,
pyarrow.Buffer, mmap, numpy arrays of uint8. Positions are byte offsets into it;
``end=-1`` means len(buf).

Errors: malformed bytes raise ``umlog.errors.DecodeError`` (truncation, varint
overflow) or ``umlog.errors.CorruptBatchError`` (with ``.position``: the batch's
start) and never crash the interpreter. Non-bytes-like values/keys raise
TypeError.

RecordBatch v2 (magic 2), all big-endian, as Kafka's DefaultRecordBatch::

    0  baseOffset int64
    8  batchLength int32        bytes after this field (total size = 12 + batchLength)
   12  partitionLeaderEpoch int32
   16  magic int8 (=2)
   17  crc uint32               CRC32C of bytes [21, end)
   21  attributes int16         bits 0-2 codec, 3 timestampType, 4 transactional, 5 control
   23  lastOffsetDelta int32
   27  baseTimestamp int64       (Kafka calls it firstTimestamp)
   35  maxTimestamp int64
   43  producerId int64
   51  producerEpoch int16
   53  baseSequence int32
   57  recordsCount int32
   61  records (compressed as a whole when codec != 0)

    Record: length varint | attributes int8 | timestampDelta varlong |
            offsetDelta varint | keyLength varint (-1 = null) | key |
            valueLength varint (-1 = null) | value | headersCount varint |
            [headerKeyLength varint | headerKey utf8 | headerValueLength varint | value]*
"""

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Optional

Buffer = Any

BATCH_HEADER_SIZE: int  # 61
LOG_OVERHEAD: int  # 12: baseOffset + batchLength
MAGIC: int  # 2
CODEC_NONE: int  # 0
CODEC_GZIP: int  # 1
CODEC_SNAPPY: int  # 2
CODEC_LZ4: int  # 3
CODEC_ZSTD: int  # 4
ATTR_TIMESTAMP_TYPE: int  # 0x08 (LogAppendTime)
ATTR_TRANSACTIONAL: int  # 0x10
ATTR_CONTROL: int  # 0x20

# --- CRC32C (Castagnoli, reflected, init/xorout 0xffffffff) ------------------

def crc32c(data: Buffer, crc: int = 0) -> int:
    """CRC32C of data, continuing from crc (a previous result). HW when present."""

def crc32c_sw(data: Buffer, crc: int = 0) -> int:
    """Same, always the portable table implementation (for tests)."""

def crc32c_hw_available() -> bool: ...

# --- zig-zag varints (Kafka ByteUtils) -----------------------------------------

def size_of_varint(value: int) -> int: ...  # int32 range, else ValueError
def write_varint(value: int) -> bytes: ...
def read_varint(buf: Buffer, pos: int = 0) -> tuple[int, int]:
    """(value, next position). DecodeError if truncated or more than 5 bytes."""

def size_of_varlong(value: int) -> int: ...  # int64 range
def write_varlong(value: int) -> bytes: ...
def read_varlong(buf: Buffer, pos: int = 0) -> tuple[int, int]: ...  # at most 10 bytes

# --- Kafka's murmur2 (the Java client's default partitioner) -------------------

def murmur2(data: Buffer) -> int:
    """Signed 32-bit result, as org.apache.kafka.common.utils.Utils.murmur2.

    The partition of a key is ``(murmur2(key) & 0x7fffffff) % num_partitions``.
    """

def partition_for_key(key: Buffer, num_partitions: int) -> int: ...

# --- records --------------------------------------------------------------------

class Record:
    """One decoded record. Immutable; compares equal field by field."""

    offset: int
    timestamp: int  # ms since the epoch
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]  # () when none (shared empty tuple)
    topic: str | None
    partition: int  # -1 when not known
    def __init__(
        self,
        offset: int,
        timestamp: int,
        key: bytes | None,
        value: bytes | None,
        headers: tuple = (),
        topic: str | None = None,
        partition: int = -1,
    ) -> None: ...

class BatchInfo:
    """Header fields of one batch, as found at ``position``."""

    position: int
    size: int  # total bytes: 12 + batchLength
    base_offset: int
    last_offset: int  # base_offset + lastOffsetDelta
    record_count: int
    partition_leader_epoch: int
    attributes: int
    codec: int
    timestamp_type: int  # 0 CreateTime, 1 LogAppendTime
    is_transactional: bool
    is_control: bool
    first_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    crc: int
    delayed: int  # records with a delay header (validate_batch with check_records; else 0)

def has_delay_headers(headers: Iterable[tuple[str, Buffer | None]] | None) -> bool:
    """Whether one record's headers hold ``umlog-delay-ms`` or ``umlog-deliver-at``."""

def any_delay_headers(headers: Sequence[Iterable[tuple[str, Buffer | None]] | None] | None) -> bool:
    """Whether any record's headers (per-record lists, as append_many takes) hold a delay key."""

# --- encode ---------------------------------------------------------------------

def encode_batch(
    values: Sequence[Buffer | None],
    keys: Sequence[Buffer | None] | None = None,
    headers: Sequence[Iterable[tuple[str, Buffer | None]] | None] | None = None,
    timestamps: Sequence[int | None] | None = None,
    *,
    base_offset: int = 0,
    now_ms: int = -1,  # timestamp for records whose timestamp is None; -1 = current time
    codec: int = 0,
    producer_id: int = -1,
    producer_epoch: int = -1,
    base_sequence: int = -1,
    log_append_time: bool = False,
    partition_leader_epoch: int = 0,
) -> bytes:
    """One complete RecordBatch v2 (CRC set). len(keys/headers/timestamps) must
    equal len(values) when given. Empty ``values`` is a ValueError.
    With ``log_append_time`` the records keep their timestamps and the batch's
    maxTimestamp is ``now_ms`` (the append time), as Kafka's broker writes it."""

def encode_batch_arrow(
    values: Any,  # pyarrow BinaryArray/LargeBinaryArray/StringArray (nulls allowed)
    keys: Any = None,
    timestamps: Any = None,  # int64 ms array or None
    *,
    base_offset: int = 0,
    now_ms: int = -1,
    codec: int = 0,
) -> bytes:
    """Same from Arrow arrays, reading their buffers directly (no per-record Python)."""

class BatchBuilder:
    """An open batch that grows one record per native call.

    Not thread-safe: the owner (a Partition) serialises calls.
    """

    def __init__(self, codec: int = 0) -> None: ...
    @property
    def count(self) -> int: ...
    @property
    def size(self) -> int:
        """Bytes the batch would take if built now, uncompressed (>= 61 when count > 0, 0 when empty)."""
    @property
    def max_timestamp(self) -> int: ...  # -1 when empty
    def append(
        self,
        value: Buffer | None,
        key: Buffer | None = None,
        headers: Iterable[tuple[str, Buffer | None]] | None = None,
        timestamp: int | None = None,
    ) -> int:
        """Add one record; returns the timestamp used (now in ms when None)."""
    def build(
        self,
        base_offset: int,
        *,
        producer_id: int = -1,
        producer_epoch: int = -1,
        base_sequence: int = -1,
        log_append_time: bool = False,
    ) -> bytes:
        """The complete batch (compressed per codec, CRC set); then empty again."""
    def clear(self) -> None: ...

# --- validate / patch ----------------------------------------------------------

def validate_batch(buf: Buffer, pos: int = 0, end: int = -1, check_records: bool = True) -> BatchInfo:
    """Validate the batch starting at pos: whole batch present within [pos, end),
    batchLength >= 49, magic 2, CRC32C, and (check_records) that the records
    (decompressed when compressed) are exactly recordsCount well-formed records
    with offsetDelta 0..n-1, lastOffsetDelta == n-1, and nothing left over.
    Raises CorruptBatchError(message naming the field, position=pos)."""

def batch_info(buf: Buffer, pos: int = 0, end: int = -1) -> BatchInfo:
    """Header only, no CRC, no records (DecodeError if the header is truncated)."""

def set_base_offset(buf: Buffer, pos: int, base_offset: int) -> None:
    """Write baseOffset in place (writable buffer, else BufferError). The CRC does not cover it."""

def recompress_batch(buf: Buffer, pos: int, codec: int) -> bytes:
    """The batch at pos with its records in ``codec`` (0: none), as new bytes: the
    codec bits, batchLength and CRC rewritten, every other header field kept.
    Not validated here; records that do not decompress raise CorruptBatchError."""

def set_log_append_time(buf: Buffer, pos: int, timestamp: int) -> None:
    """In place: set the LogAppendTime attribute bit, maxTimestamp = timestamp,
    and recompute the CRC (as Kafka does for LogAppendTime topics)."""

# --- decode ---------------------------------------------------------------------

def decode_records(
    buf: Buffer,
    pos: int = 0,
    end: int = -1,
    min_offset: int = 0,
    max_records: int = -1,
    topic: str | None = None,
    partition: int = -1,
    check_crc: bool = False,
) -> tuple[list[Record], int]:
    """Decode whole batches from pos; returns (records, next_pos).

    Skips records with offset < min_offset and control batches; decompresses
    compressed batches (gzip, snappy raw or xerial-framed, lz4 frame, zstd)
    via cramjam. Stops after max_records (-1: no limit) or at end. A batch that
    is cut off by ``end`` is not decoded and next_pos points at its start (the
    caller reads more); a batch whose header/records are malformed raises
    CorruptBatchError. When max_records stops decoding mid-batch, next_pos is
    the start of that batch (the caller resumes with min_offset)."""

# --- scan -----------------------------------------------------------------------

class ScanResult:
    """Batch boundaries found by scan_batches. Arrays are numpy int64, one entry
    per valid batch, in file order."""

    positions: Any
    sizes: Any
    base_offsets: Any
    last_offsets: Any
    max_timestamps: Any
    count: int
    valid_end: int  # position just after the last valid batch (== pos when none)
    next_offset: int  # last valid batch's last_offset + 1 (expect_offset when none)
    error: str | None  # None: stopped at end cleanly; else why it stopped
    error_position: int  # -1 when error is None

def scan_batches(
    buf: Buffer,
    pos: int = 0,
    end: int = -1,
    expect_offset: int = -1,
    check_crc: bool = True,
    max_batches: int = -1,
) -> ScanResult:
    """Walk batches from pos to end without decoding records. Stops (error set)
    at the first batch that is cut off, has batchLength < 49, magic != 2, a bad
    CRC (check_crc), or whose baseOffset != expect_offset (when expect_offset >= 0;
    expect_offset then becomes the batch's last_offset + 1)."""

# --- index search -----------------------------------------------------------------

def offset_index_lookup(buf: Buffer, entries: int, relative_offset: int) -> int:
    """Largest slot whose relative offset (u32 BE at slot*8) <= relative_offset,
    -1 if none. Binary search over the mapped bytes, warm section first."""

def time_index_lookup(buf: Buffer, entries: int, timestamp: int) -> int:
    """Largest slot whose timestamp (i64 BE at slot*12) <= timestamp, -1 if none."""

# --- the per-record append path (appender.pyx) --------------------------------------

class RecordMetadata:
    """Where an appended record went; behaves like the tuple (partition, offset, timestamp)."""

    partition: int
    offset: int
    timestamp: int
    def __init__(self, partition: int, offset: int, timestamp: int) -> None: ...
    def __len__(self) -> int: ...
    def __getitem__(self, i: int) -> int: ...
    def __iter__(self) -> Any: ...

class OpenBatch:
    """A partition's open batch, next offset and lock (``with ob: ...``; non-reentrant)."""

    builder: BatchBuilder
    next_offset: int
    seal_bytes: int
    def __init__(self, codec: int = 0, next_offset: int = 0, seal_bytes: int = 65536) -> None: ...
    def __enter__(self) -> OpenBatch: ...
    def __exit__(self, *exc: Any) -> bool: ...
    def locked(self) -> bool: ...
    @property
    def count(self) -> int: ...
    @property
    def base_offset(self) -> int: ...
    @property
    def since(self) -> float: ...
    @property
    def full(self) -> bool: ...
    def set_codec(self, codec: int) -> None: ...
    def add(self, value: Buffer | None, key: Buffer | None = None, headers: Any = None, timestamp: int | None = None) -> tuple[int, int]:
        """Append to the open batch (caller holds the lock): (offset, timestamp)."""

class TopicAppender:
    """Routes a record (partition, murmur2 of the key, or sticky) and appends it under the partition's lock."""

    def __init__(self, batches: list[OpenBatch], on_full: Callable[[int], Any]) -> None: ...
    def set_batches(self, batches: list[OpenBatch]) -> None: ...
    def set_delayed(self, fn: Callable[..., RecordMetadata] | None) -> None: ...
    def append(
        self,
        value: Buffer | None,
        key: Buffer | None = None,
        headers: Any = None,
        timestamp: int | None = None,
        partition: int | None = None,
    ) -> RecordMetadata: ...

# --- decode into Arrow buffers (columns.pyx) ----------------------------------------

def decode_columns(
    buf: Buffer, pos: int = 0, end: int = -1, min_offset: int = 0, max_records: int = -1, check_crc: bool = False
) -> tuple[int, int, tuple]:
    """Decode whole batches from pos into the buffers of Arrow columns, with the
    batches, skipping and stopping rules of decode_records; the records are
    parsed without the GIL. Returns ``(next_pos, count, columns)``, columns
    being pyarrow Buffers (validity None when no null) and counts::

        (offsets int64, timestamps int64,
         key_validity, key_offsets int32, key_data, key_nulls,
         value_validity, value_offsets int32, value_data, value_nulls,
         header_offsets int32 (list offsets), header_count,
         header_key_offsets int32, header_key_data,
         header_value_validity, header_value_offsets int32, header_value_data,
         header_value_nulls, bad_utf8)

    ``bad_utf8``: some header key is not UTF-8 (the caller replaces it, as
    decode_records does). umlog/log/table.py makes a RecordBatch of it."""

# --- compaction (compact.pyx) ----------------------------------------------------------

def key_hash(key: Buffer) -> tuple[int, int]:
    """(h1, h2): the 128-bit key hash record_keys computes (two uint64)."""

def record_keys(buf: Buffer, pos: int = 0, end: int = -1) -> tuple[int, Any, Any, Any, Any]:
    """The records of the whole batches in [pos, end), control batches skipped:
    ``(next_pos, offsets int64[], h1 uint64[], h2 uint64[], flags uint8[])``,
    one entry per record in log order; flags bit 0 = null key (h1 = h2 = 0),
    bit 1 = null value (tombstone)."""

class BatchFilter:
    """Rewrites batches keeping the records a mask selects, offsets unchanged:
    a kept record keeps its bytes; a batch keeps baseOffset, lastOffsetDelta,
    baseTimestamp, attributes (codec) and producer fields, with recordsCount,
    maxTimestamp (CreateTime), length and CRC recomputed; a run of batches left
    empty becomes ONE empty batch (recordsCount 0, timestamps and producer -1)
    spanning their offsets; control batches are copied. So the output stays
    offset-contiguous batch to batch. Not thread-safe."""

    records_in: int
    records_kept: int
    batches_in: int
    batches_out: int
    def filter(self, buf: Buffer, pos: int, end: int, keep: Any) -> tuple[bytes, int]:
        """Filter the whole batches in [pos, end); ``keep`` is a uint8 array with
        one entry per record as record_keys numbers them. Returns (bytes,
        next_pos); an open run of emptied batches is written by a later call
        or by finish()."""
    def finish(self) -> bytes:
        """End an open run of emptied batches: its bytes (maybe empty)."""

def drop_records(buf: Buffer, pos: int, keep: Any) -> bytes:
    """The batch at ``pos`` without the records whose ``keep`` (uint8, one per
    record) is 0: baseOffset, lastOffsetDelta, producer fields, baseTimestamp
    and codec kept (the dropped offsets become gaps); no record left: an empty
    batch (recordsCount 0, codec none). Delayed delivery's batch split."""

class KeyMap:
    """The newest offset of each key (by record_keys' 128-bit hash): a native
    hash table on h1; equal h1 with different h2 marks a collision (the
    cleaner keeps every record of such keys). Not thread-safe."""

    collisions: int
    def __len__(self) -> int: ...
    def add(self, offsets: Any, h1: Any, h2: Any, flags: Any) -> None:
        """Add records (arrays as record_keys returns them, in offset order);
        keyless ones (flags bit 0) are skipped; a later offset wins."""
    def winners(self) -> Any:
        """Sorted int64 array: the newest offset of every key without a collision."""
    def collided(self) -> Any:
        """uint64 array: h1 of the keys with a collision."""
    def superseded(self, offsets: Any, h1: Any) -> Any:
        """uint8 array: 1 where the map holds a newer offset of the record's
        key (and the key has no collision)."""

# --- Kafka's old message format, magic 0 and 1 (legacy.pyx) ---------------------------

def crc32(data: Buffer, crc: int = 0) -> int:
    """CRC32 (IEEE, as zlib.crc32) of data, continuing from crc: the checksum of
    Kafka's old message format."""

def xxh32(data: Buffer, seed: int = 0) -> int:
    """XXH32 of data (the hash of an LZ4 frame's header checksum)."""

def legacy_to_batch(buf: Buffer, pos: int = 0, end: int = -1) -> tuple[bytes, int]:
    """An old message set (Produce v0-2) as one RecordBatch v2: (batch, count).
    Every message's CRC32 checked, compressed messages opened (gzip, xerial or
    raw snappy, lz4 with Kafka 0.8's broken header checksum for magic 0),
    offsets ignored (baseOffset 0, deltas 0..n-1), magic 0 timestamps -1, no
    producer id; compressed in the first compressed message's codec.
    CorruptBatchError (``position``: the top-level message) on a bad CRC,
    truncation, a malformed or empty set."""

def batch_to_legacy(
    buf: Buffer,
    magic: int,
    pos: int = 0,
    end: int = -1,
    min_offset: int = 0,
    max_bytes: int = -1,
    at_least_one: bool = True,
) -> tuple[bytes, int]:
    """Stored v2 batches in [pos, end) as an old message set of ``magic`` (0/1)
    for Fetch v0-3: (message_set, next_offset). CRC32C checked per batch;
    control batches, records below min_offset and headers left out; gzip,
    snappy and lz4 batches become one compressed message each (zstd: sent
    uncompressed); whole messages up to max_bytes, the first one always when
    at_least_one."""

# --- the AMQP door's message path (umlog/server/amqp/codec.py has the mapping) ---

def amqp_content_frames(channel: int, headers: Iterable[tuple[str, bytes | None]], body: Buffer | None,
                        frame_max: int, extra_table: bytes = b"") -> bytes:
    """The content header frame and body frames of one message, as one bytes."""

def amqp_deliver_frames(records: list, channel: int, consumer_tag: bytes, first_tag: int, frame_max: int,
                        exchange_names: dict[str, bytes]) -> bytes:
    """basic.deliver, content header and body frames of share-group records, with
    delivery tags from ``first_tag`` on, as one bytes. ``exchange_names`` maps a
    record's topic to its exchange name (bytes); names not in it are the topic's."""

def amqp_parse_properties(payload: Buffer) -> tuple[int, list[tuple[str, bytes]], bytes | None]:
    """A content-header frame's payload -> (body size, record headers, headers
    table bytes or None: the caller checks that table). ValueError when it is
    not one."""

def amqp_scan_publishes(buf: Buffer, pos: int, end: int, channel: int, frame_max: int,
                        max_size: int) -> tuple[list[tuple[bytes, bytes, int, list, bytes | None, bytes]], int]:
    """Whole basic.publish messages on ``channel`` from ``pos`` on, up to the first
    frame that is anything else or not all there: ([(exchange, routing key,
    publish bits, record headers, headers table or None, body)], position after them)."""

# --- share groups' per-record paths (umlog/delivery/group.py and state.py) ---

class ShareEntry:
    """One fetched offset's state in a share-group window (``state.Entry``):
    state, count, aux durable; deadline and owner (the lock) in memory only."""
    state: int
    count: int
    aux: int
    deadline: float
    owner: Any
    def __init__(self, state: int, count: int, aux: int = 0) -> None: ...

class ShareRecord:
    """A record handed out by a share group's ``acquire``: the log's record plus
    where it is from and how many times it has been handed out (1 the first time)."""
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Any
    topic: str
    partition: int
    delivery_count: int
    def __init__(self, r: Any, topic: str, partition: int, delivery_count: int) -> None: ...

def share_take_fresh(fresh: list[Record], entries: dict[int, ShareEntry], handle: Any, deadline: float, topic: str,
                     partition: int, limit: int, why_dead: Callable[[Record, int, int], str | None], now_w: int,
                     out: list[ShareRecord], dead: list, window: Any) -> int:
    """Lock never-delivered records to ``handle`` (a new ACQUIRED entry each, below
    ``limit``; TTL-dead ones to ``dead``): the offset after the last taken, or -1."""

def share_ack(records: list, handle: Any, windows: dict, now_m: float) -> set | None:
    """ACKED for every record if each is held by ``handle``: the windows changed,
    or None (nothing changed) if one is not held."""

def share_scan_window(entries: dict[int, ShareEntry], now_m: float, now_w: int) -> tuple[list[int], list[int]]:
    """(offsets available now, offsets whose lock expired) of one window."""

def share_advance(entries: dict[int, ShareEntry], start: int, end: int) -> int:
    """A window's new start past its done head (those entries removed)."""

def share_encode_window(version: int, start: int, end: int, entries: dict[int, ShareEntry]) -> bytes:
    """A window's state value bytes (``state.encode_window``)."""

# --- the MQTT door's message path (umlog/server/mqtt/codec.py is the reference) ---

def mqtt_scan(buf: Buffer, pos: int, version: int, max_packet_size: int, out: list, publish_cls: type,
              puback_cls: type, plain_headers: tuple | None = None) -> int:
    """Decode the run of plain PUBLISH and PUBACK packets at ``buf[pos:]`` into
    ``out`` (instances of the two classes, slots set as the codec's decoder
    would); the position after the last one taken. Stops without raising at a
    partial packet, one over ``max_packet_size``, another type, MQTT 5
    properties or reason codes, or anything malformed. With ``plain_headers``
    (the record headers of a plain message, by QoS), consecutive plain QoS 0/1
    PUBLISHes without RETAIN and with a valid topic name come out as one
    MqttPublishRun, consecutive PUBACKs as one MqttAckRun."""

class MqttOutgoing:
    """A QoS 1/2 message sent to a client and not settled yet."""
    topic: str
    payload: bytes
    props: dict
    qos: int
    retain: bool
    loc: tuple[str, int, int] | None  # (log topic, partition, offset)
    state: int  # 1, 2, or 3 once PUBREC'd
    share: Any
    def __init__(self, topic: str, payload: bytes, props: dict, qos: int, retain: bool,
                 loc: tuple[str, int, int] | None, share: Any = None) -> None: ...

class MqttPublishRun:
    """Consecutive plain PUBLISHes as ``append_many``'s lists, and the PUBACKs of the QoS 1 ones."""
    keys: list[bytes]
    values: list[bytes]
    headers: list[tuple]
    raw: bytes
    @property
    def acks(self) -> bytes: ...
    @property
    def count(self) -> int: ...
    def absorb(self, other: MqttPublishRun) -> None: ...
    def packets(self, publish_cls: type, puback_cls: type) -> list: ...

class MqttAckRun:
    """Consecutive PUBACKs (``raw``: 4 bytes each)."""
    raw: bytes
    @property
    def count(self) -> int: ...
    def absorb(self, other: MqttAckRun) -> None: ...
    def packet_ids(self) -> list[int]: ...

def mqtt_settle(run: MqttAckRun, inflight: dict[int, MqttOutgoing]) -> tuple[int, list[int]]:
    """Remove the entries the PUBACKs settle (state 1, no share group); (how
    many, the packet ids left for the per-packet path)."""

def mqtt_runs(records: list[Record], qos_header: str) -> list[tuple[bytes | None, int, int, bool]]:
    """(key, start, stop, plain) per run of records with one key; plain: only
    the QoS header, valued b"0", b"1" or b"2"."""

def mqtt_encode_run(records: list[Record], start: int, stop: int, topic: str, max_qos: int, version: int,
                    session: Any, inflight: dict[int, MqttOutgoing], log_topic: str, partition: int,
                    max_packet: int, room: int = -1, skip_qos0: bool = False, aliases: dict[str, int] | None = None,
                    alias_max: int = 0) -> tuple[bytes, int, int] | None:
    """The PUBLISH frames of a plain run for one subscriber, packet ids and
    in-flight entries taken: (frames, how many at QoS 1/2, the index after the
    last record taken), or None (nothing taken) when a frame is over
    ``max_packet``. MQTT 5: with ``aliases`` (topic name -> alias given, at
    most ``alias_max``) the name goes once with a new alias, then the alias alone."""

def mqtt_wait_run(records: list[Record], start: int, stop: int, topic: str, max_qos: int, log_topic: str,
                  partition: int, waiting: Any) -> None:
    """Append a plain run to ``waiting`` as its entries."""

def mqtt_encode_waiting(waiting: Any, room: int, version: int, session: Any, inflight: dict[int, MqttOutgoing],
                        max_packet: int, aliases: dict[str, int] | None = None,
                        alias_max: int = 0) -> tuple[bytes, int, int]:
    """Frames of the plain entries at the front of ``waiting`` that ``room``
    leaves place for: (frames, entries taken, how many at QoS 1/2)."""

def mqtt_session_out(inflight: dict[int, MqttOutgoing], quote: Any) -> bytes:
    """The ``out`` list of a session record as JSON bytes."""

def mqtt_publish_frame(topic: str, payload: Buffer, flags: int, packet_id: int, props: bytes) -> bytes:
    """The bytes of one PUBLISH: ``flags`` = DUP << 3 | QoS << 1 | RETAIN, the
    packet id left out at QoS 0, ``props`` already encoded (b"" in 3.1.1).
    ValueError for a topic over 65,535 bytes or a QoS >= 1 without a packet id."""

def share_settle_check(acks: list[tuple[int, str]], entries: dict[int, ShareEntry], handle: Any, now_m: float,
                       kinds: tuple[str, ...]) -> list[tuple[int, ShareEntry, str]] | None:
    """The entries a settle by offset changes ([(offset, entry, kind)]; a gap with no
    entry skipped), or None (nothing changed) if a kind is unknown or an offset not held."""

def share_accept(held: list[tuple[int, ShareEntry, str]]) -> list[tuple[int, ShareEntry, str]]:
    """ACKED for the accept and gap entries; the others returned in order."""

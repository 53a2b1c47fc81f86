# Record and BatchInfo: the two value classes the native core returns.


@cython.freelist(1024)
@cython.final
@cython.no_gc
cdef class Record:
    """One decoded record. Immutable; compares equal field by field.

    ``headers`` is a tuple of ``(str, bytes | None)`` pairs, the shared empty
    tuple when there are none. ``topic``/``partition`` are whatever the reader
    passed to decode_records (None / -1 when not known).

    The class is not tracked by the cyclic GC (``no_gc``): its fields are
    bytes, str, ints and tuples of those, which cannot form cycles; skipping
    the GC keeps decode_records from triggering collections every 700 records:
    22.9 vs 18.1 M records/s decoding 10,000 x 100-byte values (the
    ``decode_records`` row of ``python bench/micro.py``, with and without).
    """

    cdef readonly int64_t offset
    cdef readonly int64_t timestamp
    cdef readonly object key
    cdef readonly object value
    cdef readonly tuple headers
    cdef readonly object topic
    cdef readonly int partition

    def __init__(self, int64_t offset, int64_t timestamp, key, value,
                 headers=(), topic=None, int partition=-1):
        self.offset = offset
        self.timestamp = timestamp
        self.key = key
        self.value = value
        self.headers = tuple(tuple(h) for h in headers) if headers else EMPTY_TUPLE
        self.topic = topic
        self.partition = partition

    cdef tuple _fields(self):
        return (self.offset, self.timestamp, self.key, self.value, self.headers,
                self.topic, self.partition)

    def __eq__(self, other):
        if not isinstance(other, Record):
            return NotImplemented
        return self._fields() == (<Record>other)._fields()

    def __hash__(self):
        return hash(self._fields())

    def __reduce__(self):
        return (Record, self._fields())

    def __repr__(self):
        return (f"Record(offset={self.offset}, timestamp={self.timestamp}, "
                f"key={self.key!r}, value={self.value!r}, headers={self.headers!r}, "
                f"topic={self.topic!r}, partition={self.partition})")


cdef inline Record make_record(int64_t offset, int64_t timestamp, object key,
                               object value, tuple headers, object topic,
                               int partition):
    cdef Record r = Record.__new__(Record)
    r.offset = offset
    r.timestamp = timestamp
    r.key = key
    r.value = value
    r.headers = headers
    r.topic = topic
    r.partition = partition
    return r


cdef struct BatchHeader:
    int64_t base_offset
    int32_t batch_length
    int32_t partition_leader_epoch
    int8_t magic
    uint32_t crc
    int16_t attributes
    int32_t last_offset_delta
    int64_t base_timestamp
    int64_t max_timestamp
    int64_t producer_id
    int16_t producer_epoch
    int32_t base_sequence
    int32_t records_count
    int32_t delayed           # records with a delay header (check_batch_records counts)


cdef inline void read_header(const char *b, BatchHeader *h) noexcept nogil:
    """Fields of the 61-byte header at b (the caller checked the length)."""
    h.base_offset = <int64_t>umlog_load_be64(b + BASE_OFFSET_OFFSET)
    h.batch_length = <int32_t>umlog_load_be32(b + LENGTH_OFFSET)
    h.partition_leader_epoch = <int32_t>umlog_load_be32(b + PARTITION_LEADER_EPOCH_OFFSET)
    h.magic = <int8_t>b[MAGIC_OFFSET]
    h.crc = umlog_load_be32(b + CRC_OFFSET)
    h.attributes = <int16_t>umlog_load_be16(b + ATTRIBUTES_OFFSET)
    h.last_offset_delta = <int32_t>umlog_load_be32(b + LAST_OFFSET_DELTA_OFFSET)
    h.base_timestamp = <int64_t>umlog_load_be64(b + BASE_TIMESTAMP_OFFSET)
    h.max_timestamp = <int64_t>umlog_load_be64(b + MAX_TIMESTAMP_OFFSET)
    h.producer_id = <int64_t>umlog_load_be64(b + PRODUCER_ID_OFFSET)
    h.producer_epoch = <int16_t>umlog_load_be16(b + PRODUCER_EPOCH_OFFSET)
    h.base_sequence = <int32_t>umlog_load_be32(b + BASE_SEQUENCE_OFFSET)
    h.records_count = <int32_t>umlog_load_be32(b + RECORDS_COUNT_OFFSET)
    h.delayed = 0


@cython.final
cdef class BatchInfo:
    """Header fields of one batch, as found at ``position``."""

    cdef readonly Py_ssize_t position
    cdef readonly int64_t size
    cdef readonly int64_t base_offset
    cdef readonly int64_t last_offset
    cdef readonly int32_t record_count
    cdef readonly int32_t partition_leader_epoch
    cdef readonly int attributes
    cdef readonly int codec
    cdef readonly int timestamp_type
    cdef readonly bint is_transactional
    cdef readonly bint is_control
    cdef readonly int64_t first_timestamp
    cdef readonly int64_t max_timestamp
    cdef readonly int64_t producer_id
    cdef readonly int producer_epoch
    cdef readonly int32_t base_sequence
    cdef readonly uint32_t crc
    cdef readonly int32_t delayed

    def __repr__(self):
        return (f"BatchInfo(position={self.position}, size={self.size}, "
                f"base_offset={self.base_offset}, last_offset={self.last_offset}, "
                f"record_count={self.record_count}, codec={self.codec}, "
                f"attributes={self.attributes:#x}, first_timestamp={self.first_timestamp}, "
                f"max_timestamp={self.max_timestamp}, producer_id={self.producer_id}, "
                f"producer_epoch={self.producer_epoch}, base_sequence={self.base_sequence}, "
                f"crc={self.crc:#010x})")


cdef BatchInfo make_info(Py_ssize_t position, BatchHeader *h):
    cdef BatchInfo i = BatchInfo.__new__(BatchInfo)
    i.position = position
    i.size = <int64_t>h.batch_length + C_LOG_OVERHEAD
    i.base_offset = h.base_offset
    i.last_offset = h.base_offset + h.last_offset_delta
    i.record_count = h.records_count
    i.partition_leader_epoch = h.partition_leader_epoch
    i.attributes = <uint16_t>h.attributes
    i.codec = h.attributes & C_CODEC_MASK
    i.timestamp_type = 1 if h.attributes & C_ATTR_TIMESTAMP_TYPE else 0
    i.is_transactional = (h.attributes & C_ATTR_TRANSACTIONAL) != 0
    i.is_control = (h.attributes & C_ATTR_CONTROL) != 0
    i.first_timestamp = h.base_timestamp
    i.max_timestamp = h.max_timestamp
    i.producer_id = h.producer_id
    i.producer_epoch = h.producer_epoch
    i.base_sequence = h.base_sequence
    i.crc = h.crc
    i.delayed = h.delayed
    return i

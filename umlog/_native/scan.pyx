# scan_batches: walk a segment's batches without decoding records (recovery,
# index rebuild, fetch ranges). The walk runs without the GIL.

import numpy as _np


cdef enum ScanStop:
    SCAN_END = 0            # reached end cleanly
    SCAN_MAX = 1            # max_batches reached
    SCAN_SHORT_HEADER = 2   # fewer than 12 bytes left
    SCAN_BAD_LENGTH = 3     # batchLength < 49
    SCAN_TRUNCATED = 4      # batch cut off by end
    SCAN_BAD_MAGIC = 5
    SCAN_BAD_CRC = 6
    SCAN_BAD_OFFSET = 7     # baseOffset != expected


cdef struct ScanState:
    Py_ssize_t pos
    Py_ssize_t end
    int64_t expect
    bint check_crc
    Py_ssize_t max_batches
    # results
    Py_ssize_t count
    Py_ssize_t capacity
    int64_t *rows            # 5 int64 per batch
    int stop
    int64_t detail1
    int64_t detail2


cdef int scan_walk(const char *base, ScanState *s) noexcept nogil:
    """Walk batches from s.pos; returns -1 on out-of-memory, else 0."""
    cdef Py_ssize_t avail, size
    cdef int32_t blen
    cdef BatchHeader h
    cdef uint32_t computed
    cdef int64_t *nr
    while True:
        if s.max_batches >= 0 and s.count >= s.max_batches:
            s.stop = SCAN_MAX
            return 0
        avail = s.end - s.pos
        if avail == 0:
            s.stop = SCAN_END
            return 0
        if avail < C_LOG_OVERHEAD:
            s.stop = SCAN_SHORT_HEADER
            s.detail1 = avail
            return 0
        blen = <int32_t>umlog_load_be32(base + s.pos + LENGTH_OFFSET)
        if blen < C_MIN_BATCH_LENGTH:
            s.stop = SCAN_BAD_LENGTH
            s.detail1 = blen
            return 0
        size = <Py_ssize_t>blen + C_LOG_OVERHEAD
        if size > avail:
            s.stop = SCAN_TRUNCATED
            s.detail1 = size
            s.detail2 = avail
            return 0
        read_header(base + s.pos, &h)
        if h.magic != C_MAGIC:
            s.stop = SCAN_BAD_MAGIC
            s.detail1 = h.magic
            return 0
        if s.check_crc:
            computed = umlog_crc32c(0, base + s.pos + ATTRIBUTES_OFFSET,
                                    <size_t>(size - ATTRIBUTES_OFFSET))
            if computed != h.crc:
                s.stop = SCAN_BAD_CRC
                s.detail1 = h.crc
                s.detail2 = computed
                return 0
        if s.expect >= 0 and h.base_offset != s.expect:
            s.stop = SCAN_BAD_OFFSET
            s.detail1 = h.base_offset
            s.detail2 = s.expect
            return 0
        if s.count == s.capacity:
            s.capacity = s.capacity * 2 if s.capacity else 256
            nr = <int64_t *>realloc(s.rows, <size_t>s.capacity * 5 * sizeof(int64_t))
            if nr == NULL:
                return -1
            s.rows = nr
        nr = s.rows + 5 * s.count
        nr[0] = s.pos
        nr[1] = size
        nr[2] = h.base_offset
        nr[3] = h.base_offset + h.last_offset_delta
        nr[4] = h.max_timestamp
        s.count += 1
        if s.expect >= 0:
            s.expect = h.base_offset + h.last_offset_delta + 1
        s.pos += size


@cython.final
cdef class ScanResult:
    """Batch boundaries found by scan_batches. Arrays are numpy int64, one
    entry per valid batch, in file order."""

    cdef readonly object positions
    cdef readonly object sizes
    cdef readonly object base_offsets
    cdef readonly object last_offsets
    cdef readonly object max_timestamps
    cdef readonly Py_ssize_t count
    cdef readonly Py_ssize_t valid_end
    cdef readonly int64_t next_offset
    cdef readonly object error
    cdef readonly Py_ssize_t error_position

    def __repr__(self):
        return (f"ScanResult(count={self.count}, valid_end={self.valid_end}, "
                f"next_offset={self.next_offset}, error={self.error!r}, "
                f"error_position={self.error_position})")


def scan_batches(buf, Py_ssize_t pos=0, Py_ssize_t end=-1, int64_t expect_offset=-1,
                 bint check_crc=True, Py_ssize_t max_batches=-1):
    """Walk batches from pos to end without decoding records. Stops (error
    set) at the first batch that is cut off, has batchLength < 49, magic != 2,
    a bad CRC (check_crc), or whose baseOffset != expect_offset (when
    expect_offset >= 0; expect_offset then becomes the batch's last_offset + 1).
    Stopping at max_batches or at end is not an error.
    """
    cdef Py_buffer view
    cdef ScanState s
    cdef int rc
    cdef Py_ssize_t i, k
    cdef int64_t[::1] col
    cdef ScanResult res = ScanResult.__new__(ScanResult)
    memset(&s, 0, sizeof(s))
    get_buffer(buf, &view, False)
    try:
        end = resolve_end(view.len, pos, end)
        s.pos = pos
        s.end = end
        s.expect = expect_offset
        s.check_crc = check_crc
        s.max_batches = max_batches
        with nogil:
            rc = scan_walk(<const char *>view.buf, &s)
        if rc < 0:
            raise MemoryError()
        arrays = [_np.empty(s.count, dtype=_np.int64) for k in range(5)]
        for k in range(5):
            col = arrays[k]
            for i in range(s.count):
                col[i] = s.rows[5 * i + k]
        res.positions, res.sizes, res.base_offsets, res.last_offsets, res.max_timestamps = arrays
        res.count = s.count
        res.valid_end = s.pos
        if s.count:
            res.next_offset = s.rows[5 * (s.count - 1) + 3] + 1
        else:
            res.next_offset = expect_offset
        res.error = scan_error(&s)
        res.error_position = -1 if res.error is None else s.pos
        return res
    finally:
        free(s.rows)
        PyBuffer_Release(&view)


cdef object scan_error(ScanState *s):
    cdef Py_ssize_t p = s.pos
    if s.stop == SCAN_END or s.stop == SCAN_MAX:
        return None
    if s.stop == SCAN_SHORT_HEADER:
        return f"truncated batch at position {p}: {s.detail1} bytes, less than the 12-byte log overhead"
    if s.stop == SCAN_BAD_LENGTH:
        return f"bad batchLength {s.detail1} < {C_MIN_BATCH_LENGTH} at position {p}"
    if s.stop == SCAN_TRUNCATED:
        return f"truncated batch at position {p}: batch of {s.detail1} bytes, {s.detail2} available"
    if s.stop == SCAN_BAD_MAGIC:
        return f"bad magic {s.detail1} at position {p} (only magic 2 is supported)"
    if s.stop == SCAN_BAD_CRC:
        return (f"bad CRC at position {p}: stored {<uint32_t>s.detail1:#010x}, "
                f"computed {<uint32_t>s.detail2:#010x}")
    return f"baseOffset {s.detail1} != expected {s.detail2} at position {p}"

# decode_columns: whole batches -> the buffers of Arrow columns (read_table),
# with no per-record Python object.
#
# Theory of operation: two passes over the batches in [pos, end).
#   1. Headers only. Which batches count (not control, last offset >=
#      min_offset), their record counts and the size of their records
#      sections; compressed sections are decompressed here, once, and kept for
#      pass 2. The sums bound every output buffer: a key or value is a slice of
#      its records section, so keys (and values) of a chunk never take more
#      bytes than its records sections together.
#   2. Records, without the GIL: one parse per record, offsets and timestamps
#      stored, key and value bytes copied straight into buffers that pyarrow
#      allocated (64-byte aligned, from its memory pool), which become the
#      Arrow arrays without another copy (pa.Array.from_buffers in
#      umlog/log/table.py). Headers (rare) go to growable malloc buffers,
#      copied once at the end.
#
# Header keys are Arrow strings, so they must be valid UTF-8: keys that are not
# (only a foreign producer writes them) are reported with ``bad_utf8`` and
# replaced by the Python side exactly as decode_records does (errors="replace").

from libc.stdlib cimport calloc


cdef struct GrowBuf:
    char *data
    Py_ssize_t len
    Py_ssize_t cap


cdef inline int grow_reserve(GrowBuf *g, Py_ssize_t extra) noexcept nogil:
    """Room for ``extra`` more bytes; -1 when out of memory."""
    cdef Py_ssize_t need = g.len + extra, cap
    cdef char *nd
    if need <= g.cap:
        return 0
    cap = g.cap * 2 if g.cap else 256
    while cap < need:
        cap *= 2
    nd = <char *>realloc(g.data, <size_t>cap)
    if nd == NULL:
        return -1
    g.data = nd
    g.cap = cap
    return 0


cdef inline int grow_i32(GrowBuf *g, int32_t v) noexcept nogil:
    if grow_reserve(g, 4) < 0:
        return -1
    memcpy(g.data + g.len, &v, 4)
    g.len += 4
    return 0


cdef struct ColState:
    int64_t *offsets
    int64_t *timestamps
    int32_t *key_offsets
    char *key_data
    uint8_t *key_validity
    int32_t *value_offsets
    char *value_data
    uint8_t *value_validity
    int32_t *header_offsets          # list offsets, one per record + 1
    Py_ssize_t n                     # records written
    Py_ssize_t key_pos
    Py_ssize_t value_pos
    Py_ssize_t key_nulls
    Py_ssize_t value_nulls
    Py_ssize_t data_cap              # bytes in key_data and in value_data
    int32_t headers                  # header structs written
    Py_ssize_t header_value_nulls
    bint bad_utf8
    GrowBuf hkey_offsets             # int32
    GrowBuf hkey_data
    GrowBuf hvalue_offsets           # int32
    GrowBuf hvalue_data
    GrowBuf hvalue_validity          # one byte per header, packed at the end


cdef enum FillResult:
    FILL_DONE = 0
    FILL_LIMIT = 1          # stopped on max_records before the batch's end
    FILL_BAD_RECORD = -1    # err, bad_index set
    FILL_NO_MEMORY = -2
    FILL_LEFTOVER = -3      # bytes after the last record
    FILL_OVERFLOW = -4      # more bytes than the bound (cannot happen for a sane batch)


cdef inline bint utf8_valid(const unsigned char *s, Py_ssize_t n) noexcept nogil:
    """Well-formed UTF-8 (Unicode table 3-7: no overlongs, surrogates, > U+10FFFF)."""
    cdef Py_ssize_t i = 0
    cdef unsigned char c, c1
    while i < n:
        c = s[i]
        if c < 0x80:
            i += 1
            continue
        if c < 0xC2 or c > 0xF4:
            return False
        if c < 0xE0:
            if i + 1 >= n or (s[i + 1] & 0xC0) != 0x80:
                return False
            i += 2
            continue
        if i + 1 >= n:
            return False
        c1 = s[i + 1]
        if c < 0xF0:
            if (c == 0xE0 and c1 < 0xA0) or (c == 0xED and c1 > 0x9F) or (c1 & 0xC0) != 0x80:
                return False
            if i + 2 >= n or (s[i + 2] & 0xC0) != 0x80:
                return False
            i += 3
            continue
        if (c == 0xF0 and c1 < 0x90) or (c == 0xF4 and c1 > 0x8F) or (c1 & 0xC0) != 0x80:
            return False
        if i + 3 >= n or (s[i + 2] & 0xC0) != 0x80 or (s[i + 3] & 0xC0) != 0x80:
            return False
        i += 4
    return True


cdef inline int fill_headers(ColState *s, const char *p, int32_t count) noexcept nogil:
    """Append the headers of an already-parsed record (lengths were checked)."""
    cdef int32_t i, klen = 0, vlen = 0
    cdef int err = 0
    cdef char valid
    for i in range(count):
        p = read_vi(p, p + 5, &klen, &err)
        if not s.bad_utf8 and not utf8_valid(<const unsigned char *>p, klen):
            s.bad_utf8 = True
        if grow_reserve(&s.hkey_data, klen) < 0:
            return -1
        memcpy(s.hkey_data.data + s.hkey_data.len, p, <size_t>klen)
        s.hkey_data.len += klen
        if s.hkey_data.len > INT32_MAX:
            return -1
        if grow_i32(&s.hkey_offsets, <int32_t>s.hkey_data.len) < 0:
            return -1
        p += klen
        p = read_vi(p, p + 5, &vlen, &err)
        if vlen < 0:
            valid = 0
            s.header_value_nulls += 1
        else:
            valid = 1
            if grow_reserve(&s.hvalue_data, vlen) < 0:
                return -1
            memcpy(s.hvalue_data.data + s.hvalue_data.len, p, <size_t>vlen)
            s.hvalue_data.len += vlen
            if s.hvalue_data.len > INT32_MAX:
                return -1
            p += vlen
        if grow_i32(&s.hvalue_offsets, <int32_t>s.hvalue_data.len) < 0:
            return -1
        if grow_reserve(&s.hvalue_validity, 1) < 0:
            return -1
        s.hvalue_validity.data[s.hvalue_validity.len] = valid
        s.hvalue_validity.len += 1
    if <int64_t>s.headers + count > INT32_MAX:
        return -1
    s.headers += count
    return 0


cdef int fill_batch(ColState *s, const char *p, const char *e, BatchHeader *h,
                    int64_t min_offset, Py_ssize_t limit, int *err,
                    int32_t *bad_index) noexcept nogil:
    """Columns of the records of one batch with offset >= min_offset, until
    ``s.n`` reaches ``limit`` (-1: none). Returns a FillResult."""
    cdef bint log_append = (h.attributes & C_ATTR_TIMESTAMP_TYPE) != 0
    cdef int32_t i
    cdef RecView r
    cdef int64_t offset
    cdef Py_ssize_t n
    for i in range(h.records_count):
        p = parse_record(p, e, &r, err)
        if p == NULL:
            bad_index[0] = i
            return FILL_BAD_RECORD
        offset = h.base_offset + r.offset_delta
        if offset < min_offset:
            continue
        n = s.n
        if limit >= 0 and n >= limit:
            return FILL_LIMIT
        s.offsets[n] = offset
        s.timestamps[n] = h.max_timestamp if log_append else h.base_timestamp + r.timestamp_delta
        if r.key_len >= 0:
            if s.key_pos + r.key_len > s.data_cap:
                return FILL_OVERFLOW
            memcpy(s.key_data + s.key_pos, r.key, <size_t>r.key_len)
            s.key_pos += r.key_len
            s.key_validity[n >> 3] |= <uint8_t>(1 << (n & 7))
        else:
            s.key_nulls += 1
        s.key_offsets[n + 1] = <int32_t>s.key_pos
        if r.value_len >= 0:
            if s.value_pos + r.value_len > s.data_cap:
                return FILL_OVERFLOW
            memcpy(s.value_data + s.value_pos, r.value, <size_t>r.value_len)
            s.value_pos += r.value_len
            s.value_validity[n >> 3] |= <uint8_t>(1 << (n & 7))
        else:
            s.value_nulls += 1
        s.value_offsets[n + 1] = <int32_t>s.value_pos
        if r.header_count:
            if fill_headers(s, r.headers, r.header_count) < 0:
                return FILL_NO_MEMORY
        s.header_offsets[n + 1] = s.headers
        s.n = n + 1
    if p != e:
        return FILL_LEFTOVER
    return FILL_DONE


cdef inline object arrow_buffer(Py_ssize_t size):
    import pyarrow as pa
    return pa.allocate_buffer(size, resizable=True)


cdef inline char *buffer_ptr(object buf):
    return <char *><uintptr_t>buf.address


cdef object grow_to_arrow(GrowBuf *g):
    import pyarrow as pa
    out = pa.allocate_buffer(g.len)
    if g.len:
        memcpy(buffer_ptr(out), g.data, <size_t>g.len)
    return out


cdef object pack_validity(GrowBuf *g):
    """One byte per element -> an Arrow validity bitmap."""
    import pyarrow as pa
    cdef Py_ssize_t i, n = g.len
    out = pa.allocate_buffer((n + 7) // 8)
    cdef uint8_t *b = <uint8_t *>buffer_ptr(out)
    memset(b, 0, <size_t>((n + 7) // 8))
    for i in range(n):
        if g.data[i]:
            b[i >> 3] |= <uint8_t>(1 << (i & 7))
    return out


def decode_columns(buf, Py_ssize_t pos=0, Py_ssize_t end=-1, int64_t min_offset=0,
                   Py_ssize_t max_records=-1, bint check_crc=False):
    """Decode whole batches from pos into the buffers of Arrow columns
    (``check_crc``: CorruptBatchError on a batch whose CRC32C does not match).

    Same batches, records, skipping and stopping rules as decode_records
    (control batches and records below min_offset skipped; a batch cut off by
    ``end`` is left for the next call; a stop on max_records mid-batch returns
    that batch's start as next_pos).

    :return: ``(next_pos, count, columns)`` where columns is a tuple of
        pyarrow Buffers and counts::

            (offsets int64, timestamps int64,
             key_validity, key_offsets int32, key_data, key_nulls,
             value_validity, value_offsets int32, value_data, value_nulls,
             header_offsets int32 (list offsets), header_count,
             header_key_offsets int32, header_key_data,
             header_value_validity, header_value_offsets int32,
             header_value_data, header_value_nulls, bad_utf8)

        Validity buffers are None when there is no null.
    :raises CorruptBatchError: a malformed batch or record
    """
    cdef Py_buffer view
    cdef BatchHeader h
    cdef const char *base
    cdef Py_ssize_t avail, size, nrec = 0, first_count = -1, dbound = 0, seclen
    cdef Py_ssize_t nb = 0, i, bits
    cdef int32_t blen
    cdef list batches = []          # (position, decompressed object or None)
    cdef ColState s
    cdef int err = 0, res = 0
    cdef int32_t bad_index = 0
    cdef Py_ssize_t next_pos, stop_pos = -1
    cdef Py_buffer *dviews = NULL
    cdef char *has_view = NULL
    cdef Py_ssize_t *positions = NULL
    cdef const char *p
    cdef const char *e
    memset(&s, 0, sizeof(ColState))
    get_buffer(buf, &view, False)
    try:
        end = resolve_end(view.len, pos, end)
        base = <const char *>view.buf
        # ---- pass 1: headers, bounds, decompression -------------------------
        while max_records != 0:
            avail = end - pos
            if avail < C_LOG_OVERHEAD:
                break
            blen = <int32_t>umlog_load_be32(base + pos + LENGTH_OFFSET)
            if blen < C_MIN_BATCH_LENGTH:
                raise CorruptBatchError(
                    f"bad batchLength {blen} < {C_MIN_BATCH_LENGTH} at position {pos}", pos)
            size = <Py_ssize_t>blen + C_LOG_OVERHEAD
            if size > avail:
                break
            check_batch(base, pos, end, check_crc, &h)
            if (h.attributes & C_ATTR_CONTROL) or (
                    h.base_offset + h.last_offset_delta < min_offset):
                pos += size
                continue
            if h.records_count < 0:
                raise CorruptBatchError(
                    f"negative record count {h.records_count} in batch at position {pos}", pos)
            data = None
            seclen = size - C_BATCH_HEADER_SIZE
            if h.attributes & C_CODEC_MASK:
                data = decompress_records(h.attributes & C_CODEC_MASK,
                                          base + pos + C_BATCH_HEADER_SIZE, seclen, pos)
                seclen = len(data)
            if h.records_count > seclen:
                raise CorruptBatchError(
                    f"record count {h.records_count} does not fit {seclen} bytes "
                    f"in batch at position {pos}", pos)
            if nb and dbound + seclen > INT32_MAX:
                break  # int32 Arrow offsets: the rest goes to the next call
            batches.append((pos, data))
            nb += 1
            if first_count < 0:
                first_count = h.records_count
            nrec += h.records_count
            dbound += seclen
            pos += size
            # Only the first batch may hold records below min_offset.
            if max_records > 0 and nrec - first_count >= max_records:
                break
        next_pos = pos
        if dbound > INT32_MAX:
            raise CorruptBatchError(
                f"a batch of {dbound} record bytes does not fit Arrow's int32 offsets", pos)
        if 0 <= max_records < nrec:
            nrec = max_records  # fill_batch never writes more

        # ---- allocate ---------------------------------------------------------
        bits = (nrec + 7) // 8
        offsets = arrow_buffer(nrec * 8)
        timestamps = arrow_buffer(nrec * 8)
        key_offsets = arrow_buffer((nrec + 1) * 4)
        value_offsets = arrow_buffer((nrec + 1) * 4)
        header_offsets = arrow_buffer((nrec + 1) * 4)
        key_data = arrow_buffer(dbound)
        value_data = arrow_buffer(dbound)
        key_validity = arrow_buffer(bits)
        value_validity = arrow_buffer(bits)
        s.offsets = <int64_t *>buffer_ptr(offsets)
        s.timestamps = <int64_t *>buffer_ptr(timestamps)
        s.key_offsets = <int32_t *>buffer_ptr(key_offsets)
        s.value_offsets = <int32_t *>buffer_ptr(value_offsets)
        s.header_offsets = <int32_t *>buffer_ptr(header_offsets)
        s.key_data = buffer_ptr(key_data)
        s.value_data = buffer_ptr(value_data)
        s.key_validity = <uint8_t *>buffer_ptr(key_validity)
        s.value_validity = <uint8_t *>buffer_ptr(value_validity)
        s.data_cap = dbound
        s.key_offsets[0] = s.value_offsets[0] = s.header_offsets[0] = 0
        memset(s.key_validity, 0, <size_t>bits)
        memset(s.value_validity, 0, <size_t>bits)
        if grow_i32(&s.hkey_offsets, 0) < 0 or grow_i32(&s.hvalue_offsets, 0) < 0:
            raise MemoryError()

        # ---- pass 2: records, without the GIL ----------------------------------
        dviews = <Py_buffer *>malloc(<size_t>(nb + 1) * sizeof(Py_buffer))
        has_view = <char *>calloc(<size_t>(nb + 1), 1)
        positions = <Py_ssize_t *>malloc(<size_t>(nb + 1) * sizeof(Py_ssize_t))
        if dviews == NULL or positions == NULL or has_view == NULL:
            raise MemoryError()
        for i in range(nb):
            bpos, data = batches[i]
            positions[i] = bpos
            if data is not None:
                get_buffer(data, &dviews[i], False)
                has_view[i] = 1
        with nogil:
            for i in range(nb):
                read_header(base + positions[i], &h)
                if has_view[i]:
                    p = <const char *>dviews[i].buf
                    e = p + dviews[i].len
                else:
                    p = base + positions[i] + C_BATCH_HEADER_SIZE
                    e = base + positions[i] + C_LOG_OVERHEAD + h.batch_length
                res = fill_batch(&s, p, e, &h, min_offset,
                                 max_records if max_records >= 0 else -1, &err, &bad_index)
                if res != FILL_DONE:
                    stop_pos = positions[i]
                    break
                if max_records >= 0 and s.n >= max_records:
                    stop_pos = positions[i] + C_LOG_OVERHEAD + h.batch_length
                    break
        if res == FILL_BAD_RECORD:
            raise record_error(err, bad_index, stop_pos)
        if res == FILL_NO_MEMORY:
            raise MemoryError("headers of one chunk do not fit in memory or int32 offsets")
        if res == FILL_LEFTOVER:
            raise CorruptBatchError(
                f"bytes left over after the records in batch at position {stop_pos}", stop_pos)
        if res == FILL_OVERFLOW:
            raise CorruptBatchError(f"record bytes overflow in batch at position {stop_pos}", stop_pos)
        if stop_pos >= 0:
            next_pos = stop_pos

        n = s.n
        offsets.resize(n * 8, shrink_to_fit=True)
        timestamps.resize(n * 8, shrink_to_fit=True)
        key_offsets.resize((n + 1) * 4, shrink_to_fit=True)
        value_offsets.resize((n + 1) * 4, shrink_to_fit=True)
        header_offsets.resize((n + 1) * 4, shrink_to_fit=True)
        key_data.resize(s.key_pos, shrink_to_fit=True)
        value_data.resize(s.value_pos, shrink_to_fit=True)
        if s.key_nulls:
            key_validity.resize((n + 7) // 8, shrink_to_fit=True)
        else:
            key_validity = None
        if s.value_nulls:
            value_validity.resize((n + 7) // 8, shrink_to_fit=True)
        else:
            value_validity = None
        hk_off = grow_to_arrow(&s.hkey_offsets)
        hk_data = grow_to_arrow(&s.hkey_data)
        hv_off = grow_to_arrow(&s.hvalue_offsets)
        hv_data = grow_to_arrow(&s.hvalue_data)
        hv_valid = pack_validity(&s.hvalue_validity) if s.header_value_nulls else None
        return next_pos, n, (
            offsets, timestamps,
            key_validity, key_offsets, key_data, s.key_nulls,
            value_validity, value_offsets, value_data, s.value_nulls,
            header_offsets, s.headers,
            hk_off, hk_data, hv_valid, hv_off, hv_data, s.header_value_nulls,
            bool(s.bad_utf8))
    finally:
        if has_view != NULL:
            for i in range(nb):
                if has_view[i]:
                    PyBuffer_Release(&dviews[i])
        free(has_view)
        free(dviews)
        free(positions)
        free(s.hkey_offsets.data)
        free(s.hkey_data.data)
        free(s.hvalue_offsets.data)
        free(s.hvalue_data.data)
        free(s.hvalue_validity.data)
        PyBuffer_Release(&view)

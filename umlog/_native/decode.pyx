# decode_records: whole batches -> Record objects.


cdef int decode_batch(const char *base, Py_ssize_t pos, BatchHeader *h,
                      list out, int64_t min_offset, Py_ssize_t limit,
                      object topic, int partition) except -2:
    """Append the records of one checked batch with offset >= min_offset to
    out, at most ``limit`` (-1: all). Returns 1 when it stopped on the limit
    before the batch's last record, else 0."""
    cdef const char *p = base + pos + C_BATCH_HEADER_SIZE
    cdef const char *e = base + pos + C_LOG_OVERHEAD + h.batch_length
    cdef int codec = h.attributes & C_CODEC_MASK
    cdef bint log_append = (h.attributes & C_ATTR_TIMESTAMP_TYPE) != 0
    cdef Py_buffer view
    cdef bint have_view = False
    cdef int32_t n = h.records_count, i
    cdef Py_ssize_t taken = 0
    cdef RecView r
    cdef int err = 0
    cdef int64_t offset, ts
    cdef Record rec
    # A key or header set equal to the previous record's is shared, not made
    # again: the records of one producer often repeat them (an MQTT topic
    # name and QoS header, a service's fixed headers).
    cdef const char *prev_key = NULL
    cdef const char *prev_hdr = NULL
    cdef Py_ssize_t prev_key_len = -1, prev_hdr_len = -1, hdr_len
    cdef int32_t prev_hdr_count = -1
    cdef object key_obj = None, hdr_obj = None
    if n < 0:
        raise CorruptBatchError(f"negative record count {n} in batch at position {pos}", pos)
    if codec != C_CODEC_NONE:
        data = decompress_records(codec, p, e - p, pos)
        get_buffer(data, &view, False)
        have_view = True
        p = <const char *>view.buf
        e = p + view.len
    try:
        for i in range(n):
            p = parse_record(p, e, &r, &err)
            if p == NULL:
                raise record_error(err, i, pos)
            offset = h.base_offset + r.offset_delta
            if offset < min_offset:
                continue
            if limit >= 0 and taken >= limit:
                return 1
            ts = h.max_timestamp if log_append else h.base_timestamp + r.timestamp_delta
            rec = Record.__new__(Record)
            rec.offset = offset
            rec.timestamp = ts
            if r.key_len >= 0:
                if r.key_len != prev_key_len or memcmp(r.key, prev_key, r.key_len) != 0:
                    key_obj = PyBytes_FromStringAndSize(r.key, r.key_len)
                    prev_key, prev_key_len = r.key, r.key_len
                rec.key = key_obj
            if r.value_len >= 0:
                rec.value = PyBytes_FromStringAndSize(r.value, r.value_len)
            if r.header_count == 0:
                rec.headers = EMPTY_TUPLE
            else:
                hdr_len = r.end - r.headers
                if (hdr_len != prev_hdr_len or r.header_count != prev_hdr_count
                        or memcmp(r.headers, prev_hdr, hdr_len) != 0):
                    hdr_obj = decode_headers(r.headers, r.header_count)
                    prev_hdr, prev_hdr_len, prev_hdr_count = r.headers, hdr_len, r.header_count
                rec.headers = hdr_obj
            rec.topic = topic
            rec.partition = partition
            out.append(rec)
            taken += 1
        if p != e:
            raise CorruptBatchError(
                f"{e - p} bytes left over after {n} records in batch at position {pos}", pos)
    finally:
        if have_view:
            PyBuffer_Release(&view)
    return 0


def decode_records(buf, Py_ssize_t pos=0, Py_ssize_t end=-1, int64_t min_offset=0,
                   Py_ssize_t max_records=-1, topic=None, int partition=-1,
                   bint check_crc=False):
    """Decode whole batches from pos; returns (records, next_pos).

    Skips records with offset < min_offset and control batches; decompresses
    compressed batches. Stops after max_records (-1: no limit) or at end. A
    batch cut off by ``end`` is not decoded and next_pos points at its start;
    a malformed batch raises CorruptBatchError. When max_records stops
    decoding mid-batch, next_pos is the start of that batch (the caller
    resumes with min_offset).

    Record offsets are baseOffset + offsetDelta as stored (compacted batches
    may have gaps). With LogAppendTime batches every record's timestamp is the
    batch's maxTimestamp.
    """
    cdef Py_buffer view
    cdef BatchHeader h
    cdef list out = []
    cdef const char *base
    cdef Py_ssize_t avail, size, limit
    cdef int32_t blen
    cdef int stopped
    get_buffer(buf, &view, False)
    try:
        end = resolve_end(view.len, pos, end)
        base = <const char *>view.buf
        if max_records == 0:
            return out, pos
        while True:
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
            limit = -1 if max_records < 0 else max_records - len(out)
            stopped = decode_batch(base, pos, &h, out, min_offset, limit, topic, partition)
            if stopped:
                break
            pos += size
            if max_records >= 0 and len(out) >= max_records:
                break
        return out, pos
    finally:
        PyBuffer_Release(&view)

# encode_batch_arrow: RecordBatch v2 straight from Arrow arrays, reading the
# arrays' validity/offsets/data buffers (no per-record Python objects).
#
# pyarrow is imported on first use only (it costs ~100 ms to import).

cdef struct ArrowBinary:
    const uint8_t *validity     # NULL: no nulls
    const char *offsets         # int32 (binary/string) or int64 (large_*)
    const char *data
    Py_ssize_t offset           # the array's slice offset, in elements
    bint large


cdef inline const char *buffer_address(object buf):
    if buf is None:
        return NULL
    if not buf.is_cpu:
        raise ValueError("Arrow buffers must be in CPU memory")
    return <const char *><uintptr_t>buf.address


cdef object arrow_chunk(object arr, str what):
    """A single Array (ChunkedArray chunks are combined)."""
    if hasattr(arr, "combine_chunks"):
        arr = arr.combine_chunks()
    return arr


cdef int arrow_binary(object arr, ArrowBinary *out, str what) except -1:
    import pyarrow as pa
    t = arr.type
    if pa.types.is_binary(t) or pa.types.is_string(t):
        out.large = False
    elif pa.types.is_large_binary(t) or pa.types.is_large_string(t):
        out.large = True
    else:
        raise TypeError(f"{what} must be a binary or string Arrow array, not {t}")
    bufs = arr.buffers()
    out.validity = <const uint8_t *>buffer_address(bufs[0]) if arr.null_count else NULL
    out.offsets = buffer_address(bufs[1])
    out.data = buffer_address(bufs[2])
    out.offset = arr.offset
    return 0


cdef inline Py_ssize_t arrow_len(ArrowBinary *a, Py_ssize_t i, const char **ptr) noexcept nogil:
    """Length of element i (-1 when null), its bytes at *ptr."""
    cdef Py_ssize_t j = a.offset + i
    cdef int64_t start, stop
    if a.validity != NULL and not (a.validity[j >> 3] >> (j & 7)) & 1:
        return -1
    if a.large:
        memcpy(&start, a.offsets + 8 * j, 8)
        memcpy(&stop, a.offsets + 8 * (j + 1), 8)
    else:
        start = (<const int32_t *>a.offsets)[j]
        stop = (<const int32_t *>a.offsets)[j + 1]
    ptr[0] = a.data + start
    return <Py_ssize_t>(stop - start)


def encode_batch_arrow(values, keys=None, timestamps=None, *, int64_t base_offset=0,
                       int64_t now_ms=-1, int codec=0):
    """Same as encode_batch from Arrow arrays, reading their buffers directly.

    :param values: BinaryArray / LargeBinaryArray / StringArray /
        LargeStringArray (or a ChunkedArray of one), nulls allowed
    :param keys: the same kinds, or None
    :param timestamps: int64 (or timestamp) array of ms, nulls = now_ms, or None
    """
    import pyarrow as pa
    check_codec(codec)
    values = arrow_chunk(values, "values")
    cdef Py_ssize_t n = len(values)
    if n == 0:
        raise ValueError("cannot encode an empty batch")
    if n > INT32_MAX:
        raise ValueError("too many records for one batch")
    cdef ArrowBinary va, ka
    cdef bint has_keys = keys is not None, has_ts = timestamps is not None
    arrow_binary(values, &va, "values")
    if has_keys:
        keys = arrow_chunk(keys, "keys")
        if len(keys) != n:
            raise ValueError(f"{len(keys)} keys for {n} values")
        arrow_binary(keys, &ka, "keys")
    cdef const int64_t *tsv = NULL
    cdef const uint8_t *tsvalid = NULL
    cdef Py_ssize_t tsoff = 0
    if has_ts:
        timestamps = arrow_chunk(timestamps, "timestamps")
        if len(timestamps) != n:
            raise ValueError(f"{len(timestamps)} timestamps for {n} values")
        if pa.types.is_timestamp(timestamps.type) or pa.types.is_date64(timestamps.type):
            timestamps = timestamps.cast(pa.timestamp("ms")).cast(pa.int64())
        if not pa.types.is_int64(timestamps.type):
            timestamps = timestamps.cast(pa.int64())
        tbufs = timestamps.buffers()
        tsv = <const int64_t *>buffer_address(tbufs[1])
        tsvalid = <const uint8_t *>buffer_address(tbufs[0]) if timestamps.null_count else NULL
        tsoff = timestamps.offset

    cdef int64_t now = now_ms if now_ms != -1 else wall_ms()
    cdef int64_t *ts_arr = NULL
    cdef Py_ssize_t i, j, vl, kl, body, total = 0
    cdef int64_t ts, base_ts = 0, max_ts = 0
    cdef const char *vp
    cdef const char *kp = NULL
    cdef char *p
    cdef char *start
    cdef bytes out
    cdef object raw = None
    if has_ts:
        ts_arr = <int64_t *>malloc(<size_t>n * sizeof(int64_t))
        if ts_arr == NULL:
            raise MemoryError()
    try:
        for i in range(n):
            vl = arrow_len(&va, i, &vp)
            kl = arrow_len(&ka, i, &kp) if has_keys else -1
            check_len(vl, "a value")
            check_len(kl, "a key")
            if has_ts:
                j = tsoff + i
                if tsvalid != NULL and not (tsvalid[j >> 3] >> (j & 7)) & 1:
                    ts = now
                else:
                    ts = tsv[j]
                ts_arr[i] = ts
            else:
                ts = now
            if i == 0:
                base_ts = max_ts = ts
            elif ts > max_ts:
                max_ts = ts
            body = (1 + umlog_size_of_varlong(ts - base_ts) + umlog_size_of_varint(<int32_t>i)
                    + umlog_size_of_varint(<int32_t>kl) + umlog_size_of_varint(<int32_t>vl) + 1)
            if kl > 0:
                body += kl
            if vl > 0:
                body += vl
            check_len(body, "a record")
            total += umlog_size_of_varint(<int32_t>body) + body
            if total > INT32_MAX:
                check_len(total, "a batch")
        if codec == C_CODEC_NONE:
            check_len(total + C_MIN_BATCH_LENGTH, "a batch")
            out = PyBytes_FromStringAndSize(NULL, total + C_BATCH_HEADER_SIZE)
            start = PyBytes_AS_STRING(out) + C_BATCH_HEADER_SIZE
        else:
            raw = PyBytes_FromStringAndSize(NULL, total)
            start = PyBytes_AS_STRING(raw)
        p = start
        for i in range(n):
            vl = arrow_len(&va, i, &vp)
            kl = arrow_len(&ka, i, &kp) if has_keys else -1
            ts = ts_arr[i] if has_ts else now
            body = (1 + umlog_size_of_varlong(ts - base_ts) + umlog_size_of_varint(<int32_t>i)
                    + umlog_size_of_varint(<int32_t>kl) + umlog_size_of_varint(<int32_t>vl) + 1)
            if kl > 0:
                body += kl
            if vl > 0:
                body += vl
            p = umlog_write_varint(p, <int32_t>body)
            p[0] = 0
            p += 1
            p = umlog_write_varlong(p, ts - base_ts)
            p = umlog_write_varint(p, <int32_t>i)
            p = umlog_write_varint(p, <int32_t>kl)
            if kl > 0:
                memcpy(p, kp, <size_t>kl)
                p += kl
            p = umlog_write_varint(p, <int32_t>vl)
            if vl > 0:
                memcpy(p, vp, <size_t>vl)
                p += vl
            p[0] = 0
            p += 1
        if p - start != total:
            raise RuntimeError("record sizes changed while encoding")
    finally:
        free(ts_arr)
    if codec == C_CODEC_NONE:
        write_batch_header(PyBytes_AS_STRING(out), total + C_BATCH_HEADER_SIZE, base_offset,
                           0, 0, <int32_t>(n - 1), base_ts, max_ts, -1, -1, -1, <int32_t>n)
        if UMLOG_DEBUG:
            debug_check_built(out)
        return out
    return finish_batch(codec, raw, start, total, base_offset, 0, 0, <int32_t>(n - 1),
                        base_ts, max_ts, -1, -1, -1, <int32_t>n)

# Kafka's old message format (magic 0 and 1, the "MessageSet" of Produce v0-2
# and Fetch v0-3) <-> RecordBatch v2, one call per message set or stored batch.
#
# A message (Kafka's LegacyRecord), big-endian:
#
#     0  offset int64
#     8  messageSize int32        bytes after this field
#    12  crc uint32               CRC32 (IEEE, zlib's) of bytes [16, end)
#    16  magic int8               0 or 1
#    17  attributes int8          bits 0-2 codec, bit 3 LogAppendTime (magic 1)
#    18  timestamp int64          magic 1 only
#     .  keyLength int32 (-1 = null) | key | valueLength int32 (-1 = null) | value
#
# A compressed message ("wrapper") has a null key and, as its value, a whole
# message set of uncompressed inner messages, compressed in the wrapper's
# codec. Inner offsets are absolute in magic 0; in magic 1 they are relative
# (0, 1, ...) and the wrapper's offset is the absolute offset of the last one.
#
# Codecs as old clients frame them: gzip; snappy in xerial framing (the Java
# client; kafka-python's default for old brokers) or raw (Sarama,
# librdkafka): both are read, xerial is written; LZ4 frames, whose header
# checksum Kafka 0.8-0.9 computed wrongly (over the frame's magic number as
# well as its descriptor): for magic 0 that broken checksum is accepted on the
# way in and written on the way out, as Kafka does (KafkaLZ4BlockInputStream's
# ignoreFlagDescriptorChecksum, KafkaLZ4BlockOutputStream's
# useBrokenFlagDescriptorChecksum); magic 1 uses the correct one.

cdef enum:
    LEGACY_OVERHEAD = 12                  # offset + messageSize
    LEGACY_MIN_V0 = 4 + 1 + 1 + 4 + 4     # crc, magic, attributes, key and value lengths
    LEGACY_MIN_V1 = LEGACY_MIN_V0 + 8     # + timestamp
    LEGACY_ATTR_LOG_APPEND_TIME = 0x08


cdef struct LegacyMsg:
    int64_t offset
    int8_t magic
    int8_t attributes
    int64_t timestamp          # -1 for magic 0
    int32_t key_len            # -1: null
    int32_t value_len          # -1: null
    const char *key
    const char *value


cdef struct OutBuf:
    char *buf
    Py_ssize_t length
    Py_ssize_t capacity


cdef int ob_reserve(OutBuf *o, Py_ssize_t extra) except -1:
    cdef Py_ssize_t need = o.length + extra, cap = o.capacity
    cdef char *nb
    if need <= cap:
        return 0
    if need > INT32_MAX:
        raise ValueError("a converted message set would exceed 2 GiB")
    if cap < 4096:
        cap = 4096
    while cap < need:
        cap *= 2
    nb = <char *>realloc(o.buf, <size_t>cap)
    if nb == NULL:
        raise MemoryError()
    o.buf = nb
    o.capacity = cap
    return 0


cdef inline void ob_free(OutBuf *o) noexcept:
    free(o.buf)
    o.buf = NULL
    o.length = o.capacity = 0


umlog_crc32_init()


def crc32(data, unsigned int crc=0):
    """CRC32 (IEEE, as zlib.crc32) of data, continuing from crc: the checksum of
    Kafka's old message format."""
    cdef Py_buffer view
    cdef uint32_t c = crc
    get_buffer(data, &view, False)
    try:
        with nogil:
            c = umlog_crc32(c, view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return c


def xxh32(data, unsigned int seed=0):
    """XXH32 of data (the hash of an LZ4 frame's header checksum)."""
    cdef Py_buffer view
    cdef uint32_t h
    get_buffer(data, &view, False)
    try:
        h = umlog_xxh32(view.buf, <size_t>view.len, seed)
    finally:
        PyBuffer_Release(&view)
    return h


# ---- reading old messages -----------------------------------------------------

cdef str legacy_where(Py_ssize_t pos, Py_ssize_t wrapper):
    if wrapper < 0:
        return f"message at position {pos}"
    return f"inner message at position {pos} of the compressed message at position {wrapper}"


cdef Py_ssize_t parse_legacy(const char *base, Py_ssize_t pos, Py_ssize_t end,
                             LegacyMsg *m, Py_ssize_t wrapper) except -1:
    """The message at pos (bounded by end) into m; returns the position after it.
    Errors name the message; their ``position`` is the top-level message's."""
    cdef Py_ssize_t avail = end - pos
    cdef Py_ssize_t where = pos if wrapper < 0 else wrapper
    cdef int32_t size, klen, vlen
    cdef uint32_t stored, computed
    cdef const char *p
    cdef const char *e
    cdef const char *q
    if avail < LEGACY_OVERHEAD:
        raise CorruptBatchError(
            f"truncated {legacy_where(pos, wrapper)}: {avail} bytes, less than "
            f"the {LEGACY_OVERHEAD}-byte offset and size", where)
    m.offset = <int64_t>umlog_load_be64(base + pos)
    size = <int32_t>umlog_load_be32(base + pos + 8)
    if size < LEGACY_MIN_V0:
        raise CorruptBatchError(
            f"bad messageSize {size} < {LEGACY_MIN_V0} in {legacy_where(pos, wrapper)}", where)
    if size > avail - LEGACY_OVERHEAD:
        raise CorruptBatchError(
            f"truncated {legacy_where(pos, wrapper)}: messageSize {size}, "
            f"{avail - LEGACY_OVERHEAD} bytes follow", where)
    p = base + pos + LEGACY_OVERHEAD
    e = p + size
    # the CRC first: it covers the magic and attributes, so damage there reads as such
    stored = umlog_load_be32(p)
    computed = umlog_crc32(0, p + 4, <size_t>(size - 4))
    if stored != computed:
        raise CorruptBatchError(
            f"bad CRC32 in {legacy_where(pos, wrapper)}: stored {stored:#010x}, "
            f"computed {computed:#010x}", where)
    m.magic = <int8_t>p[4]
    m.attributes = <int8_t>p[5]
    if m.magic != 0 and m.magic != 1:
        raise CorruptBatchError(
            f"bad magic {m.magic} in {legacy_where(pos, wrapper)} (a message set holds magic 0 or 1)",
            where)
    if m.magic == 1 and size < LEGACY_MIN_V1:
        raise CorruptBatchError(
            f"bad messageSize {size} < {LEGACY_MIN_V1} in magic 1 {legacy_where(pos, wrapper)}", where)
    q = p + 6
    if m.magic == 1:
        m.timestamp = <int64_t>umlog_load_be64(q)
        q += 8
    else:
        m.timestamp = -1
    klen = <int32_t>umlog_load_be32(q)
    q += 4
    if klen < -1 or klen > (e - q) - 4:
        raise CorruptBatchError(f"bad key length {klen} in {legacy_where(pos, wrapper)}", where)
    m.key_len = klen
    m.key = q
    if klen > 0:
        q += klen
    vlen = <int32_t>umlog_load_be32(q)
    q += 4
    if vlen < -1 or vlen > e - q:
        raise CorruptBatchError(f"bad value length {vlen} in {legacy_where(pos, wrapper)}", where)
    m.value_len = vlen
    m.value = q
    if vlen > 0:
        q += vlen
    if q != e:
        raise CorruptBatchError(
            f"{e - q} bytes left over in {legacy_where(pos, wrapper)}", where)
    return pos + LEGACY_OVERHEAD + size


cdef Py_ssize_t lz4_header_end(const char *p, Py_ssize_t n) except -1:
    """Offset of the header checksum byte of the LZ4 frame at p (n bytes)."""
    cdef uint8_t flg
    cdef Py_ssize_t at
    if n < 7 or umlog_load_be32(p) != 0x04224D18:
        raise ValueError("not an LZ4 frame")
    flg = <uint8_t>p[4]
    at = 6
    if flg & 0x08:
        at += 8                        # content size
    if flg & 0x01:
        at += 4                        # dictionary id
    if at >= n:
        raise ValueError("truncated LZ4 frame header")
    return at


cdef object decompress_legacy(int codec, int magic, const char *p, Py_ssize_t n,
                              Py_ssize_t pos):
    """The inner message set of a compressed message (a bytes-like object)."""
    cdef Py_ssize_t hc
    cdef char *b
    if codec < 1 or codec > 3:
        raise CorruptBatchError(
            f"unsupported {codec_name(codec)} in the magic {magic} message at position {pos} "
            "(old messages are none, gzip, snappy or lz4)", pos)
    try:
        if codec == C_CODEC_LZ4 and magic == 0:
            # Kafka 0.8-0.9's header checksum: accept it (and a correct one)
            # by writing the correct one before decompressing.
            fixed = bytearray(PyBytes_FromStringAndSize(p, n))
            b = PyByteArray_AS_STRING(fixed)
            hc = lz4_header_end(b, n)
            b[hc] = <char>((umlog_xxh32(b + 4, <size_t>(hc - 4), 0) >> 8) & 0xFF)
            return decompress_records(codec, b, n, pos)
        return decompress_records(codec, p, n, pos)
    except (CorruptBatchError, ValueError) as e:
        cause = e.__cause__ if e.__cause__ is not None else e
        raise CorruptBatchError(
            f"bad {codec_name(codec)} data in the compressed message at position {pos}: {cause}",
            pos) from None


cdef int add_v2_record(OutBuf *o, int32_t index, int64_t delta, const char *key,
                       int32_t klen, const char *value, int32_t vlen) except -1:
    """One RecordBatch v2 record (no headers) at the end of o."""
    cdef Py_ssize_t body
    cdef char *p
    body = (1 + umlog_size_of_varlong(delta) + umlog_size_of_varint(index)
            + umlog_size_of_varint(klen) + umlog_size_of_varint(vlen) + 1)
    if klen > 0:
        body += klen
    if vlen > 0:
        body += vlen
    check_len(body, "a record")
    ob_reserve(o, body + 5)
    p = o.buf + o.length
    p = umlog_write_varint(p, <int32_t>body)
    p[0] = 0
    p += 1
    p = umlog_write_varlong(p, delta)
    p = umlog_write_varint(p, index)
    p = umlog_write_varint(p, klen)
    if klen > 0:
        memcpy(p, key, <size_t>klen)
        p += klen
    p = umlog_write_varint(p, vlen)
    if vlen > 0:
        memcpy(p, value, <size_t>vlen)
        p += vlen
    p[0] = 0                            # headers: none
    p += 1
    o.length = p - o.buf
    return 0


cdef struct Upconv:
    int32_t count
    int64_t base_ts
    int64_t max_ts


cdef int upconv_add(OutBuf *o, Upconv *s, int64_t ts, LegacyMsg *m) except -1:
    if s.count == INT32_MAX:
        raise ValueError("too many messages for one batch")
    if s.count == 0:
        s.base_ts = ts
        s.max_ts = ts
    elif ts > s.max_ts:
        s.max_ts = ts
    add_v2_record(o, s.count, ts - s.base_ts, m.key, m.key_len, m.value, m.value_len)
    s.count += 1
    return 0


def legacy_to_batch(buf, Py_ssize_t pos=0, Py_ssize_t end=-1):
    """Kafka's old message set in [pos, end) as one RecordBatch v2: (batch, count).

    Every message's CRC32 is checked, compressed messages are opened (inner
    messages checked the same way; their magic must be the wrapper's, and they
    must not be compressed again), and every message becomes one record with
    its key, value and timestamp (magic 0 has none: -1, as Kafka's up-conversion
    writes; an inner message of a LogAppendTime magic 1 wrapper takes the
    wrapper's). Offsets in the set are ignored: the batch has baseOffset 0 and
    offsetDeltas 0..n-1, no producer id; the log assigns offsets as for any
    batch. The batch is compressed in the codec of the first compressed
    message (Kafka's up-conversion keeps the producer's codec), else not.

    :raises CorruptBatchError: a bad CRC, a truncated or malformed message, an
        empty set, data that does not decompress; ``position`` is the
        (top-level) message's
    """
    cdef Py_buffer view, iview
    cdef OutBuf o
    cdef Upconv s
    cdef LegacyMsg m, im
    cdef const char *base
    cdef Py_ssize_t npos, ipos, iend
    cdef int codec, out_codec = 0
    cdef int32_t inner
    cdef int64_t ts
    memset(&o, 0, sizeof(o))
    memset(&s, 0, sizeof(s))
    get_buffer(buf, &view, False)
    try:
        end = resolve_end(view.len, pos, end)
        base = <const char *>view.buf
        while pos < end:
            npos = parse_legacy(base, pos, end, &m, -1)
            codec = m.attributes & C_CODEC_MASK
            if codec == C_CODEC_NONE:
                upconv_add(&o, &s, m.timestamp, &m)
            else:
                if m.value_len <= 0:
                    raise CorruptBatchError(
                        f"compressed message at position {pos} has no value", pos)
                data = decompress_legacy(codec, m.magic, m.value, m.value_len, pos)
                if out_codec == C_CODEC_NONE:
                    out_codec = codec
                get_buffer(data, &iview, False)
                try:
                    ipos = 0
                    iend = iview.len
                    inner = 0
                    while ipos < iend:
                        ipos = parse_legacy(<const char *>iview.buf, ipos, iend, &im, pos)
                        if im.magic != m.magic:
                            raise CorruptBatchError(
                                f"inner message {inner} of magic {im.magic} in the magic {m.magic} "
                                f"compressed message at position {pos}", pos)
                        if im.attributes & C_CODEC_MASK:
                            raise CorruptBatchError(
                                f"inner message {inner} of the compressed message at position {pos} "
                                "is compressed again", pos)
                        ts = im.timestamp
                        if m.magic == 1 and m.attributes & LEGACY_ATTR_LOG_APPEND_TIME:
                            ts = m.timestamp
                        upconv_add(&o, &s, ts, &im)
                        inner += 1
                    if inner == 0:
                        raise CorruptBatchError(
                            f"compressed message at position {pos} holds no messages", pos)
                finally:
                    PyBuffer_Release(&iview)
            pos = npos
        if s.count == 0:
            raise CorruptBatchError("empty message set: no messages", pos)
        out = finish_batch(out_codec, None, o.buf, o.length, 0, 0, 0, s.count - 1,
                           s.base_ts, s.max_ts, -1, -1, -1, s.count)
        return out, s.count
    finally:
        ob_free(&o)
        PyBuffer_Release(&view)


# ---- writing old messages -------------------------------------------------------

cdef inline Py_ssize_t legacy_size(int magic, int32_t klen, int32_t vlen) noexcept:
    """Bytes of a whole message (offset and size fields included)."""
    cdef Py_ssize_t n = LEGACY_OVERHEAD + (LEGACY_MIN_V1 if magic == 1 else LEGACY_MIN_V0)
    if klen > 0:
        n += klen
    if vlen > 0:
        n += vlen
    return n


cdef int write_legacy(OutBuf *o, int magic, int attributes, int64_t offset, int64_t ts,
                      const char *key, int32_t klen, const char *value,
                      int32_t vlen) except -1:
    cdef Py_ssize_t total = legacy_size(magic, klen, vlen)
    cdef char *m
    cdef char *p
    ob_reserve(o, total)
    m = o.buf + o.length
    umlog_store_be64(m, <uint64_t>offset)
    umlog_store_be32(m + 8, <uint32_t>(total - LEGACY_OVERHEAD))
    p = m + 16
    p[0] = <char>magic
    p[1] = <char>attributes
    p += 2
    if magic == 1:
        umlog_store_be64(p, <uint64_t>ts)
        p += 8
    umlog_store_be32(p, <uint32_t>klen)
    p += 4
    if klen > 0:
        memcpy(p, key, <size_t>klen)
        p += klen
    umlog_store_be32(p, <uint32_t>vlen)
    p += 4
    if vlen > 0:
        memcpy(p, value, <size_t>vlen)
        p += vlen
    umlog_store_be32(m + 12, umlog_crc32(0, m + 16, <size_t>(p - m - 16)))
    o.length += total
    return 0


def batch_to_legacy(buf, int magic, Py_ssize_t pos=0, Py_ssize_t end=-1,
                    int64_t min_offset=0, Py_ssize_t max_bytes=-1,
                    bint at_least_one=True):
    """Stored RecordBatch v2 batches in [pos, end) as an old message set of
    ``magic`` (0 or 1): (message_set, next_offset).

    One call converts every batch in the range: each batch's CRC32C is checked
    first (the client can only check the new CRC32s, so damage must not be
    hidden under them); control batches and records below ``min_offset`` are
    left out (Kafka's down-conversion does the same); headers are dropped
    (neither magic can carry them). An uncompressed batch becomes one message
    per record with its absolute offset; a gzip, snappy or lz4 batch becomes
    one compressed message of the same codec holding them (magic 1: relative
    inner offsets, the wrapper at the last absolute offset and the largest
    timestamp); zstd, which old clients cannot read, is sent uncompressed.
    Magic 1 keeps timestamps and the LogAppendTime attribute; magic 0 has
    neither. A partial batch at ``end`` is not converted.

    ``max_bytes`` (-1: no limit): conversion stops before the message that
    would take the output past it (whole messages only), except that with
    ``at_least_one`` the first message is written whatever its size.
    ``next_offset`` is one past the last record written (``min_offset`` when
    none was).

    :raises CorruptBatchError: a damaged stored batch
    """
    cdef Py_buffer view, rview, cview
    cdef BatchHeader h
    cdef OutBuf o, t
    cdef const char *base
    cdef const char *p
    cdef const char *e
    cdef Py_ssize_t size, need
    cdef int32_t blen, i
    cdef int codec, out_codec, attrs
    cdef bint log_append, have_rview, done = False
    cdef int64_t off, ts, first, last, wts
    cdef int64_t next_offset = min_offset
    cdef RecView r
    cdef int err = 0
    cdef char *c
    cdef Py_ssize_t hc
    if magic != 0 and magic != 1:
        raise ValueError(f"magic {magic}: old message sets are magic 0 or 1")
    memset(&o, 0, sizeof(o))
    memset(&t, 0, sizeof(t))
    get_buffer(buf, &view, False)
    try:
        end = resolve_end(view.len, pos, end)
        base = <const char *>view.buf
        while not done and end - pos >= C_LOG_OVERHEAD:
            blen = <int32_t>umlog_load_be32(base + pos + LENGTH_OFFSET)
            if blen >= C_MIN_BATCH_LENGTH and <Py_ssize_t>blen + C_LOG_OVERHEAD > end - pos:
                break
            check_batch(base, pos, end, True, &h)
            size = <Py_ssize_t>h.batch_length + C_LOG_OVERHEAD
            if (h.attributes & C_ATTR_CONTROL) or h.base_offset + h.last_offset_delta < min_offset:
                pos += size
                continue
            codec = h.attributes & C_CODEC_MASK
            out_codec = codec if C_CODEC_GZIP <= codec <= C_CODEC_LZ4 else C_CODEC_NONE
            log_append = (h.attributes & C_ATTR_TIMESTAMP_TYPE) != 0
            attrs = LEGACY_ATTR_LOG_APPEND_TIME if (log_append and magic == 1) else 0
            p = base + pos + C_BATCH_HEADER_SIZE
            e = base + pos + size
            have_rview = False
            if codec != C_CODEC_NONE:
                data = decompress_records(codec, p, e - p, pos)
                get_buffer(data, &rview, False)
                have_rview = True
                p = <const char *>rview.buf
                e = p + rview.len
            try:
                t.length = 0
                first = -1
                last = -1
                wts = -1
                for i in range(h.records_count):
                    p = parse_record(p, e, &r, &err)
                    if p == NULL:
                        raise record_error(err, i, pos)
                    off = h.base_offset + r.offset_delta
                    if off < min_offset:
                        continue
                    ts = h.max_timestamp if log_append else h.base_timestamp + r.timestamp_delta
                    if out_codec == C_CODEC_NONE:
                        need = legacy_size(magic, r.key_len, r.value_len)
                        if max_bytes >= 0 and o.length + need > max_bytes and (
                                o.length > 0 or not at_least_one):
                            done = True
                            break
                        write_legacy(&o, magic, attrs, off, ts, r.key, r.key_len,
                                     r.value, r.value_len)
                        next_offset = off + 1
                    else:
                        if first < 0:
                            first = off
                        last = off
                        if ts > wts:
                            wts = ts
                        write_legacy(&t, magic, 0, off - first if magic == 1 else off, ts,
                                     r.key, r.key_len, r.value, r.value_len)
                if out_codec != C_CODEC_NONE and t.length > 0 and not done:
                    compressed = compress_records(
                        out_codec, PyBytes_FromStringAndSize(t.buf, t.length))
                    if out_codec == C_CODEC_LZ4 and magic == 0:
                        # Kafka 0.8-0.9's header checksum, over the frame's magic too
                        compressed = bytearray(compressed)
                        c = PyByteArray_AS_STRING(compressed)
                        hc = lz4_header_end(c, PyByteArray_GET_SIZE(compressed))
                        c[hc] = <char>((umlog_xxh32(c, <size_t>hc, 0) >> 8) & 0xFF)
                    get_buffer(compressed, &cview, False)
                    try:
                        check_len(cview.len, "a compressed message")
                        need = legacy_size(magic, -1, <int32_t>cview.len)
                        if max_bytes >= 0 and o.length + need > max_bytes and (
                                o.length > 0 or not at_least_one):
                            done = True
                        else:
                            if log_append:
                                wts = h.max_timestamp
                            write_legacy(&o, magic, out_codec | attrs, last, wts, NULL, -1,
                                         <const char *>cview.buf, <int32_t>cview.len)
                            next_offset = last + 1
                    finally:
                        PyBuffer_Release(&cview)
            finally:
                if have_rview:
                    PyBuffer_Release(&rview)
            pos += size
        return PyBytes_FromStringAndSize(o.buf, o.length), next_offset
    finally:
        ob_free(&o)
        ob_free(&t)
        PyBuffer_Release(&view)

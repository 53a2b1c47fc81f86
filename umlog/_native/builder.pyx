# BatchBuilder: an open batch that grows one record per native call.


@cython.final
cdef class BatchBuilder:
    """An open batch that grows one record per native call.

    Records are encoded as they are appended (length, attributes,
    timestampDelta against the first record's timestamp, offsetDelta = the
    record's index, key, value, headers) into a growable C buffer; ``build``
    puts the 61-byte header in front (compressing the records first when the
    codec asks for it) and empties the builder.

    Cost (100-byte values, on a quiet 2-core x86-64 VM; ``python
    bench/micro.py --only codec`` times the same calls with a Python loop's
    overhead on top): append(v) ~70 ns, of which clock_gettime(CLOCK_REALTIME)
    is ~46 ns on that VM (CLOCK_REALTIME_COARSE is 9 ns but ticks every 4 ms,
    too coarse for ms timestamps); append(v, timestamp=t) ~45 ns.

    Not thread-safe: the owner (a Partition) serialises calls.
    """

    cdef char *buf
    cdef Py_ssize_t length
    cdef Py_ssize_t capacity
    cdef int32_t _count
    cdef int64_t base_timestamp
    cdef int64_t _max_timestamp
    cdef int codec

    def __cinit__(self, int codec=0):
        check_codec(codec)
        self.codec = codec
        self.capacity = 4096
        self.buf = <char *>malloc(<size_t>self.capacity)
        if self.buf == NULL:
            raise MemoryError()
        self.length = 0
        self._count = 0
        self._max_timestamp = -1

    def __dealloc__(self):
        free(self.buf)
        self.buf = NULL

    @property
    def count(self):
        """Records appended since the last build/clear."""
        return self._count

    @property
    def size(self):
        """Bytes the batch would take if built now, uncompressed (>= 61 when
        count > 0; 0 when empty)."""
        if self._count == 0:
            return 0
        return self.length + C_BATCH_HEADER_SIZE

    @property
    def max_timestamp(self):
        """Largest timestamp appended (-1 when empty)."""
        return self._max_timestamp if self._count else -1

    cdef int reserve(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t need = self.length + extra, cap = self.capacity
        cdef char *nb
        if need <= cap:
            return 0
        if need > INT32_MAX:
            raise ValueError("the batch would exceed 2 GiB")
        while cap < need:
            cap *= 2
        nb = <char *>realloc(self.buf, <size_t>cap)
        if nb == NULL:
            raise MemoryError()
        self.buf = nb
        self.capacity = cap
        return 0

    def append(self, value, key=None, headers=None, timestamp=None):
        """Add one record; returns the timestamp used (now in ms when None).

        :raises TypeError: value/key/header value not bytes-like or None
        """
        return self._add(value, key, headers, timestamp)

    cdef object _add(self, value, key, headers, timestamp):
        # The body of append, callable from the native appender without a
        # Python-level call (appender.pyx).
        cdef Py_ssize_t vl, kl, hl = 0, body
        cdef int32_t hc = 0
        cdef int64_t ts, delta
        cdef char *p
        # the timestamp first: converting it may run Python code (__index__),
        # which must not run between measuring the record and writing it
        if timestamp is None:
            ts = wall_ms()
        else:
            ts = PyLong_AsLongLong(timestamp)
        if PyBytes_CheckExact(value):
            vl = PyBytes_GET_SIZE(value)
        else:
            vl = value_len(value)
        kl = -1 if key is None else value_len(key)
        check_len(vl, "a value")
        check_len(kl, "a key")
        if self._count == INT32_MAX:
            raise ValueError("too many records for one batch")
        hseq = None
        if headers is not None:
            hseq = PySequence_Fast(headers, "headers must be a sequence of pairs")
            hl = headers_size(hseq, &hc)
        if self._count == 0:
            self.base_timestamp = ts
        delta = ts - self.base_timestamp
        body = (1 + umlog_size_of_varlong(delta) + umlog_size_of_varint(self._count)
                + umlog_size_of_varint(<int32_t>kl) + umlog_size_of_varint(<int32_t>vl)
                + umlog_size_of_varint(hc) + hl)
        if kl > 0:
            body += kl
        if vl > 0:
            body += vl
        check_len(body, "a record")
        self.reserve(body + 5)
        p = self.buf + self.length
        p = umlog_write_varint(p, <int32_t>body)
        p[0] = 0
        p += 1
        p = umlog_write_varlong(p, delta)
        p = umlog_write_varint(p, self._count)
        p = umlog_write_varint(p, <int32_t>kl)
        if kl > 0:
            p = value_write(p, key, kl)
        p = umlog_write_varint(p, <int32_t>vl)
        if vl > 0:
            if PyBytes_CheckExact(value):
                memcpy(p, PyBytes_AS_STRING(value), <size_t>vl)
                p += vl
            else:
                p = value_write(p, value, vl)
        if hseq is not None:
            p = umlog_write_varint(p, hc)
            p = write_headers(p, hseq)
        else:
            p[0] = 0
            p += 1
        self.length = p - self.buf
        if self._count == 0 or ts > self._max_timestamp:
            self._max_timestamp = ts
        self._count += 1
        if timestamp is not None:
            return timestamp
        return PyLong_FromLongLong(ts)

    def build(self, int64_t base_offset, *, int64_t producer_id=-1,
              int producer_epoch=-1, int32_t base_sequence=-1,
              bint log_append_time=False):
        """The complete batch (compressed per codec, CRC set); then empty again.

        With ``log_append_time`` the LogAppendTime attribute is set and
        maxTimestamp is the current time.

        :raises ValueError: when no record was appended
        """
        if self._count == 0:
            raise ValueError("cannot build an empty batch")
        cdef int16_t attributes = 0
        cdef int64_t max_ts = self._max_timestamp
        if log_append_time:
            attributes |= C_ATTR_TIMESTAMP_TYPE
            max_ts = wall_ms()
        out = finish_batch(self.codec, None, self.buf, self.length, base_offset, 0,
                           attributes, self._count - 1, self.base_timestamp, max_ts,
                           producer_id, <int16_t>producer_epoch, base_sequence,
                           self._count)
        self.clear()
        return out

    def clear(self):
        """Drop every appended record (keeps the allocated buffer, up to 1 MiB)."""
        cdef char *nb
        self.length = 0
        self._count = 0
        self._max_timestamp = -1
        if self.capacity > 1 << 20:
            nb = <char *>realloc(self.buf, 1 << 20)
            if nb != NULL:
                self.buf = nb
                self.capacity = 1 << 20

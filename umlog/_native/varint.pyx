# Zig-zag varints (Kafka ByteUtils), Python-facing; the C versions are in
# csrc/varint.h and used directly by the batch code.

cdef inline int check_int32(object value) except -1:
    if not (-2147483648 <= value <= 2147483647):
        raise ValueError(f"varint {value} out of int32 range")
    return 0


cdef inline int check_int64(object value) except -1:
    if not (-9223372036854775808 <= value <= 9223372036854775807):
        raise ValueError(f"varlong {value} out of int64 range")
    return 0


cdef object varint_error(int err, Py_ssize_t pos, str what):
    if err == UMLOG_VARINT_TOO_LONG:
        return DecodeError(f"{what} too long at position {pos}")
    return DecodeError(f"truncated {what} at position {pos}")


def size_of_varint(value):
    """Bytes taken by the zig-zag varint of an int32 (ValueError outside it)."""
    check_int32(value)
    return umlog_size_of_varint(<int32_t>value)


def write_varint(value):
    """The zig-zag varint bytes of an int32."""
    cdef char out[5]
    check_int32(value)
    cdef char *e = umlog_write_varint(out, <int32_t>value)
    return PyBytes_FromStringAndSize(out, e - out)


def size_of_varlong(value):
    """Bytes taken by the zig-zag varlong of an int64 (ValueError outside it)."""
    check_int64(value)
    return umlog_size_of_varlong(<int64_t>value)


def write_varlong(value):
    """The zig-zag varlong bytes of an int64."""
    cdef char out[10]
    check_int64(value)
    cdef char *e = umlog_write_varlong(out, <int64_t>value)
    return PyBytes_FromStringAndSize(out, e - out)


def read_varint(buf, Py_ssize_t pos=0):
    """(value, next position). DecodeError if truncated or more than 5 bytes."""
    cdef Py_buffer view
    cdef int32_t v
    cdef int err = 0
    cdef const char *p
    get_buffer(buf, &view, False)
    try:
        if pos < 0:
            raise ValueError(f"negative position {pos}")
        if pos >= view.len:
            raise DecodeError(f"truncated varint at position {pos}")
        p = umlog_read_varint(<const char *>view.buf + pos,
                              <const char *>view.buf + view.len, &v, &err)
        if p == NULL:
            raise varint_error(err, pos, "varint")
        return v, p - <const char *>view.buf
    finally:
        PyBuffer_Release(&view)


def read_varlong(buf, Py_ssize_t pos=0):
    """(value, next position). DecodeError if truncated or more than 10 bytes."""
    cdef Py_buffer view
    cdef int64_t v
    cdef int err = 0
    cdef const char *p
    get_buffer(buf, &view, False)
    try:
        if pos < 0:
            raise ValueError(f"negative position {pos}")
        if pos >= view.len:
            raise DecodeError(f"truncated varlong at position {pos}")
        p = umlog_read_varlong(<const char *>view.buf + pos,
                               <const char *>view.buf + view.len, &v, &err)
        if p == NULL:
            raise varint_error(err, pos, "varlong")
        return v, p - <const char *>view.buf
    finally:
        PyBuffer_Release(&view)

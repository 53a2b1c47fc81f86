# Buffer-protocol helpers shared by every piece: acquiring the bytes of any
# bytes-like input, checking (pos, end) ranges, reading bytes-like values.

cdef tuple EMPTY_TUPLE = ()


cdef inline int64_t wall_ms() noexcept nogil:
    """Current wall-clock time in ms since the epoch (CLOCK_REALTIME)."""
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <int64_t>ts.tv_sec * 1000 + ts.tv_nsec // 1000000


cdef inline int get_buffer(object obj, Py_buffer *view, bint writable) except -1:
    PyObject_GetBuffer(obj, view, PyBUF_WRITABLE if writable else PyBUF_SIMPLE)
    return 0


cdef inline Py_ssize_t resolve_end(Py_ssize_t length, Py_ssize_t pos,
                                   Py_ssize_t end) except -1:
    """``end`` with -1 meaning ``length``; checks 0 <= pos <= end <= length."""
    if end == -1:
        end = length
    if pos < 0 or end < 0 or end > length or pos > end:
        raise ValueError(
            f"bad range pos={pos} end={end} for a buffer of {length} bytes")
    return end


cdef inline Py_ssize_t value_len(object o) except -2:
    """Byte length of a bytes-like value, -1 for None."""
    cdef Py_buffer view
    if PyBytes_CheckExact(o):
        return PyBytes_GET_SIZE(o)
    if o is None:
        return -1
    if PyByteArray_CheckExact(o):
        return PyByteArray_GET_SIZE(o)
    if PyUnicode_Check(o):
        raise TypeError("record values, keys and header values must be "
                        "bytes-like or None, not str")
    try:
        PyObject_GetBuffer(o, &view, PyBUF_SIMPLE)
    except TypeError:
        raise TypeError("record values, keys and header values must be "
                        f"bytes-like or None, not {type(o).__name__}") from None
    PyBuffer_Release(&view)
    return view.len


cdef inline char *value_write(char *p, object o, Py_ssize_t n) except NULL:
    """Copy the bytes of ``o`` (already measured as ``n`` by value_len) to p."""
    cdef Py_buffer view
    if n <= 0:
        return p
    if PyBytes_CheckExact(o) and PyBytes_GET_SIZE(o) == n:
        memcpy(p, PyBytes_AS_STRING(o), <size_t>n)
        return p + n
    PyObject_GetBuffer(o, &view, PyBUF_SIMPLE)
    try:
        if view.len != n:
            raise RuntimeError("a value changed size while being encoded")
        memcpy(p, view.buf, <size_t>n)
    finally:
        PyBuffer_Release(&view)
    return p + n


cdef inline int check_len(Py_ssize_t n, str what) except -1:
    if n > INT32_MAX:
        raise ValueError(f"{what} of {n} bytes does not fit a RecordBatch")
    return 0

# CRC32C (Castagnoli), hardware when the CPU has it (csrc/crc32c.c).

umlog_crc32c_init()


cdef inline uint32_t crc32c_mem(const char *p, Py_ssize_t n) noexcept nogil:
    return umlog_crc32c(0, p, <size_t>n)


cdef uint32_t crc32c_region(const char *p, Py_ssize_t n) noexcept:
    """CRC32C of n bytes, releasing the GIL for big regions."""
    cdef uint32_t c
    if n >= NOGIL_THRESHOLD:
        with nogil:
            c = umlog_crc32c(0, p, <size_t>n)
        return c
    return umlog_crc32c(0, p, <size_t>n)


def crc32c(data, unsigned int crc=0):
    """CRC32C of data, continuing from crc (a previous result). HW when present."""
    cdef Py_buffer view
    cdef uint32_t c = crc
    get_buffer(data, &view, False)
    try:
        if view.len >= NOGIL_THRESHOLD:
            with nogil:
                c = umlog_crc32c(c, view.buf, <size_t>view.len)
        else:
            c = umlog_crc32c(c, view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return c


def crc32c_sw(data, unsigned int crc=0):
    """Same, always the portable table implementation (for tests)."""
    cdef Py_buffer view
    cdef uint32_t c = crc
    get_buffer(data, &view, False)
    try:
        with nogil:
            c = umlog_crc32c_sw(c, view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return c


def crc32c_hw_available():
    """True when crc32c() uses the CPU's CRC32C instruction."""
    return bool(umlog_crc32c_hw_available())

# C declarations of csrc/ (included by core.pyx, not cimported).

from libc.stdint cimport (int8_t, int16_t, int32_t, int64_t, uint8_t,
                          uint16_t, uint32_t, uint64_t, uintptr_t, INT32_MAX,
                          INT32_MIN)
from libc.string cimport memcpy, memset, memcmp
from libc.stdlib cimport malloc, realloc, free
from cpython.buffer cimport (PyObject_GetBuffer, PyBuffer_Release,
                             PyBUF_SIMPLE, PyBUF_WRITABLE)
from cpython.bytes cimport (PyBytes_FromStringAndSize, PyBytes_AS_STRING,
                            PyBytes_GET_SIZE, PyBytes_CheckExact)
from cpython.unicode cimport PyUnicode_Check, PyUnicode_DecodeUTF8
from cpython.long cimport PyLong_FromLongLong, PyLong_AsLongLong
from cpython.list cimport PyList_New
from cpython.tuple cimport PyTuple_New
from cpython.ref cimport Py_INCREF
from posix.time cimport clock_gettime, timespec, CLOCK_REALTIME
cimport cython

cdef extern from "Python.h":
    ctypedef struct PyObject
    object PySequence_Fast(object o, const char *m)
    Py_ssize_t PySequence_Fast_GET_SIZE(object o)
    PyObject **PySequence_Fast_ITEMS(object o)
    const char *PyUnicode_AsUTF8AndSize(object o, Py_ssize_t *size) except NULL
    object PyMemoryView_FromMemory(char *mem, Py_ssize_t size, int flags)
    void PyList_SET_ITEM(object l, Py_ssize_t i, object o)
    void PyTuple_SET_ITEM(object t, Py_ssize_t i, object o)
    int PyBUF_READ
    bint PyByteArray_CheckExact(object o)
    char *PyByteArray_AS_STRING(object o)
    Py_ssize_t PyByteArray_GET_SIZE(object o)

cdef extern from *:
    # -DUMLOG_DEBUG=0/1 from setup.py; `if UMLOG_DEBUG:` blocks are invariants
    # the C compiler drops from release builds
    const bint UMLOG_DEBUG

cdef extern from "endian.h" nogil:
    uint16_t umlog_load_be16(const void *p)
    uint32_t umlog_load_be32(const void *p)
    uint64_t umlog_load_be64(const void *p)
    void umlog_store_be16(void *p, uint16_t v)
    void umlog_store_be32(void *p, uint32_t v)
    void umlog_store_be64(void *p, uint64_t v)

cdef extern from "varint.h" nogil:
    enum:
        UMLOG_VARINT_TRUNCATED
        UMLOG_VARINT_TOO_LONG
    uint32_t umlog_zigzag32(int32_t v)
    uint64_t umlog_zigzag64(int64_t v)
    int umlog_size_of_uvarint32(uint32_t u)
    int umlog_size_of_varint(int32_t v)
    int umlog_size_of_varlong(int64_t v)
    char *umlog_write_uvarint32(char *p, uint32_t u)
    char *umlog_write_varint(char *p, int32_t v)
    char *umlog_write_varlong(char *p, int64_t v)
    const char *umlog_read_varint(const char *p, const char *end, int32_t *out, int *err)
    const char *umlog_read_varlong(const char *p, const char *end, int64_t *out, int *err)

cdef extern from "crc32c.h" nogil:
    void umlog_crc32c_init()
    int umlog_crc32c_hw_available()
    uint32_t umlog_crc32c(uint32_t crc, const void *buf, size_t len)
    uint32_t umlog_crc32c_sw(uint32_t crc, const void *buf, size_t len)

cdef extern from "crc32.h" nogil:
    void umlog_crc32_init()
    uint32_t umlog_crc32(uint32_t crc, const void *buf, size_t len)
    uint32_t umlog_xxh32(const void *buf, size_t len, uint32_t seed)

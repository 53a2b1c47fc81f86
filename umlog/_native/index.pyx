# Index search over the mapped bytes of .index / .timeindex (big-endian).
#
# Kafka's AbstractIndex "warm section": lookups almost always target the tail
# of an index (consumers near the head, appends), so the last 8192 bytes of
# entries are searched first when the target is at or after the first warm
# entry; those pages stay hot in the page cache and CPU cache, and a cold
# lookup costs one extra comparison. The search is an upper bound (largest
# slot whose key <= target), so runs of equal keys give their last slot.

cdef enum:
    WARM_BYTES = 8192
    OFFSET_ENTRY = 8     # relative offset u32 | position u32
    TIME_ENTRY = 12      # timestamp i64 | relative offset u32


cdef inline int64_t index_key(const char *b, Py_ssize_t slot, int kind) noexcept nogil:
    if kind == 0:
        return umlog_load_be32(b + slot * OFFSET_ENTRY)
    return <int64_t>umlog_load_be64(b + slot * TIME_ENTRY)


cdef Py_ssize_t upper_slot(const char *b, Py_ssize_t lo, Py_ssize_t hi,
                           int64_t target, int kind) noexcept nogil:
    """Largest slot in [lo, hi) with key <= target, lo - 1 if none."""
    cdef Py_ssize_t mid
    while lo < hi:
        mid = lo + (hi - lo) // 2
        if index_key(b, mid, kind) <= target:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


cdef Py_ssize_t index_lookup(object buf, Py_ssize_t entries, int64_t target,
                             int kind) except -2:
    cdef Py_buffer view
    cdef Py_ssize_t esize = OFFSET_ENTRY if kind == 0 else TIME_ENTRY
    cdef Py_ssize_t warm, first_hot, r
    cdef const char *b
    get_buffer(buf, &view, False)
    try:
        if entries < 0 or entries * esize > view.len:
            raise ValueError(f"{entries} entries of {esize} bytes do not fit "
                             f"a buffer of {view.len} bytes")
        if entries == 0:
            return -1
        b = <const char *>view.buf
        warm = WARM_BYTES // esize
        first_hot = entries - 1 - warm
        if first_hot < 0:
            first_hot = 0
        if index_key(b, first_hot, kind) <= target:
            return upper_slot(b, first_hot, entries, target, kind)
        if index_key(b, 0, kind) > target:
            return -1
        return upper_slot(b, 0, first_hot, target, kind)
    finally:
        PyBuffer_Release(&view)


def offset_index_lookup(buf, Py_ssize_t entries, int64_t relative_offset):
    """Largest slot whose relative offset (u32 BE at slot*8) <= relative_offset,
    -1 if none. Binary search over the mapped bytes, warm section first."""
    return index_lookup(buf, entries, relative_offset, 0)


def time_index_lookup(buf, Py_ssize_t entries, int64_t timestamp):
    """Largest slot whose timestamp (i64 BE at slot*12) <= timestamp, -1 if none."""
    return index_lookup(buf, entries, timestamp, 1)

# Kafka's murmur2, bit for bit as org.apache.kafka.common.utils.Utils.murmur2
# (seed 0x9747b28c, m 0x5bd1e995, r 24): the default partitioner's hash.

cdef int32_t murmur2_mem(const unsigned char *data, Py_ssize_t length) noexcept nogil:
    cdef uint32_t m = 0x5bd1e995
    cdef int r = 24
    cdef uint32_t seed = 0x9747b28cU
    cdef uint32_t h = seed ^ <uint32_t>length
    cdef Py_ssize_t length4 = length // 4
    cdef Py_ssize_t i, tail = length & ~(<Py_ssize_t>3)
    cdef uint32_t k
    for i in range(length4):
        k = (<uint32_t>data[4 * i] | (<uint32_t>data[4 * i + 1] << 8) |
             (<uint32_t>data[4 * i + 2] << 16) | (<uint32_t>data[4 * i + 3] << 24))
        k *= m
        k ^= k >> r
        k *= m
        h *= m
        h ^= k
    # Java's switch falls through: 3 -> 2 -> 1
    if length % 4 == 3:
        h ^= <uint32_t>data[tail + 2] << 16
    if length % 4 >= 2:
        h ^= <uint32_t>data[tail + 1] << 8
    if length % 4 >= 1:
        h ^= <uint32_t>data[tail]
        h *= m
    h ^= h >> 13
    h *= m
    h ^= h >> 15
    return <int32_t>h


def murmur2(data):
    """Signed 32-bit result, as org.apache.kafka.common.utils.Utils.murmur2.

    The partition of a key is ``(murmur2(key) & 0x7fffffff) % num_partitions``.
    """
    cdef Py_buffer view
    get_buffer(data, &view, False)
    try:
        return murmur2_mem(<const unsigned char *>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)


def partition_for_key(key, int num_partitions):
    """The Java client's default partition of a non-null key."""
    if num_partitions <= 0:
        raise ValueError(f"num_partitions must be > 0, not {num_partitions}")
    cdef Py_buffer view
    cdef int32_t h
    get_buffer(key, &view, False)
    try:
        h = murmur2_mem(<const unsigned char *>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)
    return (h & 0x7fffffff) % num_partitions

# Compression glue: the records section of a batch is compressed as a whole,
# delegated to cramjam (one call per batch).
#
#   gzip    a gzip stream
#   snappy  written in xerial-snappy framing, as the Java client does
#           (SnappyOutputStream, 32 KiB blocks):
#             "\x82SNAPPY\x00" | int32 version=1 | int32 compat=1 |
#             ([int32 BE compressed length][raw snappy block])*
#           read in both that framing and as one raw snappy block
#           (librdkafka and some others send raw).
#   lz4     an LZ4 frame with independent blocks and no content checksum:
#           Kafka's KafkaLZ4BlockInputStream rejects dependent (linked)
#           blocks, which is cramjam's default.
#   zstd    a zstd frame (the content size may be absent in other producers'
#           frames; cramjam decompresses either).

import cramjam

cdef object _gzip_compress = cramjam.gzip.compress
cdef object _gzip_decompress = cramjam.gzip.decompress
cdef object _snappy_compress_raw = cramjam.snappy.compress_raw
cdef object _snappy_decompress_raw = cramjam.snappy.decompress_raw
cdef object _lz4_compressor = cramjam.lz4.Compressor
cdef object _lz4_decompress = cramjam.lz4.decompress
cdef object _zstd_compress = cramjam.zstd.compress
cdef object _zstd_decompress = cramjam.zstd.decompress

cdef bytes XERIAL_HEADER = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01"
cdef Py_ssize_t XERIAL_BLOCK = 32 * 1024
cdef tuple CODEC_NAMES = ("none", "gzip", "snappy", "lz4", "zstd")


cdef str codec_name(int codec):
    if 0 <= codec <= 4:
        return CODEC_NAMES[codec]
    return f"codec {codec}"


cdef object compress_records(int codec, object raw):
    """The compressed form of ``raw`` (bytes); returns a bytes-like object."""
    cdef Py_ssize_t n, i
    if codec == C_CODEC_GZIP:
        return _gzip_compress(raw)
    if codec == C_CODEC_SNAPPY:
        n = len(raw)
        out = bytearray(XERIAL_HEADER)
        mv = memoryview(raw)
        for i in range(0, n, XERIAL_BLOCK):
            block = _snappy_compress_raw(mv[i:i + XERIAL_BLOCK])
            out += (<uint32_t>len(block)).to_bytes(4, "big")
            out += block
        return out
    if codec == C_CODEC_LZ4:
        c = _lz4_compressor(content_checksum=False, block_linked=False)
        c.compress(raw)
        return c.finish()
    if codec == C_CODEC_ZSTD:
        return _zstd_compress(raw)
    raise ValueError(f"unknown compression codec {codec}")


cdef object snappy_decompress(const char *p, Py_ssize_t n):
    cdef Py_ssize_t at = 16
    cdef uint32_t blen
    if n > 16 and memcmp_(p, XERIAL_HEADER, 8):
        out = bytearray()
        while at < n:
            if n - at < 4:
                raise ValueError("truncated xerial block length")
            blen = umlog_load_be32(p + at)
            at += 4
            if blen > <uint64_t>(n - at):
                raise ValueError("truncated xerial block")
            out += _snappy_decompress_raw(
                PyMemoryView_FromMemory(<char *>p + at, blen, PyBUF_READ))
            at += blen
        return out
    return _snappy_decompress_raw(PyMemoryView_FromMemory(<char *>p, n, PyBUF_READ))


cdef inline bint memcmp_(const char *p, bytes b, Py_ssize_t n) noexcept:
    cdef const char *q = PyBytes_AS_STRING(b)
    cdef Py_ssize_t i
    for i in range(n):
        if p[i] != q[i]:
            return False
    return True


cdef object decompress_records(int codec, const char *p, Py_ssize_t n,
                               Py_ssize_t position):
    """The decompressed records section (a bytes-like object).

    Raises CorruptBatchError(position) when the codec is unknown or the data
    does not decompress.
    """
    if codec < 1 or codec > 4:
        raise CorruptBatchError(
            f"unknown compression codec {codec} in batch at position {position}",
            position)
    try:
        if codec == C_CODEC_SNAPPY:
            return snappy_decompress(p, n)
        data = PyMemoryView_FromMemory(<char *>p, n, PyBUF_READ)
        if codec == C_CODEC_GZIP:
            return _gzip_decompress(data)
        if codec == C_CODEC_LZ4:
            return _lz4_decompress(data)
        return _zstd_decompress(data)
    except Exception as e:
        raise CorruptBatchError(
            f"bad {codec_name(codec)} data in batch at position {position}: {e}",
            position) from e

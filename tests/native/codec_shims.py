"""Make kafka-python's record module use cramjam for snappy, lz4 and zstd.

kafka-python 3.0 looks for python-snappy, lz4 and zstandard, none of which the
dev venv has; cramjam (a umlog dependency) provides the same primitives. The
snappy shim hands kafka-python *raw* snappy blocks, so kafka-python's own
xerial framing code runs (an independent check of ours).
"""

import contextlib
import types

import cramjam
import kafka.codec as kcodec
import kafka.record.default_records as kdr


def _lz4_compress(data):
    c = cramjam.lz4.Compressor(content_checksum=False, block_linked=False)
    c.compress(bytes(data))
    return bytes(c.finish())


@contextlib.contextmanager
def kafka_codecs():
    saved_mod = {n: getattr(kcodec, n) for n in ("snappy", "lz4", "zstd")}
    saved_fn = {n: getattr(kdr, n) for n in ("lz4_encode", "lz4_decode", "zstd_encode",
                                               "zstd_decode")}
    kcodec.snappy = types.SimpleNamespace(
        compress=lambda b: bytes(cramjam.snappy.compress_raw(bytes(b))),
        decompress=lambda b: bytes(cramjam.snappy.decompress_raw(bytes(b))))
    kcodec.lz4 = kcodec.zstd = types.SimpleNamespace()
    kdr.lz4_encode = _lz4_compress
    kdr.lz4_decode = lambda b: bytes(cramjam.lz4.decompress(bytes(b)))
    kdr.zstd_encode = lambda b: bytes(cramjam.zstd.compress(bytes(b)))
    kdr.zstd_decode = lambda b: bytes(cramjam.zstd.decompress(bytes(b)))
    try:
        yield
    finally:
        for n, v in saved_mod.items():
            setattr(kcodec, n, v)
        for n, v in saved_fn.items():
            setattr(kdr, n, v)

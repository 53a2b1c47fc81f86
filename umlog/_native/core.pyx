"""umlog._native.core: the native core of umlog, one extension module.

Everything done per record lives here (CRC32C, zig-zag varints, RecordBatch v2
encode/decode/validate, segment scans, index search); Python calls it once per
batch. The contract and the batch layout are in ``core.pyi``. This root holds
only ``include`` lines (the asyncpg/uvloop layout): each piece is a small .pyx
compiled into this one module, so the pieces share cdef functions freely.
"""

include "consts.pxi"
include "csrc.pxd"
include "buffer.pyx"
include "crc.pyx"
include "varint.pyx"
include "murmur.pyx"
include "record.pyx"
include "codecs.pyx"
include "batch.pyx"
include "builder.pyx"
include "appender.pyx"
include "decode.pyx"
include "scan.pyx"
include "index.pyx"
include "arrow.pyx"
include "columns.pyx"
include "compact.pyx"
include "legacy.pyx"
include "amqp.pyx"
include "share.pyx"
include "mqtt.pyx"

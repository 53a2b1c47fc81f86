/* Zig-zag varints as Kafka's ByteUtils writes them (protobuf encoding).
 *
 * varint  = zig-zag int32, 1..5 bytes;  varlong = zig-zag int64, 1..10 bytes.
 * Readers follow ByteUtils.readVarint/readVarlong: a 5th (10th) byte with the
 * continuation bit set is "too long"; bits shifted past 32 (64) are dropped,
 * as Java's int/long arithmetic does.
 *
 * Readers return the new cursor, or NULL with *err set:
 *   UMLOG_VARINT_TRUNCATED  the input ended inside the varint
 *   UMLOG_VARINT_TOO_LONG   more than 5 (10) bytes
 */
#ifndef UMLOG_VARINT_H
#define UMLOG_VARINT_H

#include <stdint.h>
#include <stddef.h>

#define UMLOG_VARINT_TRUNCATED 1
#define UMLOG_VARINT_TOO_LONG 2

static inline uint32_t umlog_zigzag32(int32_t v) {
    return ((uint32_t)v << 1) ^ (uint32_t)(v >> 31);
}
static inline uint64_t umlog_zigzag64(int64_t v) {
    return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
}

static inline int umlog_size_of_uvarint32(uint32_t u) {
    /* bits = 32 - clz(u|1); bytes = ceil(bits / 7) */
    int bits = 32 - __builtin_clz(u | 1);
    return (bits + 6) / 7;
}
static inline int umlog_size_of_uvarint64(uint64_t u) {
    int bits = 64 - __builtin_clzll(u | 1);
    return (bits + 6) / 7;
}
static inline int umlog_size_of_varint(int32_t v) {
    return umlog_size_of_uvarint32(umlog_zigzag32(v));
}
static inline int umlog_size_of_varlong(int64_t v) {
    return umlog_size_of_uvarint64(umlog_zigzag64(v));
}

static inline char *umlog_write_uvarint32(char *p, uint32_t u) {
    while (u >= 0x80) {
        *p++ = (char)(u | 0x80);
        u >>= 7;
    }
    *p++ = (char)u;
    return p;
}
static inline char *umlog_write_uvarint64(char *p, uint64_t u) {
    while (u >= 0x80) {
        *p++ = (char)(u | 0x80);
        u >>= 7;
    }
    *p++ = (char)u;
    return p;
}
static inline char *umlog_write_varint(char *p, int32_t v) {
    return umlog_write_uvarint32(p, umlog_zigzag32(v));
}
static inline char *umlog_write_varlong(char *p, int64_t v) {
    return umlog_write_uvarint64(p, umlog_zigzag64(v));
}

static inline const char *umlog_read_varint(const char *p, const char *end,
                                            int32_t *out, int *err) {
    uint32_t value = 0;
    int shift = 0;
    for (;;) {
        if (p >= end) { *err = UMLOG_VARINT_TRUNCATED; return NULL; }
        uint32_t b = (uint8_t)*p++;
        if (!(b & 0x80)) {
            value |= b << shift;
            break;
        }
        value |= (b & 0x7f) << shift;
        shift += 7;
        if (shift > 28) { *err = UMLOG_VARINT_TOO_LONG; return NULL; }
    }
    *out = (int32_t)((value >> 1) ^ (0u - (value & 1)));
    return p;
}

static inline const char *umlog_read_varlong(const char *p, const char *end,
                                             int64_t *out, int *err) {
    uint64_t value = 0;
    int shift = 0;
    for (;;) {
        if (p >= end) { *err = UMLOG_VARINT_TRUNCATED; return NULL; }
        uint64_t b = (uint8_t)*p++;
        if (!(b & 0x80)) {
            value |= b << shift;
            break;
        }
        value |= (b & 0x7f) << shift;
        shift += 7;
        if (shift > 63) { *err = UMLOG_VARINT_TOO_LONG; return NULL; }
    }
    *out = (int64_t)((value >> 1) ^ (0ull - (value & 1)));
    return p;
}

#endif /* UMLOG_VARINT_H */

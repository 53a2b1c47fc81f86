/* Big-endian loads and stores for Kafka's wire and file formats.
 *
 * Every multi-byte integer in a RecordBatch and in the .index/.timeindex files
 * is big-endian. memcpy + __builtin_bswap compiles to one unaligned load and a
 * bswap/rev on x86-64 and aarch64, and is safe for any alignment.
 */
#ifndef UMLOG_ENDIAN_H
#define UMLOG_ENDIAN_H

#include <stdint.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define UMLOG_BE16(x) (x)
#define UMLOG_BE32(x) (x)
#define UMLOG_BE64(x) (x)
#else
#define UMLOG_BE16(x) __builtin_bswap16(x)
#define UMLOG_BE32(x) __builtin_bswap32(x)
#define UMLOG_BE64(x) __builtin_bswap64(x)
#endif

static inline uint16_t umlog_load_be16(const void *p) {
    uint16_t v; memcpy(&v, p, 2); return UMLOG_BE16(v);
}
static inline uint32_t umlog_load_be32(const void *p) {
    uint32_t v; memcpy(&v, p, 4); return UMLOG_BE32(v);
}
static inline uint64_t umlog_load_be64(const void *p) {
    uint64_t v; memcpy(&v, p, 8); return UMLOG_BE64(v);
}
static inline void umlog_store_be16(void *p, uint16_t v) {
    v = UMLOG_BE16(v); memcpy(p, &v, 2);
}
static inline void umlog_store_be32(void *p, uint32_t v) {
    v = UMLOG_BE32(v); memcpy(p, &v, 4);
}
static inline void umlog_store_be64(void *p, uint64_t v) {
    v = UMLOG_BE64(v); memcpy(p, &v, 8);
}

#endif /* UMLOG_ENDIAN_H */

/* CRC32 (IEEE) by slicing-by-8, and XXH32; see crc32.h.
 *
 * Written for umlog from the algorithms' definitions (the CRC as zlib's
 * crc32(), XXH32 as the xxHash specification), so the extension needs no
 * zlib headers at build time.
 */
#include "crc32.h"

#include <string.h>

#define UMLOG_IEEE_POLY 0xEDB88320u

static uint32_t umlog_ieee_tab[8][256];
static volatile int umlog_ieee_inited = 0;

void umlog_crc32_init(void) {
    if (umlog_ieee_inited) return;
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (UMLOG_IEEE_POLY & (0u - (c & 1)));
        umlog_ieee_tab[0][n] = c;
    }
    for (int n = 0; n < 256; n++) {
        uint32_t c = umlog_ieee_tab[0][n];
        for (int k = 1; k < 8; k++) {
            c = umlog_ieee_tab[0][c & 0xff] ^ (c >> 8);
            umlog_ieee_tab[k][n] = c;
        }
    }
    __atomic_store_n(&umlog_ieee_inited, 1, __ATOMIC_RELEASE);
}

uint32_t umlog_crc32(uint32_t crc, const void *buf, size_t len) {
    const unsigned char *p = (const unsigned char *)buf;
    uint32_t reg = ~crc;
    if (!__atomic_load_n(&umlog_ieee_inited, __ATOMIC_ACQUIRE)) umlog_crc32_init();
    while (len && ((uintptr_t)p & 7)) {
        reg = umlog_ieee_tab[0][(reg ^ *p++) & 0xff] ^ (reg >> 8);
        len--;
    }
    while (len >= 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        lo = __builtin_bswap32(lo);
        hi = __builtin_bswap32(hi);
#endif
        lo ^= reg;
        reg = umlog_ieee_tab[7][lo & 0xff] ^ umlog_ieee_tab[6][(lo >> 8) & 0xff] ^
              umlog_ieee_tab[5][(lo >> 16) & 0xff] ^ umlog_ieee_tab[4][lo >> 24] ^
              umlog_ieee_tab[3][hi & 0xff] ^ umlog_ieee_tab[2][(hi >> 8) & 0xff] ^
              umlog_ieee_tab[1][(hi >> 16) & 0xff] ^ umlog_ieee_tab[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len--) reg = umlog_ieee_tab[0][(reg ^ *p++) & 0xff] ^ (reg >> 8);
    return ~reg;
}

/* ---- XXH32 ------------------------------------------------------------- */

#define UMLOG_P32_1 2654435761u
#define UMLOG_P32_2 2246822519u
#define UMLOG_P32_3 3266489917u
#define UMLOG_P32_4 668265263u
#define UMLOG_P32_5 374761393u

static inline uint32_t umlog_rotl32(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

static inline uint32_t umlog_le32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline uint32_t umlog_xxh_round(uint32_t acc, uint32_t input) {
    acc += input * UMLOG_P32_2;
    acc = umlog_rotl32(acc, 13);
    return acc * UMLOG_P32_1;
}

uint32_t umlog_xxh32(const void *buf, size_t len, uint32_t seed) {
    const unsigned char *p = (const unsigned char *)buf;
    const unsigned char *end = p + len;
    uint32_t h;
    if (len >= 16) {
        const unsigned char *limit = end - 16;
        uint32_t v1 = seed + UMLOG_P32_1 + UMLOG_P32_2, v2 = seed + UMLOG_P32_2;
        uint32_t v3 = seed, v4 = seed - UMLOG_P32_1;
        do {
            v1 = umlog_xxh_round(v1, umlog_le32(p));
            v2 = umlog_xxh_round(v2, umlog_le32(p + 4));
            v3 = umlog_xxh_round(v3, umlog_le32(p + 8));
            v4 = umlog_xxh_round(v4, umlog_le32(p + 12));
            p += 16;
        } while (p <= limit);
        h = umlog_rotl32(v1, 1) + umlog_rotl32(v2, 7) + umlog_rotl32(v3, 12) + umlog_rotl32(v4, 18);
    } else {
        h = seed + UMLOG_P32_5;
    }
    h += (uint32_t)len;
    while (p + 4 <= end) {
        h += umlog_le32(p) * UMLOG_P32_3;
        h = umlog_rotl32(h, 17) * UMLOG_P32_4;
        p += 4;
    }
    while (p < end) {
        h += (*p++) * UMLOG_P32_5;
        h = umlog_rotl32(h, 11) * UMLOG_P32_1;
    }
    h ^= h >> 15;
    h *= UMLOG_P32_2;
    h ^= h >> 13;
    h *= UMLOG_P32_3;
    h ^= h >> 16;
    return h;
}

/* CRC32C: hardware (SSE4.2 / ARMv8 CRC) with a slicing-by-8 fallback.
 *
 * Written for umlog from the algorithm's definition; see crc32c.h for the API.
 *
 * Hardware path: the crc32 instruction has a latency of 3 cycles and a
 * throughput of 1 per cycle, so one dependent chain runs at 8 bytes / 3 cycles.
 * Buffers of at least 3 * UMLOG_LANE_SHORT bytes are split into three lanes
 * computed in parallel and merged by "shifting" a lane's CRC over the length
 * of the following lane: appending n zero bytes to a message is a linear map
 * of the 32-bit register, precomputed here as four 256-entry tables per lane
 * length (umlog_shift_*). Measured on a 2-core x86-64 machine (gcc -O3, the
 * three lanes vs a single chain, best of 2 noisy runs): 16 MiB 11.7 vs 8.3 GB/s,
 * 1 KiB 63 vs 99 ns; slicing-by-8 2.1 GB/s. `python bench/micro.py --only crc32c`
 * gives the hardware and table rows.
 */
#include "crc32c.h"

#include <string.h>

#if defined(__x86_64__) || defined(_M_X64)
#define UMLOG_X86 1
#include <nmmintrin.h>
#elif defined(__aarch64__)
#define UMLOG_ARM64 1
#include <arm_acle.h>
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif
#endif

#define UMLOG_POLY 0x82F63B78u
#define UMLOG_LANE_LONG 8192
#define UMLOG_LANE_SHORT 256

static uint32_t umlog_tab[8][256];          /* slicing-by-8 */
static uint32_t umlog_shift_long[4][256];   /* x * x^(8*LANE_LONG) mod P */
static uint32_t umlog_shift_short[4][256];  /* x * x^(8*LANE_SHORT) mod P */
static volatile int umlog_inited = 0;
static int umlog_hw = 0;

/* raw register update over n zero bytes, one bit at a time (init only) */
static uint32_t umlog_zeros_bitwise(uint32_t reg, size_t nbytes) {
    for (size_t i = 0; i < nbytes; i++) {
        for (int k = 0; k < 8; k++)
            reg = (reg >> 1) ^ (UMLOG_POLY & (0u - (reg & 1)));
    }
    return reg;
}

static void umlog_make_shift(uint32_t table[4][256], size_t nbytes) {
    uint32_t basis[32];
    /* The map is linear in the register: compute the image of each bit,
       using the byte table (8x faster than bitwise) for long runs. */
    for (int b = 0; b < 32; b++) {
        uint32_t reg = 1u << b;
        for (size_t i = 0; i < nbytes; i++)
            reg = umlog_tab[0][reg & 0xff] ^ (reg >> 8);
        basis[b] = reg;
    }
    for (int k = 0; k < 4; k++) {
        for (int v = 0; v < 256; v++) {
            uint32_t r = 0;
            for (int bit = 0; bit < 8; bit++)
                if (v & (1 << bit)) r ^= basis[8 * k + bit];
            table[k][v] = r;
        }
    }
}

static inline uint32_t umlog_shift(uint32_t table[4][256], uint32_t reg) {
    return table[0][reg & 0xff] ^ table[1][(reg >> 8) & 0xff] ^
           table[2][(reg >> 16) & 0xff] ^ table[3][reg >> 24];
}

void umlog_crc32c_init(void) {
    if (umlog_inited) return;
    for (int n = 0; n < 256; n++) {
        umlog_tab[0][n] = umlog_zeros_bitwise((uint32_t)n, 1);
    }
    for (int n = 0; n < 256; n++) {
        uint32_t c = umlog_tab[0][n];
        for (int k = 1; k < 8; k++) {
            c = umlog_tab[0][c & 0xff] ^ (c >> 8);
            umlog_tab[k][n] = c;
        }
    }
    umlog_make_shift(umlog_shift_long, UMLOG_LANE_LONG);
    umlog_make_shift(umlog_shift_short, UMLOG_LANE_SHORT);
#if defined(UMLOG_X86)
    __builtin_cpu_init();
    umlog_hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
#elif defined(UMLOG_ARM64)
    umlog_hw = (getauxval(AT_HWCAP) & HWCAP_CRC32) ? 1 : 0;
#endif
    __atomic_store_n(&umlog_inited, 1, __ATOMIC_RELEASE);
}

int umlog_crc32c_hw_available(void) {
    umlog_crc32c_init();
    return umlog_hw;
}

/* ---- portable: slicing-by-8 ------------------------------------------- */

static uint32_t umlog_sw_raw(uint32_t reg, const unsigned char *p, size_t len) {
    while (len && ((uintptr_t)p & 7)) {
        reg = umlog_tab[0][(reg ^ *p++) & 0xff] ^ (reg >> 8);
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
        reg = umlog_tab[7][lo & 0xff] ^ umlog_tab[6][(lo >> 8) & 0xff] ^
              umlog_tab[5][(lo >> 16) & 0xff] ^ umlog_tab[4][lo >> 24] ^
              umlog_tab[3][hi & 0xff] ^ umlog_tab[2][(hi >> 8) & 0xff] ^
              umlog_tab[1][(hi >> 16) & 0xff] ^ umlog_tab[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len--) reg = umlog_tab[0][(reg ^ *p++) & 0xff] ^ (reg >> 8);
    return reg;
}

uint32_t umlog_crc32c_sw(uint32_t crc, const void *buf, size_t len) {
    umlog_crc32c_init();
    return ~umlog_sw_raw(~crc, (const unsigned char *)buf, len);
}

/* ---- hardware ------------------------------------------------------------ */

#if defined(UMLOG_X86)
#define UMLOG_HW_TARGET __attribute__((target("sse4.2")))
#define UMLOG_CRC8(r, p) ((uint32_t)_mm_crc32_u64((r), umlog_ld64(p)))
#define UMLOG_CRC1(r, p) _mm_crc32_u8((r), *(p))
#elif defined(UMLOG_ARM64)
#define UMLOG_HW_TARGET __attribute__((target("+crc")))
#define UMLOG_CRC8(r, p) __crc32cd((r), umlog_ld64(p))
#define UMLOG_CRC1(r, p) __crc32cb((r), *(p))
#endif

#ifdef UMLOG_HW_TARGET
static inline uint64_t umlog_ld64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* three lanes of `lane` bytes each, from p; returns the merged register */
#define UMLOG_THREE_LANES(lane, table)                                       \
    while (len >= 3 * (size_t)(lane)) {                                      \
        uint32_t r0 = reg, r1 = 0, r2 = 0;                                   \
        const unsigned char *e = p + (lane);                                 \
        while (p < e) {                                                      \
            r0 = UMLOG_CRC8(r0, p);                                          \
            r1 = UMLOG_CRC8(r1, p + (lane));                                 \
            r2 = UMLOG_CRC8(r2, p + 2 * (lane));                             \
            p += 8;                                                          \
        }                                                                    \
        reg = umlog_shift(table, r0) ^ r1;                                   \
        reg = umlog_shift(table, reg) ^ r2;                                  \
        p += 2 * (lane);                                                     \
        len -= 3 * (size_t)(lane);                                           \
    }

UMLOG_HW_TARGET
static uint32_t umlog_hw_raw(uint32_t reg, const unsigned char *p, size_t len) {
    while (len && ((uintptr_t)p & 7)) {
        reg = UMLOG_CRC1(reg, p);
        p++;
        len--;
    }
    UMLOG_THREE_LANES(UMLOG_LANE_LONG, umlog_shift_long)
    UMLOG_THREE_LANES(UMLOG_LANE_SHORT, umlog_shift_short)
    while (len >= 8) {
        reg = UMLOG_CRC8(reg, p);
        p += 8;
        len -= 8;
    }
    while (len--) {
        reg = UMLOG_CRC1(reg, p);
        p++;
    }
    return reg;
}
#endif

uint32_t umlog_crc32c(uint32_t crc, const void *buf, size_t len) {
    if (!__atomic_load_n(&umlog_inited, __ATOMIC_ACQUIRE)) umlog_crc32c_init();
#ifdef UMLOG_HW_TARGET
    if (umlog_hw) return ~umlog_hw_raw(~crc, (const unsigned char *)buf, len);
#endif
    return ~umlog_sw_raw(~crc, (const unsigned char *)buf, len);
}

/* CRC32C (Castagnoli; reflected polynomial 0x82F63B78, init and xorout
 * 0xFFFFFFFF), the checksum of Kafka's RecordBatch v2.
 *
 * `crc` is a previous *result* (0 to start), so
 *   umlog_crc32c(umlog_crc32c(0, a, n), b, m) == umlog_crc32c(0, a||b, n+m).
 *
 * umlog_crc32c uses the CPU instruction when present (SSE4.2 on x86-64, the
 * ARMv8 CRC extension on aarch64), chosen at run time; umlog_crc32c_sw is the
 * portable slicing-by-8 table version. Both are thread-safe after
 * umlog_crc32c_init() (idempotent; also called lazily) and need no GIL.
 */
#ifndef UMLOG_CRC32C_H
#define UMLOG_CRC32C_H

#include <stddef.h>
#include <stdint.h>

void umlog_crc32c_init(void);
int umlog_crc32c_hw_available(void);
uint32_t umlog_crc32c(uint32_t crc, const void *buf, size_t len);
uint32_t umlog_crc32c_sw(uint32_t crc, const void *buf, size_t len);

#endif /* UMLOG_CRC32C_H */

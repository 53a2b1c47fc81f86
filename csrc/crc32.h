/* CRC32 (IEEE 802.3; reflected polynomial 0xEDB88320, init and xorout
 * 0xFFFFFFFF), the checksum of Kafka's old message format (magic 0 and 1),
 * and XXH32, the hash behind an LZ4 frame's header checksum.
 *
 * `crc` is a previous *result* (0 to start), as with umlog_crc32c. Tables are
 * built by umlog_crc32_init() (idempotent; also called lazily); thread-safe
 * after it, no GIL needed.
 */
#ifndef UMLOG_CRC32_H
#define UMLOG_CRC32_H

#include <stddef.h>
#include <stdint.h>

void umlog_crc32_init(void);
uint32_t umlog_crc32(uint32_t crc, const void *buf, size_t len);
uint32_t umlog_xxh32(const void *buf, size_t len, uint32_t seed);

#endif /* UMLOG_CRC32_H */

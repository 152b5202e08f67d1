// CRC-32C (Castagnoli polynomial 0x1EDC6F41, reflected 0x82F63B78), the checksum saved
// model files carry. It detects accidental damage (torn writes, bit rot, truncation),
// not deliberate tampering. SSE4.2's crc32 instruction computes it where the CPU has
// it (checked at run time); a table-driven loop gives the same value elsewhere.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace lowbit {

// Extends `crc` (0 for a fresh checksum) by n bytes.
uint32_t crc32c_extend(uint32_t crc, const void* data, size_t n);
// The portable table-driven path alone (tests compare it with the dispatched one).
uint32_t crc32c_extend_portable(uint32_t crc, const void* data, size_t n);
// "crc32c:" followed by 8 lowercase hex digits.
std::string crc32c_label(uint32_t crc);

}  // namespace lowbit

// Decode tables (value of every code before scaling) and nibble (un)packing shared by
// every instruction set.
#pragma once
#include <cstdint>

#include "formats/format.h"

namespace lowbit {

// 256 entries for 8-bit float formats, 16 for 4-bit ones; nullptr for INT formats.
const float* decode_lut(Format f);

// Two 4-bit codes per byte, low nibble = even index. `bytes` output bytes are written
// from 2 * bytes codes (one code per input byte).
void pack_nibbles(const uint8_t* codes, uint8_t* out, int64_t bytes);
void unpack_nibbles(const uint8_t* packed, uint8_t* codes, int64_t bytes);

}  // namespace lowbit

// Portable fp16 / bf16 <-> fp32 conversions (round to nearest even), bit-identical to
// the F16C instructions and to c10::BFloat16, so that the scalar kernel path and the
// vectorised paths produce the same bits. Internal linkage (static) on purpose: these are
// compiled into translation units with different instruction-set flags.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace lowbit {

static inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
static inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

static inline float bf16_to_float(uint16_t h) { return bits_float(uint32_t(h) << 16); }

// c10::BFloat16's rounding: RNE, every NaN becomes 0x7FC0.
static inline uint16_t float_to_bf16(float f) {
  uint32_t u = float_bits(f);
  if (std::isnan(f)) return 0x7FC0;
  return uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

static inline float fp16_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t man = h & 0x3FFu;
  if (exp == 0x1F) return bits_float(sign | 0x7F800000u | (man << 13) | (man ? 0x400000u : 0));
  if (exp == 0) {
    float v = std::ldexp(float(man), -24);
    return sign ? -v : v;
  }
  return bits_float(sign | ((exp + 112u) << 23) | (man << 13));
}

// RNE with IEEE subnormals; NaN keeps its top payload bits and becomes quiet (as F16C).
static inline uint16_t float_to_fp16(float f) {
  uint32_t u = float_bits(f);
  uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return uint16_t(sign | 0x7E00u | ((a & 0x7FFFFFu) >> 13));
  if (a >= 0x477FF000u) return uint16_t(sign | 0x7C00u);  // rounds to or is infinity
  if (a >= 0x38800000u) {                                 // fp16 normal range
    uint32_t r = a + 0xFFFu + ((a >> 13) & 1u);
    return uint16_t(sign | ((r - 0x38000000u) >> 13));
  }
  float v = std::nearbyint(bits_float(a) * 16777216.0f);  // multiples of 2^-24
  return uint16_t(sign | uint16_t(v));
}

}  // namespace lowbit

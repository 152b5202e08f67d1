#include "kernels/codec_luts.h"

#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "formats/reference.h"

namespace lowbit {

namespace {
struct Luts {
  float hif8[256], e4m3[256], e2m1[16], e1m2[16];
  Luts() {
    for (int c = 0; c < 256; ++c) {
      hif8[c] = ref::hifloat8_decode(uint8_t(c));
      e4m3[c] = ref::minifloat_decode(uint8_t(c), ref::kE4M3FN);
    }
    for (int c = 0; c < 16; ++c) {
      e2m1[c] = ref::minifloat_decode(uint8_t(c), ref::kE2M1);
      e1m2[c] = ref::minifloat_decode(uint8_t(c), ref::kE1M2);
    }
  }
};
const Luts& luts() {
  static const Luts t;
  return t;
}
}  // namespace

const float* decode_lut(Format f) {
  switch (format_info(f).code) {
    case Code::kHiF8: return luts().hif8;
    case Code::kE4M3FN: return luts().e4m3;
    case Code::kE2M1: return luts().e2m1;
    case Code::kE1M2: return luts().e1m2;
    case Code::kInt: return nullptr;
  }
  return nullptr;
}

void pack_nibbles(const uint8_t* codes, uint8_t* out, int64_t bytes) {
  int64_t i = 0;
  // 8 codes (one per byte) -> 4 bytes, with shifts inside a 64-bit word.
  for (; i + 4 <= bytes; i += 4) {
    uint64_t w;
    std::memcpy(&w, codes + 2 * i, 8);
    w &= 0x0F0F0F0F0F0F0F0Full;
    w = (w | (w >> 4)) & 0x00FF00FF00FF00FFull;
    w = (w | (w >> 8)) & 0x0000FFFF0000FFFFull;
    w = (w | (w >> 16)) & 0x00000000FFFFFFFFull;
    uint32_t v = uint32_t(w);
    std::memcpy(out + i, &v, 4);
  }
  for (; i < bytes; ++i) out[i] = uint8_t((codes[2 * i] & 0xF) | ((codes[2 * i + 1] & 0xF) << 4));
}

void unpack_nibbles(const uint8_t* packed, uint8_t* codes, int64_t bytes) {
  int64_t i = 0;
#if defined(__SSE2__)
  // 16 bytes -> 32 codes: low nibbles to even positions, high nibbles to odd ones (SSE2 is
  // part of every x86-64 CPU, so this unit needs no instruction-set dispatch)
  const __m128i mask = _mm_set1_epi8(0x0F);
  for (; i + 16 <= bytes; i += 16) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(packed + i));
    const __m128i lo = _mm_and_si128(b, mask), hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + 2 * i), _mm_unpacklo_epi8(lo, hi));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + 2 * i + 16), _mm_unpackhi_epi8(lo, hi));
  }
#endif
  for (; i + 4 <= bytes; i += 4) {
    uint32_t v;
    std::memcpy(&v, packed + i, 4);
    uint64_t w = v;
    w = (w | (w << 16)) & 0x0000FFFF0000FFFFull;
    w = (w | (w << 8)) & 0x00FF00FF00FF00FFull;
    w = (w | (w << 4)) & 0x0F0F0F0F0F0F0F0Full;
    std::memcpy(codes + 2 * i, &w, 8);
  }
  for (; i < bytes; ++i) {
    codes[2 * i] = packed[i] & 0xF;
    codes[2 * i + 1] = packed[i] >> 4;
  }
}

}  // namespace lowbit

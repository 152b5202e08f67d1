// AVX2 int8 tile and GEMV for CPUs without AVX512-VNNI. Codes are widened to int16 and
// multiplied with vpmaddwd (exact: no saturation, unlike vpmaddubsw with these ranges);
// each int32 lane accumulates one pair of a quad, and the two pair sums of a row are
// added at the end. Compiled with -mavx2; called only when the CPU has it.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "deploy/int8_tile.h"

namespace lowbit {

void int8_tile_avx2(const int8_t* w, int64_t ldw, const uint8_t* xq, int64_t k4, int32_t* acc) {
  static_assert(kInt8TileN == 8 && kInt8TileM == 32, "tile shape");
  // K in blocks of kQuads quads: the block's weights, widened (each quad repeated as int16
  // over a vector: wide[q * 8 + i] = (w0 w1 w2 w3) x 4), stay in L1 (8 KiB) while all 8
  // groups of activation rows use them. (Widening all of K at once made 256 KiB for
  // K = 4096, read 8 times from L2: the tile ran at L2 speed.)
  constexpr int64_t kQuads = 32;
  alignas(32) int16_t wide[kQuads * 8 * 16];
  __m256i part[8][8];  // [group][weight row]: lane 2t + p = activation row 4g + t, pair p of the quad
  for (int g = 0; g < 8; ++g)
    for (int i = 0; i < 8; ++i) part[g][i] = _mm256_setzero_si256();
  for (int64_t q0 = 0; q0 < k4; q0 += kQuads) {
    const int64_t nq = std::min(kQuads, k4 - q0);
    for (int64_t q = 0; q < nq; ++q)
      for (int i = 0; i < 8; ++i) {
        int32_t quad;
        std::memcpy(&quad, w + i * ldw + 4 * (q0 + q), 4);
        _mm256_store_si256(reinterpret_cast<__m256i*>(wide + (q * 8 + i) * 16), _mm256_cvtepi8_epi16(_mm_set1_epi32(quad)));
      }
    for (int g = 0; g < 8; ++g) {  // activation rows 4g .. 4g + 3
      __m256i c[8];
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) c[i] = part[g][i];
      const uint8_t* xg = xq + q0 * 128 + g * 16;
      for (int64_t q = 0; q < nq; ++q) {
        const __m256i x = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xg + q * 128)));
#pragma GCC unroll 8
        for (int i = 0; i < 8; ++i)
          c[i] = _mm256_add_epi32(
              c[i], _mm256_madd_epi16(x, _mm256_load_si256(reinterpret_cast<const __m256i*>(wide + (q * 8 + i) * 16))));
      }
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) part[g][i] = c[i];
    }
  }
  for (int g = 0; g < 8; ++g)
    for (int i = 0; i < 8; ++i) {
      alignas(32) int32_t lanes[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), part[g][i]);
      for (int t = 0; t < 4; ++t) acc[i * 32 + g * 4 + t] = lanes[2 * t] + lanes[2 * t + 1];
    }
}

void int8_rows_avx2(const int8_t* w, int64_t ldw, int64_t rows, int64_t k, const uint8_t* xu, int64_t M,
                    int64_t kpad, int32_t* acc) {
  for (int64_t r = 0; r < rows; ++r) {
    const int8_t* wr = w + r * ldw;
    __m256i c[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
      const __m256i b = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + i)));
#pragma GCC unroll 4
      for (int64_t m = 0; m < M; ++m) {
        const __m256i a = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xu + m * kpad + i)));
        c[m] = _mm256_add_epi32(c[m], _mm256_madd_epi16(a, b));
      }
    }
    for (int64_t m = 0; m < M; ++m) {
      alignas(32) int32_t lanes[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), c[m]);
      int32_t s = 0;
      for (int t = 0; t < 8; ++t) s += lanes[t];
      for (int64_t j = i; j < k; ++j) s += int32_t(wr[j]) * int32_t(xu[m * kpad + j]);
      acc[r * M + m] = s;
    }
  }
}

int32_t int8_row_sum_avx2(const int8_t* w, int64_t k) {
  __m256i c = _mm256_setzero_si256();
  const __m256i ones = _mm256_set1_epi16(1);
  int64_t i = 0;
  for (; i + 16 <= k; i += 16)
    c = _mm256_add_epi32(c, _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i))), ones));
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), c);
  int32_t s = 0;
  for (int t = 0; t < 8; ++t) s += lanes[t];
  for (; i < k; ++i) s += w[i];
  return s;
}

}  // namespace lowbit

// AVX2 fused GEMV for integer weights (int4 and int8, symmetric or asymmetric, any
// granularity, fp32 weight values): codes are decoded in registers, in natural column
// order, exactly as the codec does ((q - offset) * scale), and multiplied at once. Panels
// for the GEMM keep the generic decoder. Included by linear_avx2.cpp only.
#pragma once
#include <immintrin.h>

#include "deploy/weight_decoder.h"

namespace lowbit {
namespace {
namespace deploy {

struct Avx2IntDot {
  // 8 codes (sign-extended from `bits`) as floats, (q - offset) * scale
  template <int kBits>
  static inline __m256 values(__m128i codes8, __m256 scale, __m256 offset, bool asym) {
    __m256i q = _mm256_cvtepu8_epi32(codes8);
    q = _mm256_srai_epi32(_mm256_slli_epi32(q, 32 - kBits), 32 - kBits);
    __m256 v = _mm256_cvtepi32_ps(q);
    if (asym) v = _mm256_sub_ps(v, offset);
    return _mm256_mul_ps(v, scale);
  }

  template <int kBits, int MR>
  static void dot(const PackedWeight& w, int64_t r0, int64_t r1, const float* xp, int64_t kpad, int64_t k0,
                  int64_t k1, float* out) {
    const bool tensor = w.spec.granularity == Granularity::kTensor;
    const int64_t glen = driver::Kernels<VecAvx2>::granule_len(w.spec, w.cols);
    const int64_t groups = groups_per_row(w.spec, w.cols);
    const bool asym = !w.spec.symmetric && w.scales.offset;
    const int64_t kend = k1 < w.cols ? k1 : w.cols;
    const __m128i low4 = _mm_set1_epi8(0x0F);
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* row = w.codes + r * w.row_bytes;
      const int64_t first = tensor ? 0 : r * groups, stride = tensor ? 0 : 1;
      __m256 acc[MR][2];
      for (int m = 0; m < MR; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
      float tail[MR] = {};
      for (int64_t k = k0; k < kend;) {
        const int64_t g = k / glen, gend = (g + 1) * glen < kend ? (g + 1) * glen : kend;
        const __m256 scale = _mm256_set1_ps(w.scales.scale[first + g * stride]);
        const float off = asym ? float(w.scales.offset[first + g * stride]) : 0.0f;
        const __m256 offset = _mm256_set1_ps(off);
        for (; k + 32 <= gend; k += 32) {  // 32 codes in natural order
          __m128i c0, c1;
          if (kBits == 4) {
            const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k / 2));
            const __m128i lo = _mm_and_si128(b, low4), hi = _mm_and_si128(_mm_srli_epi16(b, 4), low4);
            c0 = _mm_unpacklo_epi8(lo, hi);  // columns k .. k + 15
            c1 = _mm_unpackhi_epi8(lo, hi);  // columns k + 16 .. k + 31
          } else {
            c0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k));
            c1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k + 16));
          }
          const __m256 v[4] = {values<kBits>(c0, scale, offset, asym),
                               values<kBits>(_mm_srli_si128(c0, 8), scale, offset, asym),
                               values<kBits>(c1, scale, offset, asym),
                               values<kBits>(_mm_srli_si128(c1, 8), scale, offset, asym)};
#pragma GCC unroll 8
          for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
            for (int j = 0; j < 4; ++j)
              acc[m][j & 1] = _mm256_fmadd_ps(v[j], _mm256_loadu_ps(xp + m * kpad + k + 8 * j), acc[m][j & 1]);
        }
        for (; k < gend; ++k) {  // ragged end of the row: the codec's arithmetic, one by one
          const int code = kBits == 4 ? (row[k / 2] >> (4 * (k % 2))) & 0xF : row[k];
          const int q = kBits == 4 ? (code < 8 ? code : code - 16) : int(int8_t(uint8_t(code)));
          const float wv = (float(q) - off) * w.scales.scale[first + g * stride];
          for (int m = 0; m < MR; ++m) tail[m] += wv * xp[m * kpad + k];
        }
      }
      for (int m = 0; m < MR; ++m) {
        const __m256 s = _mm256_add_ps(acc[m][0], acc[m][1]);
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
        out[(r - r0) * MR + m] += _mm_cvtss_f32(h) + tail[m];
      }
    }
  }

  template <int kBits>
  static void dot_fn(const WeightDecoder& d, int64_t r0, int64_t r1, const float* xp, int64_t M, int64_t kpad,
                     int64_t k0, int64_t k1, float* out) {
    with_gemv_rows(M, [&](auto mr) { dot<kBits, decltype(mr)::value>(*d.w, r0, r1, xp, kpad, k0, k1, out); });
  }

  // The generic decoder, plus the fused GEMV where it applies.
  template <class Kernels>
  static WeightDecoder make(const PackedWeight& w) {
    WeightDecoder d = Kernels::generic_decoder(w);
    const bool int_format = w.spec.format == Format::kInt4 || w.spec.format == Format::kInt8;
    if (int_format && w.value_dtype == DType::kF32 && !w.row_scale1 && w.scales.scale)
      d.dot_rows = w.spec.format == Format::kInt4 ? &dot_fn<4> : &dot_fn<8>;
    return d;
  }
};

}  // namespace deploy
}  // namespace
}  // namespace lowbit

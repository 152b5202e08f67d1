// AVX2 fused GEMV for int4/int8 weights (symmetric or asymmetric) and 4-bit float codes
// (FP4 E2M1/E1M2, MXFP4), any granularity, fp32 weight values: codes are decoded in
// registers, in natural column order, exactly as the codec does ((q - offset) * scale,
// or table value * scale, the 16-entry table read with two vpermps and a blend instead
// of the codec's gather), and multiplied at once. GEMM panels of 4-bit float codes use the
// same table decode; the others keep the generic decoder. Included by linear_avx2.cpp only.
#pragma once
#include <immintrin.h>

#include "deploy/weight_decoder.h"

namespace lowbit {
namespace {
namespace deploy {

struct Avx2FusedDot {
  // 8 integer codes (sign-extended from `bits`) as floats, (q - offset) * scale
  template <int kBits>
  static inline __m256 int_values(__m128i codes8, __m256 scale, __m256 offset, bool asym) {
    __m256i q = _mm256_cvtepu8_epi32(codes8);
    q = _mm256_srai_epi32(_mm256_slli_epi32(q, 32 - kBits), 32 - kBits);
    __m256 v = _mm256_cvtepi32_ps(q);
    if (asym) v = _mm256_sub_ps(v, offset);
    return _mm256_mul_ps(v, scale);
  }
  // 8 4-bit float codes: table[code] * scale (lo: codes 0-7, hi: codes 8-15; bit 3 of the
  // code, moved to the sign bit, picks the half)
  static inline __m256 lut_values(__m128i codes8, __m256 lo, __m256 hi, __m256 scale) {
    const __m256i q = _mm256_cvtepu8_epi32(codes8);
    const __m256 v = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, q), _mm256_permutevar8x32_ps(hi, q),
                                      _mm256_castsi256_ps(_mm256_slli_epi32(q, 28)));
    return _mm256_mul_ps(v, scale);
  }

  // kLut: 4-bit float codes through the format's table; else integer codes of kBits bits
  template <int kBits, bool kLut, int MR>
  static void dot(const PackedWeight& w, int64_t r0, int64_t r1, const float* xp, int64_t kpad, int64_t k0,
                  int64_t k1, float* out) {
    const typename driver::Kernels<VecAvx2>::Call c(w.spec, w.cols);  // granules as the codec reads them
    const bool asym = !kLut && !w.spec.symmetric && w.scales.offset;
    const int64_t kend = k1 < w.cols ? k1 : w.cols;
    const __m128i low4 = _mm_set1_epi8(0x0F);
    const __m256 lut_lo = kLut ? _mm256_loadu_ps(c.lut) : _mm256_setzero_ps();
    const __m256 lut_hi = kLut ? _mm256_loadu_ps(c.lut + 8) : _mm256_setzero_ps();
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* row = w.codes + r * w.row_bytes;
      __m256 acc[MR][2];
      for (int m = 0; m < MR; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
      float tail[MR] = {};
      for (int64_t k = k0; k < kend;) {
        const int64_t g = k / c.glen, gend = (g + 1) * c.glen < kend ? (g + 1) * c.glen : kend;
        const auto p = c.load(w.scales, c.index(r, g));
        const __m256 scale = _mm256_set1_ps(p.scale);
        const float off = asym ? float(p.offset) : 0.0f;
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
          const __m128i c0h = _mm_srli_si128(c0, 8), c1h = _mm_srli_si128(c1, 8);
          const __m256 v[4] = {
              kLut ? lut_values(c0, lut_lo, lut_hi, scale) : int_values<kBits>(c0, scale, offset, asym),
              kLut ? lut_values(c0h, lut_lo, lut_hi, scale) : int_values<kBits>(c0h, scale, offset, asym),
              kLut ? lut_values(c1, lut_lo, lut_hi, scale) : int_values<kBits>(c1, scale, offset, asym),
              kLut ? lut_values(c1h, lut_lo, lut_hi, scale) : int_values<kBits>(c1h, scale, offset, asym)};
#pragma GCC unroll 8
          for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
            for (int j = 0; j < 4; ++j)
              acc[m][j & 1] = _mm256_fmadd_ps(v[j], _mm256_loadu_ps(xp + m * kpad + k + 8 * j), acc[m][j & 1]);
        }
        for (; k < gend; ++k) {  // ragged end of the row: the codec's arithmetic, one by one
          const int code = kBits == 4 ? (row[k / 2] >> (4 * (k % 2))) & 0xF : row[k];
          const int q = kBits == 4 ? (code < 8 ? code : code - 16) : int(int8_t(uint8_t(code)));
          const float wv = kLut ? c.lut[code] * p.scale : (float(q) - off) * p.scale;
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

  // GEMM panels for 4-bit float codes: the same table decode, written to the tile
  // (natural column order), then the decoders' common post-processing.
  static void decode_fp4(const WeightDecoder& d, int64_t r0, int64_t r1, int64_t k0, int64_t k1, float* out,
                         int64_t ld, uint8_t*) {
    const PackedWeight& w = *d.w;
    const typename driver::Kernels<VecAvx2>::Call c(w.spec, w.cols);
    const __m256 lo = _mm256_loadu_ps(c.lut), hi = _mm256_loadu_ps(c.lut + 8);
    const __m128i low4 = _mm_set1_epi8(0x0F);
    const int64_t kend = k1 < w.cols ? k1 : w.cols;
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* row = w.codes + r * w.row_bytes;
      float* dst = out + (r - r0) * ld - k0;  // dst[k], k in [k0, k1)
      for (int64_t k = k0; k < kend;) {  // group sizes are multiples of 32: k stays even
        const int64_t g = k / c.glen, gend = (g + 1) * c.glen < kend ? (g + 1) * c.glen : kend;
        const auto p = c.load(w.scales, c.index(r, g));
        const __m256 scale = _mm256_set1_ps(p.scale);
        for (; k + 32 <= gend; k += 32) {
          const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k / 2));
          const __m128i lo4 = _mm_and_si128(b, low4), hi4 = _mm_and_si128(_mm_srli_epi16(b, 4), low4);
          const __m128i c0 = _mm_unpacklo_epi8(lo4, hi4), c1 = _mm_unpackhi_epi8(lo4, hi4);
          _mm256_storeu_ps(dst + k, lut_values(c0, lo, hi, scale));
          _mm256_storeu_ps(dst + k + 8, lut_values(_mm_srli_si128(c0, 8), lo, hi, scale));
          _mm256_storeu_ps(dst + k + 16, lut_values(c1, lo, hi, scale));
          _mm256_storeu_ps(dst + k + 24, lut_values(_mm_srli_si128(c1, 8), lo, hi, scale));
        }
        for (; k < gend; ++k) dst[k] = c.lut[(row[k / 2] >> (4 * (k % 2))) & 0xF] * p.scale;
      }
      for (int64_t k = kend > k0 ? kend : k0; k < k1; ++k) dst[k] = 0.0f;
      finish_row(w, r, dst + k0, kend > k0 ? kend - k0 : 0);
    }
  }

  template <int kBits, bool kLut>
  static void dot_fn(const WeightDecoder& d, int64_t r0, int64_t r1, const float* xp, int64_t M, int64_t kpad,
                     int64_t k0, int64_t k1, float* out) {
    with_gemv_rows(M, [&](auto mr) { dot<kBits, kLut, decltype(mr)::value>(*d.w, r0, r1, xp, kpad, k0, k1, out); });
  }

  // The generic decoder (4-bit float codes: the table decoder), plus the fused GEMV where
  // it applies.
  template <class Kernels>
  static WeightDecoder make(const PackedWeight& w) {
    WeightDecoder d = Kernels::generic_decoder(w);
    const Format f = w.spec.format;
    if (f == Format::kFloat4E2M1 || f == Format::kFloat4E1M2 || f == Format::kMxFp4E2M1) d.decode = &decode_fp4;
    if (w.value_dtype != DType::kF32 || w.row_scale1) return d;
    switch (f) {
      case Format::kInt4: d.dot_rows = &dot_fn<4, false>; break;
      case Format::kInt8: d.dot_rows = &dot_fn<8, false>; break;
      case Format::kFloat4E2M1:
      case Format::kFloat4E1M2:
      case Format::kMxFp4E2M1: d.dot_rows = &dot_fn<4, true>; break;
      default: break;
    }
    return d;
  }
};

}  // namespace deploy
}  // namespace
}  // namespace lowbit

// 16-lane AVX-512 (F, BW, VL, DQ) implementation of the vector interface (see
// vec_scalar.h). Only included by translation units compiled with AVX-512 flags.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace lowbit {

struct VecAvx512 {
  static constexpr int kLanes = 16;
  static constexpr const char* kName = "avx512";
  using F = __m512;
  using I = __m512i;
  using M = __mmask16;

  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  // the first n (< kLanes) elements; the other lanes read as 0 / are not written
  static F load_first(const float* p, int n) { return _mm512_maskz_loadu_ps(__mmask16((1u << n) - 1), p); }
  static void store_first(float* p, F v, int n) { _mm512_mask_storeu_ps(p, __mmask16((1u << n) - 1), v); }
  static F load_f16(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static void store_f16(uint16_t* p, F v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
  static F load_bf16(const uint16_t* p) {
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
  static void store_bf16(uint16_t* p, F v) {
    __m512i u = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
  }
  static I load_u8(const uint8_t* p) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static void store_u8(uint8_t* p, I v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtepi32_epi8(v));
  }

  static F set1(float v) { return _mm512_set1_ps(v); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }  // a * b + c
  static F div(F a, F b) { return _mm512_div_ps(a, b); }
  static F min(F a, F b) { return _mm512_min_ps(a, b); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }
  static F abs(F a) { return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), _mm512_set1_epi32(0x7FFFFFFF))); }
  static F rint(F a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }

  static M lt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static M le(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
  static M ge(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
  static M eq(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  static M isnan(F a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
  static M mor(M a, M b) { return M(a | b); }
  static M mand(M a, M b) { return M(a & b); }
  static F select(M m, F a, F b) { return _mm512_mask_blend_ps(m, b, a); }
  static I selecti(M m, I a, I b) { return _mm512_mask_blend_epi32(m, b, a); }

  static I asi(F a) { return _mm512_castps_si512(a); }
  static F asf(I a) { return _mm512_castsi512_ps(a); }
  static F cvtif(I a) { return _mm512_cvtepi32_ps(a); }
  static I cvtfi(F a) { return _mm512_cvttps_epi32(a); }

  static I iset1(int32_t v) { return _mm512_set1_epi32(v); }
  static I iadd(I a, I b) { return _mm512_add_epi32(a, b); }
  static I isub(I a, I b) { return _mm512_sub_epi32(a, b); }
  static I iand(I a, I b) { return _mm512_and_si512(a, b); }
  static I ior(I a, I b) { return _mm512_or_si512(a, b); }
  template <int n> static I srli(I a) { return _mm512_srli_epi32(a, n); }
  template <int n> static I slli(I a) { return _mm512_slli_epi32(a, n); }
  template <int n> static I srai(I a) { return _mm512_srai_epi32(a, n); }
  static I sllv(I a, I n) { return _mm512_sllv_epi32(a, n); }
  static I srlv(I a, I n) { return _mm512_srlv_epi32(a, n); }
  static M icmpeq(I a, I b) { return _mm512_cmpeq_epi32_mask(a, b); }
  static M icmpgt(I a, I b) { return _mm512_cmpgt_epi32_mask(a, b); }
  static I imax(I a, I b) { return _mm512_max_epi32(a, b); }

  static F gather(const float* table, I idx) { return _mm512_i32gather_ps(idx, table, 4); }
  // v[0..15] -> lane j holds the max (min) over the lanes of v[j]. Four levels of
  // two-source permutes, each halving the partials per vector; lane order is kept.
  template <class Op>
  static F reduce_batch(const F* v, Op op) {
    // Level h (8, 4, 2, 1): lane i takes source lane (i / h) * 2h + i % h of the 32-lane
    // pair [a, b] (lo) and that lane + h (hi).
    alignas(64) static const int32_t kIdx[4][2][16] = {
        {{0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
         {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31}},
        {{0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27},
         {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31}},
        {{0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29},
         {2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31}},
        {{0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30},
         {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31}}};
    F cur[8];
    const __m512i lo0 = _mm512_load_si512(kIdx[0][0]), hi0 = _mm512_load_si512(kIdx[0][1]);
    for (int i = 0; i < 8; ++i)
      cur[i] = op(_mm512_permutex2var_ps(v[2 * i], lo0, v[2 * i + 1]), _mm512_permutex2var_ps(v[2 * i], hi0, v[2 * i + 1]));
    int n = 8;
    for (int level = 1; level < 4; ++level) {
      const __m512i lo = _mm512_load_si512(kIdx[level][0]), hi = _mm512_load_si512(kIdx[level][1]);
      for (int i = 0; i < n / 2; ++i)
        cur[i] = op(_mm512_permutex2var_ps(cur[2 * i], lo, cur[2 * i + 1]),
                    _mm512_permutex2var_ps(cur[2 * i], hi, cur[2 * i + 1]));
      n /= 2;
    }
    return cur[0];
  }
  static F reduce_batch_max(const F* v) { return reduce_batch(v, [](F a, F b) { return _mm512_max_ps(a, b); }); }
  static F reduce_batch_min(const F* v) { return reduce_batch(v, [](F a, F b) { return _mm512_min_ps(a, b); }); }
  static float reduce_add(F v) { return _mm512_reduce_add_ps(v); }
  static float reduce_max(F v) {
    __m256 m = _mm256_max_ps(_mm512_castps512_ps256(v),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    return _mm_cvtss_f32(h);
  }
  static float reduce_min(F v) {
    __m256 m = _mm256_min_ps(_mm512_castps512_ps256(v),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 h = _mm_min_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_min_ps(h, _mm_movehl_ps(h, h));
    h = _mm_min_ss(h, _mm_shuffle_ps(h, h, 1));
    return _mm_cvtss_f32(h);
  }
};

}  // namespace lowbit

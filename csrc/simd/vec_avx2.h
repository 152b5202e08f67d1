// 8-lane AVX2 (+FMA, F16C) implementation of the vector interface (see vec_scalar.h).
// Only included by translation units compiled with -mavx2 -mf16c.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace lowbit {

struct VecAvx2 {
  static constexpr int kLanes = 8;
  static constexpr const char* kName = "avx2";
  using F = __m256;
  using I = __m256i;
  using M = __m256;  // all-ones / all-zeros lanes

  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  // the first n (< kLanes) elements; the other lanes read as 0 / are not written
  static __m256i first_mask(int n) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
  static F load_first(const float* p, int n) { return _mm256_maskload_ps(p, first_mask(n)); }
  static void store_first(float* p, F v, int n) { _mm256_maskstore_ps(p, first_mask(n), v); }
  static F load_f16(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static void store_f16(uint16_t* p, F v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
  static F load_bf16(const uint16_t* p) {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  static void store_bf16(uint16_t* p, F v) {
    __m256i u = _mm256_castps_si256(v);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
    r = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(r), _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC0)),
                                             _mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
    __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xD8);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
  }
  static I load_u8(const uint8_t* p) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  }
  static void store_u8(uint8_t* p, I v) {
    __m256i b = _mm256_and_si256(v, _mm256_set1_epi32(0xFF));
    __m256i w = _mm256_packus_epi32(b, b);  // per 128-bit lane: a0..a3 a0..a3
    __m256i c = _mm256_packus_epi16(w, w);
    int32_t lo = _mm_cvtsi128_si32(_mm256_castsi256_si128(c));
    int32_t hi = _mm_cvtsi128_si32(_mm256_extracti128_si256(c, 1));
    std::memcpy(p, &lo, 4);
    std::memcpy(p + 4, &hi, 4);
  }

  static F set1(float v) { return _mm256_set1_ps(v); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }  // a * b + c
  static F div(F a, F b) { return _mm256_div_ps(a, b); }
  static F min(F a, F b) { return _mm256_min_ps(a, b); }
  static F max(F a, F b) { return _mm256_max_ps(a, b); }
  static F abs(F a) { return _mm256_and_ps(a, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF))); }
  static F rint(F a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }

  static M lt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static M le(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_LE_OQ); }
  static M ge(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
  static M eq(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
  static M isnan(F a) { return _mm256_cmp_ps(a, a, _CMP_UNORD_Q); }
  static M mor(M a, M b) { return _mm256_or_ps(a, b); }
  static M mand(M a, M b) { return _mm256_and_ps(a, b); }
  static F select(M m, F a, F b) { return _mm256_blendv_ps(b, a, m); }
  static I selecti(M m, I a, I b) {
    return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(b), _mm256_castsi256_ps(a), m));
  }

  static I asi(F a) { return _mm256_castps_si256(a); }
  static F asf(I a) { return _mm256_castsi256_ps(a); }
  static F cvtif(I a) { return _mm256_cvtepi32_ps(a); }
  static I cvtfi(F a) { return _mm256_cvttps_epi32(a); }

  static I iset1(int32_t v) { return _mm256_set1_epi32(v); }
  static I iadd(I a, I b) { return _mm256_add_epi32(a, b); }
  static I isub(I a, I b) { return _mm256_sub_epi32(a, b); }
  static I iand(I a, I b) { return _mm256_and_si256(a, b); }
  static I ior(I a, I b) { return _mm256_or_si256(a, b); }
  template <int n> static I srli(I a) { return _mm256_srli_epi32(a, n); }
  template <int n> static I slli(I a) { return _mm256_slli_epi32(a, n); }
  template <int n> static I srai(I a) { return _mm256_srai_epi32(a, n); }
  static I sllv(I a, I n) { return _mm256_sllv_epi32(a, n); }
  static I srlv(I a, I n) { return _mm256_srlv_epi32(a, n); }
  static M icmpeq(I a, I b) { return _mm256_castsi256_ps(_mm256_cmpeq_epi32(a, b)); }
  static M icmpgt(I a, I b) { return _mm256_castsi256_ps(_mm256_cmpgt_epi32(a, b)); }
  static I imax(I a, I b) { return _mm256_max_epi32(a, b); }

  static F gather(const float* table, I idx) { return _mm256_i32gather_ps(table, idx, 4); }
  // v[0..7] -> lane j holds the max (min) over the lanes of v[j]: 128-bit halves, then
  // in-lane shuffles, then one permute to restore the lane order.
  template <class Op>
  static F reduce_batch(const F* v, Op op) {
    F w[4], x[2];
    for (int i = 0; i < 4; ++i)
      w[i] = op(_mm256_permute2f128_ps(v[2 * i], v[2 * i + 1], 0x20), _mm256_permute2f128_ps(v[2 * i], v[2 * i + 1], 0x31));
    for (int i = 0; i < 2; ++i)
      x[i] = op(_mm256_shuffle_ps(w[2 * i], w[2 * i + 1], 0x44), _mm256_shuffle_ps(w[2 * i], w[2 * i + 1], 0xEE));
    F y = op(_mm256_shuffle_ps(x[0], x[1], 0x88), _mm256_shuffle_ps(x[0], x[1], 0xDD));
    return _mm256_permutevar8x32_ps(y, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  }
  static F reduce_batch_max(const F* v) { return reduce_batch(v, [](F a, F b) { return _mm256_max_ps(a, b); }); }
  static F reduce_batch_min(const F* v) { return reduce_batch(v, [](F a, F b) { return _mm256_min_ps(a, b); }); }
  static float reduce_add(F v) {
    __m128 m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    m = _mm_add_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
  }
  static float reduce_max(F v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
  }
  static float reduce_min(F v) {
    __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    m = _mm_min_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
  }
};

}  // namespace lowbit

// AVX512-VNNI int8 tile: vpdpbusd multiplies 4 unsigned activation bytes with 4 signed
// weight bytes and adds the sum to an int32 lane. 8 weight rows (broadcast) x 2 vectors
// of 16 activation rows = 16 accumulators. Compiled with -mavx512vnni; called only when
// the CPU has it.
#include <immintrin.h>

#include <cstring>

#include "deploy/int8_tile.h"

namespace lowbit {

void int8_tile_vnni(const int8_t* w, int64_t ldw, const uint8_t* xq, int64_t k4, int32_t* acc) {
  static_assert(kInt8TileN == 8 && kInt8TileM == 32, "tile shape");
  __m512i c[8][2];  // fully unrolled loops keep the accumulators in registers
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) c[i][0] = c[i][1] = _mm512_setzero_si512();
  for (int64_t q = 0; q < k4; ++q) {
    const __m512i a0 = _mm512_loadu_si512(xq + q * 128);
    const __m512i a1 = _mm512_loadu_si512(xq + q * 128 + 64);
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
      int32_t quad;
      std::memcpy(&quad, w + i * ldw + 4 * q, 4);
      const __m512i b = _mm512_set1_epi32(quad);
      c[i][0] = _mm512_dpbusd_epi32(c[i][0], a0, b);
      c[i][1] = _mm512_dpbusd_epi32(c[i][1], a1, b);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    _mm512_storeu_si512(acc + i * 32, c[i][0]);
    _mm512_storeu_si512(acc + i * 32 + 16, c[i][1]);
  }
}

}  // namespace lowbit

namespace lowbit {

int32_t int8_row_sum_vnni(const int8_t* w, int64_t k) {
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i c = _mm512_setzero_si512();
  for (int64_t i = 0; i < k; i += 64) {
    const int64_t left = k - i;
    const __m512i b = left >= 64 ? _mm512_loadu_si512(w + i)
                                 : _mm512_maskz_loadu_epi8(__mmask64((~0ull) >> (64 - left)), w + i);
    c = _mm512_dpbusd_epi32(c, ones, b);
  }
  return _mm512_reduce_add_epi32(c);
}

void int8_rows_vnni(const int8_t* w, int64_t ldw, int64_t rows, int64_t k, const uint8_t* xu, int64_t M,
                    int64_t kpad, int32_t* acc) {
  for (int64_t r = 0; r < rows; ++r) {
    const int8_t* wr = w + r * ldw;
    __m512i c[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
    for (int64_t i = 0; i < k; i += 64) {
      const int64_t left = k - i;
      _mm_prefetch(reinterpret_cast<const char*>(wr + i) + 2048, _MM_HINT_T0);  // streamed weights: L1
      _mm_prefetch(reinterpret_cast<const char*>(wr + i) + 8192, _MM_HINT_T1);  // and further ahead, L2
      const __m512i b = left >= 64 ? _mm512_loadu_si512(wr + i)
                                   : _mm512_maskz_loadu_epi8(__mmask64((~0ull) >> (64 - left)), wr + i);
#pragma GCC unroll 4
      for (int64_t m = 0; m < M; ++m) c[m] = _mm512_dpbusd_epi32(c[m], _mm512_loadu_si512(xu + m * kpad + i), b);
    }
    for (int64_t m = 0; m < M; ++m) acc[r * M + m] = _mm512_reduce_add_epi32(c[m]);
  }
}

}  // namespace lowbit

namespace lowbit {
namespace {

// 16 x 16 floats transposed in registers: r[c] ends up holding column c.
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 4; ++j) {
      t[8 * i + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + j + 4], 0x88);
      t[8 * i + j + 4] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + j + 4], 0xDD);
    }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xDD);
  }
}

template <int TP, int MV>
void conv_tile(const Int8ConvTile& t) {
  __m512i acc[TP][MV];
#pragma GCC unroll 32
  for (int p = 0; p < TP; ++p)
#pragma GCC unroll 32
    for (int v = 0; v < MV; ++v) acc[p][v] = _mm512_setzero_si512();
  for (int64_t q = 0; q < t.nq; ++q) {
    const int64_t o = t.off[q];
    __m512i wv[MV];
#pragma GCC unroll 32
    for (int v = 0; v < MV; ++v) wv[v] = _mm512_loadu_si512(t.wt + (q * MV + v) * 64);
#pragma GCC unroll 32
    for (int p = 0; p < TP; ++p) {
      int32_t quad;
      std::memcpy(&quad, t.px[p] + o, 4);
      const __m512i b = _mm512_set1_epi32(quad);
#pragma GCC unroll 32
      for (int v = 0; v < MV; ++v) acc[p][v] = _mm512_dpbusd_epi32(acc[p][v], b, wv[v]);
    }
  }
  // (acc - corr) * scale + bias, as int8_conv.cpp's portable epilogue computes it
#pragma GCC unroll 32
  for (int v = 0; v < MV; ++v) {
    const __m512i corr = _mm512_loadu_si512(t.corr + 16 * v);
    const __m512 s = _mm512_loadu_ps(t.scale + 16 * v), b = _mm512_loadu_ps(t.bias + 16 * v);
    __m512 r[16];
#pragma GCC unroll 32
    for (int p = 0; p < 16; ++p)
      r[p] = p < TP ? _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[p][v], corr)), s), b)
                    : _mm512_setzero_ps();
    if (!t.channel_major) {
#pragma GCC unroll 32
      for (int p = 0; p < TP; ++p) _mm512_storeu_ps(t.out + p * t.ldo + 16 * v, r[p]);
      continue;
    }
    transpose16(r);  // r[c]: channel 16 v + c of the TP pixels
#pragma GCC unroll 32
    for (int c = 0; c < 16; ++c) _mm512_mask_storeu_ps(t.out + (16 * v + c) * t.ldo, __mmask16((1u << TP) - 1), r[c]);
  }
}

}  // namespace

void int8_conv_tile_vnni(const Int8ConvTile& t) {
  if (t.mv == 4) return conv_tile<6, 4>(t);
  if (t.mv == 2) return conv_tile<12, 2>(t);
  return conv_tile<12, 1>(t);
}

}  // namespace lowbit

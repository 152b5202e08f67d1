// AVX2 kernel of the 8-bit compute mode (dynamic_int8.h has the arithmetic it follows).
// INT4 weights are taken as q + 8 (0..15, unsigned) so that vpmaddubsw multiplies them
// by the signed activation codes directly; a group's sums are kept in int16 for up to 8
// blocks (|pair| <= 15 * 128 * 2) and the 8 * sum(x) correction comes precomputed. INT8
// weights use vpmaddubsw on |w| and x with w's sign (|x| <= 127: the driver sends rows
// holding -128 to the scalar reference). Compiled with -mavx2 -ffp-contract=off (no
// contraction beyond the one fused multiply-add the arithmetic names); called only when
// the CPU has AVX2.
#include <immintrin.h>

#include <algorithm>

#include "deploy/dynamic_int8.h"
#include "simd/vec_avx2.h"

namespace lowbit {
namespace {

// 32 INT4 codes (16 packed bytes) as q + 8 in kernel order: even columns, then odd ones.
inline __m256i decode4(const uint8_t* p) {
  const __m128i b = _mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), _mm_set1_epi8(char(0x88)));
  const __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(b), _mm_srli_epi16(b, 4), 1);
  return _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
}

inline __m256i load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// Weight row i against MR activation rows. kBpg: blocks per group known at compile time
// (its groups of whole blocks run unrolled, without the int32 partial sums), or 0. One
// weight row at a time: tiles of several rows measured slower.
template <int kBits, int MR, int kBpg>
void row_tile(const DynamicRows& a, int64_t i, int64_t m0) {
  static_assert(kBpg <= 8, "int16 sums hold 8 blocks");
  const int64_t blocks = a.whole + (a.tails != nullptr);
  const int64_t groups = (blocks + a.bpg - 1) / a.bpg;
  const int64_t unrolled = kBpg ? a.whole / kBpg : 0;  // groups of whole blocks
  const __m256i ones = _mm256_set1_epi16(1);
  const uint8_t* row = a.codes + i * a.row_bytes;
  const int8_t* xr[MR];
  for (int m = 0; m < MR; ++m) xr[m] = a.x + (m0 + m) * a.ldx;
  __m256 f[MR];
  for (int m = 0; m < MR; ++m) f[m] = _mm256_setzero_ps();
  // h: INT4 pair sums in int16 (at most 8 blocks); acc: int32 sums
  __m256i acc[MR], h[MR];
  // One block's products; `first` starts the sums instead of adding to them.
  auto block = [&](int64_t b, bool whole, bool first) __attribute__((always_inline)) {
    __m256i wv, aw = _mm256_setzero_si256();
    if (whole || b < a.whole) wv = kBits == 4 ? decode4(row + 16 * b) : load32(row + 32 * b);
    else wv = load32(a.tails + i * 32);
    if (kBits == 8) aw = _mm256_sign_epi8(wv, wv);
#pragma GCC unroll 4
    for (int m = 0; m < MR; ++m) {
      const __m256i xv = load32(xr[m] + 32 * b);
      if (kBits == 4) {
        const __m256i p = _mm256_maddubs_epi16(wv, xv);
        h[m] = first ? p : _mm256_add_epi16(h[m], p);
      } else {
        const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv, wv)), ones);
        acc[m] = first ? p : _mm256_add_epi32(acc[m], p);
      }
    }
  };
  // The group's lane sums S into f: f = fma(float(S), s, f)
  auto finish = [&](int64_t g, bool use_acc) __attribute__((always_inline)) {
    const __m256 s = _mm256_set1_ps(a.scale[i * a.scale_ld + (a.scale_ld ? g : 0)]);
    for (int m = 0; m < MR; ++m) {
      __m256i sum;
      if (kBits == 4) {
        const __m256i hs = _mm256_madd_epi16(h[m], ones);
        sum = _mm256_sub_epi32(use_acc ? _mm256_add_epi32(acc[m], hs) : hs,
                               load32(a.corr + ((m0 + m) * groups + g) * 8));
      } else {
        sum = acc[m];
      }
      f[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), s, f[m]);
    }
  };
  for (int64_t g = 0; g < groups; ++g) {
    if (g < unrolled) {
      block(g * kBpg, true, true);
#pragma GCC unroll 8
      for (int t = 1; t < (kBpg ? kBpg : 1); ++t) block(g * kBpg + t, true, false);
      finish(g, false);
      continue;
    }
    const int64_t b0 = g * a.bpg, b1 = std::min(blocks, b0 + a.bpg);
    for (int m = 0; m < MR; ++m) acc[m] = _mm256_setzero_si256();
    int held = 0;  // INT4: blocks summed in h since it was last widened into acc
    for (int64_t b = b0; b < b1; ++b) {
      block(b, false, kBits == 4 && held == 0);
      if (kBits == 4 && ++held == 8) {
        for (int m = 0; m < MR; ++m) acc[m] = _mm256_add_epi32(acc[m], _mm256_madd_epi16(h[m], ones));
        held = 0;
      }
    }
    if (kBits == 4 && held == 0)
      for (int m = 0; m < MR; ++m) h[m] = _mm256_setzero_si256();
    finish(g, true);
  }
  // the lanes' fixed reduction order (dynamic_int8.h)
  for (int m = 0; m < MR; ++m) a.out[i * a.M + m0 + m] = VecAvx2::reduce_add(f[m]);
}

template <int kBits, int MR, int kBpg>
void rows_for(const DynamicRows& a, int64_t m0) {
  for (int64_t i = 0; i < a.rows; ++i) row_tile<kBits, MR, kBpg>(a, i, m0);
}

template <int kBits, int kBpg>
void rows_bpg(const DynamicRows& a) {
  int64_t m = 0;
  for (; m + 4 <= a.M; m += 4) rows_for<kBits, 4, kBpg>(a, m);
  switch (a.M - m) {
    case 3: rows_for<kBits, 3, kBpg>(a, m); break;
    case 2: rows_for<kBits, 2, kBpg>(a, m); break;
    case 1: rows_for<kBits, 1, kBpg>(a, m); break;
    default: break;
  }
}

template <int kBits>
void rows_bits(const DynamicRows& a) {
  switch (a.bpg) {  // the usual groups of 32 and 128 columns unrolled
    case 1: rows_bpg<kBits, 1>(a); break;
    case 4: rows_bpg<kBits, 4>(a); break;
    default: rows_bpg<kBits, 0>(a); break;
  }
}

}  // namespace

void dynamic_rows_avx2(const DynamicRows& a) {
  if (a.bits == 4) rows_bits<4>(a);
  else rows_bits<8>(a);
}

}  // namespace lowbit

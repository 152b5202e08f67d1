// AVX2 decoding of packed weights in registers, for the fused GEMV and for GEMM panels:
//  - int4/int8 codes (symmetric or asymmetric): (q - offset) * scale;
//  - 4-bit float codes (FP4 E2M1/E1M2, MXFP4): table[code] * scale, the 16-entry table
//    held in two registers (two vpermps and a blend instead of the codec's gather);
//  - E4M3 codes (FP8, MXFP8): the code's bits moved into an fp16 word (sign to bit 15,
//    exponent and mantissa 7 places up) widened by vcvtph2ps, which is the E4M3 value
//    times 2^-8 exactly, subnormals included; times 2^8 (exact), then times the scale;
//  - HiFloat8 codes (fused GEMV only): the codec's 256-entry table read by vpgatherdd,
//    times the scale.
// Every result equals the codec's table[code] * scale bit for bit, for every code but the
// NaN ones, which packed weights never hold (as for the AVX-512 decoders: quantization
// saturates, and lowbit.load rejects a file with them). The fused GEMV needs
// fp32 weight values (no FP8 x FP4 row scale); GEMM panels of the float formats go
// through finish_row like every decoder. Included by linear_avx2.cpp only.
#pragma once
#include <immintrin.h>

#include <type_traits>

#include "deploy/weight_decoder.h"
#include "simd/vec_avx2.h"

namespace lowbit {
namespace {
namespace deploy {

struct Avx2FusedDot {
  enum class Codes { kInt4, kInt8, kTable4, kE4M3, kGather8 };
  static constexpr bool four_bit(Codes c) { return c == Codes::kInt4 || c == Codes::kTable4; }

  // What stays fixed over a call: the codec's granule reader and the decode constants.
  struct Ctx {
    typename driver::Kernels<VecAvx2>::Call call;
    bool asym;
    __m256 lut_lo, lut_hi;
    Ctx(const PackedWeight& w, Codes kind)
        : call(w.spec, w.cols), asym(!w.spec.symmetric && w.scales.offset != nullptr &&
                                     (kind == Codes::kInt4 || kind == Codes::kInt8)) {
      const bool table = kind == Codes::kTable4;
      lut_lo = table ? _mm256_loadu_ps(call.lut) : _mm256_setzero_ps();
      lut_hi = table ? _mm256_loadu_ps(call.lut + 8) : _mm256_setzero_ps();
    }
  };

  // The 8 codes in the low 8 bytes of `codes8` (one code per byte) as weight values.
  template <Codes kKind>
  static inline __m256 values(const Ctx& c, __m128i codes8, __m256 scale, __m256 offset) {
    if constexpr (kKind == Codes::kInt4 || kKind == Codes::kInt8) {
      constexpr int bits = kKind == Codes::kInt4 ? 4 : 8;
      __m256i q = _mm256_cvtepu8_epi32(codes8);
      q = _mm256_srai_epi32(_mm256_slli_epi32(q, 32 - bits), 32 - bits);
      __m256 v = _mm256_cvtepi32_ps(q);
      if (c.asym) v = _mm256_sub_ps(v, offset);
      return _mm256_mul_ps(v, scale);
    } else if constexpr (kKind == Codes::kTable4) {  // bit 3 of the code, as the sign bit, picks the half
      const __m256i q = _mm256_cvtepu8_epi32(codes8);
      const __m256 v = _mm256_blendv_ps(_mm256_permutevar8x32_ps(c.lut_lo, q), _mm256_permutevar8x32_ps(c.lut_hi, q),
                                        _mm256_castsi256_ps(_mm256_slli_epi32(q, 28)));
      return _mm256_mul_ps(v, scale);
    } else if constexpr (kKind == Codes::kGather8) {  // the codec's 256-entry table, 8 loads at once
      return _mm256_mul_ps(_mm256_i32gather_ps(c.call.lut, _mm256_cvtepu8_epi32(codes8), 4), scale);
    } else {
      const __m128i q = _mm_cvtepu8_epi16(codes8);
      const __m128i h = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(q, _mm_set1_epi16(0x80)), 8),
                                     _mm_slli_epi16(_mm_and_si128(q, _mm_set1_epi16(0x7F)), 7));
      return _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtph_ps(h), _mm256_set1_ps(256.0f)), scale);
    }
  }

  // The codec's value of one code (ragged row ends).
  template <Codes kKind>
  static inline float value(const Ctx& c, const uint8_t* row, int64_t k, float scale, float offset) {
    const int code = four_bit(kKind) ? (row[k / 2] >> (4 * (k % 2))) & 0xF : row[k];
    if constexpr (kKind == Codes::kTable4 || kKind == Codes::kE4M3 || kKind == Codes::kGather8)
      return c.call.lut[code] * scale;
    const int q = kKind == Codes::kInt4 ? (code < 8 ? code : code - 16) : int(int8_t(uint8_t(code)));
    return (float(q) - offset) * scale;
  }

  // The codes of columns k .. k + 31 (k even), one per byte: c0 holds columns k .. k + 15,
  // c1 the rest. kFlip: 4-bit codes come xor-ed with 8 (two's complement nibble -> q + 8).
  template <bool kFourBit, bool kFlip>
  static inline void codes32(const uint8_t* row, int64_t k, __m128i& c0, __m128i& c1) {
    if constexpr (kFourBit) {
      const __m128i low4 = _mm_set1_epi8(0x0F);
      __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k / 2));
      if constexpr (kFlip) b = _mm_xor_si128(b, _mm_set1_epi8(char(0x88)));
      const __m128i lo = _mm_and_si128(b, low4), hi = _mm_and_si128(_mm_srli_epi16(b, 4), low4);
      c0 = _mm_unpacklo_epi8(lo, hi);
      c1 = _mm_unpackhi_epi8(lo, hi);
    } else {
      c0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k));
      c1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k + 16));
    }
  }

  // Calls fn(k, v[4]) for the 32 columns k .. k + 31 of every whole chunk of 32 in [k, gend),
  // v[j] holding columns k + 8j .. k + 8j + 7; returns where it stopped.
  template <Codes kKind, class Fn>
  static inline int64_t chunks(const Ctx& c, const uint8_t* row, int64_t k, int64_t gend, __m256 scale,
                               __m256 offset, Fn&& fn) {
    for (; k + 32 <= gend; k += 32) {  // group sizes are multiples of 32: k stays even
      __m128i c0, c1;
      codes32<four_bit(kKind), false>(row, k, c0, c1);
      const __m256 v[4] = {values<kKind>(c, c0, scale, offset), values<kKind>(c, _mm_srli_si128(c0, 8), scale, offset),
                           values<kKind>(c, c1, scale, offset), values<kKind>(c, _mm_srli_si128(c1, 8), scale, offset)};
      fn(k, v);
    }
    return k;
  }

  // Walks the columns [k0, kend) of row r granule by granule: chunk(k, v[4]) for every whole
  // chunk of 32 columns, one(k, value) for the columns of a ragged row end.
  template <Codes kKind, class Chunk, class One>
  static inline void row_values(const Ctx& c, const PackedWeight& w, int64_t r, int64_t k0, int64_t kend,
                                Chunk&& chunk, One&& one) {
    const uint8_t* row = w.codes + r * w.row_bytes;
    for (int64_t k = k0; k < kend;) {
      const int64_t g = k / c.call.glen, gend = (g + 1) * c.call.glen < kend ? (g + 1) * c.call.glen : kend;
      const auto p = c.call.load(w.scales, c.call.index(r, g));
      const float off = c.asym ? float(p.offset) : 0.0f;
      k = chunks<kKind>(c, row, k, gend, _mm256_set1_ps(p.scale), _mm256_set1_ps(off), chunk);
      for (; k < gend; ++k) one(k, value<kKind>(c, row, k, p.scale, off));
    }
  }

  template <Codes kKind, int MR>
  static void dot(const PackedWeight& w, int64_t r0, int64_t r1, const float* xp, int64_t kpad, int64_t k0,
                  int64_t k1, float* out) {
    const Ctx c(w, kKind);
    const int64_t kend = k1 < w.cols ? k1 : w.cols;
    for (int64_t r = r0; r < r1; ++r) {
      __m256 acc[MR][2];
      for (int m = 0; m < MR; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
      float tail[MR] = {};
      row_values<kKind>(
          c, w, r, k0, kend,
          [&](int64_t k, const __m256* v) {
#pragma GCC unroll 8
            for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
              for (int j = 0; j < 4; ++j)
                acc[m][j & 1] = _mm256_fmadd_ps(v[j], _mm256_loadu_ps(xp + m * kpad + k + 8 * j), acc[m][j & 1]);
          },
          [&](int64_t k, float wv) {
            for (int m = 0; m < MR; ++m) tail[m] += wv * xp[m * kpad + k];
          });
      for (int m = 0; m < MR; ++m)
        out[(r - r0) * MR + m] += VecAvx2::reduce_add(_mm256_add_ps(acc[m][0], acc[m][1])) + tail[m];
    }
  }

  // Symmetric int4 codes of whole chunks of 32 columns as float code values (no scale):
  // (nibble ^ 8) | 2^23's bits - (2^23 + 8). (Symmetric int8 codes take byte_rows.)
  template <Codes kKind, class Fn>
  static inline int64_t code_chunks(const uint8_t* row, int64_t k, int64_t gend, Fn&& fn) {
    static_assert(kKind == Codes::kInt4, "4-bit integer codes only");
    const __m256i magic = _mm256_set1_epi32(0x4B000000);
    const __m256 bias = _mm256_set1_ps(8388616.0f);  // 2^23 + 8
    auto value8 = [&](__m128i c8) {  // the low 8 codes of c8 as floats
      return _mm256_sub_ps(_mm256_castsi256_ps(_mm256_or_si256(_mm256_cvtepu8_epi32(c8), magic)), bias);
    };
    for (; k + 32 <= gend; k += 32) {
      __m128i c0, c1;
      codes32<kKind == Codes::kInt4, true>(row, k, c0, c1);
      const __m256 v[4] = {value8(c0), value8(_mm_srli_si128(c0, 8)), value8(c1), value8(_mm_srli_si128(c1, 8))};
      fn(k, v);
    }
    return k;
  }

  // The fused GEMV of symmetric int4 codes in granules the lane kernel below does not take
  // (160, 224, ... columns): each granule's code-times-activation
  // sums first, then one multiply-add by its scale (two fewer operations per 8 weights
  // than scaling every weight). Activations of 2^64 or more could overflow those sums
  // where scaled weights do not: such calls take dot_fn (dot_rows_huge_x).
  template <Codes kKind, int MR>
  static void dot_sym(const PackedWeight& w, int64_t r0, int64_t r1, const float* xp, int64_t kpad, int64_t k0,
                      int64_t k1, float* out) {
    const Ctx c(w, kKind);
    const int64_t kend = k1 < w.cols ? k1 : w.cols;
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* row = w.codes + r * w.row_bytes;
      __m256 acc[MR];
      float tail[MR] = {};
      for (int m = 0; m < MR; ++m) acc[m] = _mm256_setzero_ps();
      for (int64_t k = k0; k < kend;) {
        const int64_t g = k / c.call.glen, gend = (g + 1) * c.call.glen < kend ? (g + 1) * c.call.glen : kend;
        const float scale = c.call.load(w.scales, c.call.index(r, g)).scale;
        __m256 ga[MR][2];
        for (int m = 0; m < MR; ++m) ga[m][0] = ga[m][1] = _mm256_setzero_ps();
        const int64_t kc = code_chunks<kKind>(row, k, gend, [&](int64_t kk, const __m256* v) {
#pragma GCC unroll 8
          for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
            for (int j = 0; j < 4; ++j)
              ga[m][j & 1] = _mm256_fmadd_ps(v[j], _mm256_loadu_ps(xp + m * kpad + kk + 8 * j), ga[m][j & 1]);
        });
        if (kc > k) {
          const __m256 s = _mm256_set1_ps(scale);
          for (int m = 0; m < MR; ++m) acc[m] = _mm256_fmadd_ps(_mm256_add_ps(ga[m][0], ga[m][1]), s, acc[m]);
        }
        for (k = kc; k < gend; ++k) {
          const float wv = value<kKind>(c, row, k, scale, 0.0f);
          for (int m = 0; m < MR; ++m) tail[m] += wv * xp[m * kpad + k];
        }
      }
      for (int m = 0; m < MR; ++m) out[(r - r0) * MR + m] += VecAvx2::reduce_add(acc[m]) + tail[m];
    }
  }

  // ---- symmetric integer codes with fp32 scales: two GEMVs on one register tile ----
  // What both read of a weight: its scales by granule, and how far ahead to prefetch.
  struct IntRowsCtx {
    const PackedWeight& w;
    const float* scales;
    int64_t glen, groups, lanes_end;
    int64_t prefetch;  // how far ahead the codes are prefetched: whole rows, about 12 KiB
    double inv_glen;
    bool tensor, pairs;  // pairs: groups of 32
    explicit IntRowsCtx(const PackedWeight& pw)
        : w(pw), scales(pw.scales.scale), lanes_end(pw.cols / kLaneBlock * kLaneBlock) {
      const typename driver::Kernels<VecAvx2>::Call call(pw.spec, pw.cols);
      glen = call.glen, groups = call.groups, tensor = call.tensor;
      inv_glen = 1.0 / double(glen);
      prefetch = (12288 + pw.row_bytes - 1) / pw.row_bytes * pw.row_bytes;
      pairs = pw.spec.granularity == Granularity::kGroup && glen == 32;
    }
    // k / glen without a division instruction (exact for k below 2^40)
    int64_t granule(int64_t k) const { return int64_t((double(k) + 0.5) * inv_glen); }
    float scale(int64_t r, int64_t g) const { return scales[tensor ? 0 : r * groups + g]; }
    // the scales of row r's 64 columns from k (a lane-kernel half block)
    __m256 half_scales(int64_t r, int64_t k) const {
      if (!pairs) return _mm256_set1_ps(scale(r, granule(k)));
      const __m128 two = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(scales + r * groups + k / 32)));
      return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(two), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
    }
  };

  // R weight rows x MR activation rows of fp32 accumulators, C independent chains each.
  // kDefer: a span's code x activation sums, then one multiply-add by its scales;
  // otherwise every code is scaled first (activations of 2^64 or more, NaN or Inf, and
  // eight activation rows, which lack registers for the sums).
  template <int MR, int R, bool kDefer>
  struct RowTile {
    static constexpr int C = R * MR >= 4 ? 1 : 4 / (R * MR);
    const uint8_t* rows[R];
    __m256 acc[R][MR][C];
    RowTile(const PackedWeight& w, int64_t r) {
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) rows[i] = w.codes + (r + i) * w.row_bytes;
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
        for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
          for (int t = 0; t < C; ++t) acc[i][m][t] = _mm256_setzero_ps();
    }
    // One span of J vectors of 8 columns: code(i, j) is row i's j-th vector of code values,
    // x(m, j) the activations it multiplies, sc[i] row i's scales for the span.
    template <int J, class Code, class X>
    __attribute__((always_inline)) inline void span(const __m256 (&sc)[R], Code&& code, X&& x) {
      __m256 ps[R][MR][C];
#pragma GCC unroll 8
      for (int j = 0; j < J; ++j) {
#pragma GCC unroll 4
        for (int i = 0; i < R; ++i) {
          __m256 q = code(i, j);
          if constexpr (!kDefer) q = _mm256_mul_ps(q, sc[i]);
#pragma GCC unroll 8
          for (int m = 0; m < MR; ++m) {
            const __m256 xv = x(m, j);
            if constexpr (kDefer)
              ps[i][m][j % C] = j < C ? _mm256_mul_ps(q, xv) : _mm256_fmadd_ps(q, xv, ps[i][m][j % C]);
            else
              acc[i][m][j % C] = _mm256_fmadd_ps(q, xv, acc[i][m][j % C]);
          }
        }
      }
      if constexpr (kDefer) {
#pragma GCC unroll 4
        for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
          for (int m = 0; m < MR; ++m) {
            __m256 sum = ps[i][m][0];
#pragma GCC unroll 8
            for (int t = 1; t < C; ++t) sum = _mm256_add_ps(sum, ps[i][m][t]);
            acc[i][m][0] = _mm256_fmadd_ps(sum, sc[i], acc[i][m][0]);
          }
      }
    }
    // out[m] += row i's dot product with activation row m, plus tail[m]
    void store(int i, const float* tail, float* out) const {
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) {
        __m256 sum = acc[i][m][0];
#pragma GCC unroll 8
        for (int t = 1; t < C; ++t) sum = _mm256_add_ps(sum, acc[i][m][t]);
        out[m] += VecAvx2::reduce_add(sum) + tail[m];
      }
    }
  };

  // Weight rows [r0, r1) two at a time for one or two activation rows (one otherwise):
  // rows(MR, R, defer, r) for each tile, the first three as integral constants.
  template <bool kDefer, class Rows>
  static void row_tiles(int64_t r0, int64_t r1, int64_t M, Rows&& rows) {
    with_gemv_rows(M, [&](auto mr) {
      constexpr int MR = decltype(mr)::value, R = MR <= 2 ? 2 : 1;
      using Defer = std::integral_constant<bool, kDefer && MR <= 4>;
      int64_t r = r0;
      for (; r + R <= r1; r += R) rows(mr, std::integral_constant<int, R>{}, Defer{}, r);
      for (; r < r1; ++r) rows(mr, std::integral_constant<int, 1>{}, Defer{}, r);
    });
  }

  // -- 4-bit codes (int4, int3) in kNibbleLanes order --
  // A block of 128 columns is 64 code bytes, read as two vectors of eight 32-bit lanes
  // (lanes 0-7, then 8-15). Nibble j of lane l is column 8 l + j, whose activation sits at
  // position 16 j + l (weight_decoder.h), so every nibble is decoded in place, with no
  // widening shuffle: shifted to the top of its lane, then arithmetically down by 28 (the
  // signed value), converted to fp32. Each half of a block (64 columns) is one span: it lies
  // in one granule, or in two for groups of 32 (lanes 0-3 and 4-7), so its scales are one
  // vector.

  // Whether the lane kernel serves a weight: symmetric nibble codes with fp32 scales, at
  // least one block of 128 columns, and granules that do not split a half block.
  static bool lanes_apply(const PackedWeight& w) {
    if (stored_code(w.spec.format) != StoredCode::kIntNibble || !w.spec.symmetric || !w.scales.scale ||
        w.cols < kLaneBlock)
      return false;
    const int64_t glen = driver::Kernels<VecAvx2>::granule_len(w.spec, w.cols);
    return w.spec.granularity != Granularity::kGroup || glen == 32 || glen % 64 == 0;
  }

  template <int MR, int R, bool kDefer>
  static void lane_rows(const IntRowsCtx& c, int64_t r, const float* xp, int64_t kpad, int64_t k0, int64_t kl,
                        int64_t kend, float* out) {
    RowTile<MR, R, kDefer> tile(c.w, r);
    for (int64_t k = k0; k < kl; k += 64) {
      const int64_t h = (k & 64) ? 8 : 0, block = k & ~int64_t(127);
      __m256i v[R];
      __m256 sc[R];
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) {
        // the hardware prefetcher alone left a streamed weight latency-bound
        if (!h) _mm_prefetch(reinterpret_cast<const char*>(tile.rows[i] + k / 2 + c.prefetch), _MM_HINT_T0);
        v[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(tile.rows[i] + k / 2));
        sc[i] = c.half_scales(r + i, k);
      }
      tile.template span<8>(
          sc,
          [&](int i, int j) {
            const __m256i top = j == 7 ? v[i] : _mm256_slli_epi32(v[i], 28 - 4 * j);
            return _mm256_cvtepi32_ps(_mm256_srai_epi32(top, 28));
          },
          [&](int m, int j) { return _mm256_loadu_ps(xp + m * kpad + block + 16 * j + h); });
    }
    // columns from lanes_end on, in kEvenOdd order: whole chunks of 32, then one by one
    const Ctx cx(c.w, Codes::kInt4);
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
      float tail[MR] = {};
      for (int64_t k = kl > k0 ? kl : k0; k < kend;) {
        const int64_t base = k - k % 32;
        const float s = c.scale(r + i, c.granule(base));
        if (k == base && k + 32 <= kend) {
          const __m128i low4 = _mm_set1_epi8(0x0F);
          const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(tile.rows[i] + k / 2));
          const __m128i lo = _mm_and_si128(b, low4), hi = _mm_and_si128(_mm_srli_epi16(b, 4), low4);
          const __m256 sv = _mm256_set1_ps(s), zero = _mm256_setzero_ps();
          const __m256 vals[4] = {values<Codes::kInt4>(cx, lo, sv, zero),
                                  values<Codes::kInt4>(cx, _mm_srli_si128(lo, 8), sv, zero),
                                  values<Codes::kInt4>(cx, hi, sv, zero),
                                  values<Codes::kInt4>(cx, _mm_srli_si128(hi, 8), sv, zero)};
          for (int m = 0; m < MR; ++m)
            for (int t = 0; t < 4; ++t)
              tile.acc[i][m][0] =
                  _mm256_fmadd_ps(vals[t], _mm256_loadu_ps(xp + m * kpad + k + 8 * t), tile.acc[i][m][0]);
          k += 32;
          continue;
        }
        const int64_t j = k - base, pos = base + (j % 2 == 0 ? j / 2 : 16 + j / 2);
        const float wv = value<Codes::kInt4>(cx, tile.rows[i], k, s, 0.0f);
        for (int m = 0; m < MR; ++m) tail[m] += wv * xp[m * kpad + pos];
        ++k;
      }
      tile.store(i, tail, out + i * MR);
    }
  }

  template <bool kDefer>
  static void lanes_fn(const WeightDecoder& d, int64_t r0, int64_t r1, const float* xp, int64_t M, int64_t kpad,
                       int64_t k0, int64_t k1, float* out) {
    const IntRowsCtx c(*d.w);
    const int64_t kend = k1 < d.w->cols ? k1 : d.w->cols;
    const int64_t kl = kend < c.lanes_end ? kend : c.lanes_end < k0 ? k0 : c.lanes_end;
    row_tiles<kDefer>(r0, r1, M, [&](auto mr, auto rr, auto defer, int64_t r) {
      constexpr int MR = decltype(mr)::value;
      lane_rows<MR, decltype(rr)::value, decltype(defer)::value>(c, r, xp, kpad, k0, kl, kend, out + (r - r0) * MR);
    });
  }

  // -- 8-bit codes (int8, int6) in natural column order --
  // Each chunk of 32 columns is one span: it lies in one granule (group sizes are
  // multiples of 32).
  template <int MR, int R, bool kDefer>
  static void byte_rows(const IntRowsCtx& c, int64_t r, const float* xp, int64_t kpad, int64_t k0, int64_t kend,
                        float* out) {
    RowTile<MR, R, kDefer> tile(c.w, r);
    int64_t k = k0;
    for (; k + 32 <= kend; k += 32) {
      __m256 sc[R];
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i) {
        if (k % 64 == 0) _mm_prefetch(reinterpret_cast<const char*>(tile.rows[i] + k + c.prefetch), _MM_HINT_T0);
        sc[i] = _mm256_set1_ps(c.scale(r + i, c.granule(k)));
      }
      tile.template span<4>(
          sc,
          [&](int i, int j) {
            const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(tile.rows[i] + k + 8 * j));
            return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
          },
          [&](int m, int j) { return _mm256_loadu_ps(xp + m * kpad + k + 8 * j); });
    }
    const Ctx cx(c.w, Codes::kInt8);
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
      float tail[MR] = {};
      for (int64_t kk = k; kk < kend; ++kk) {  // a ragged row end
        const float wv = value<Codes::kInt8>(cx, tile.rows[i], kk, c.scale(r + i, c.granule(kk)), 0.0f);
        for (int m = 0; m < MR; ++m) tail[m] += wv * xp[m * kpad + kk];
      }
      tile.store(i, tail, out + i * MR);
    }
  }

  template <bool kDefer>
  static void bytes_fn(const WeightDecoder& d, int64_t r0, int64_t r1, const float* xp, int64_t M, int64_t kpad,
                       int64_t k0, int64_t k1, float* out) {
    const IntRowsCtx c(*d.w);
    const int64_t kend = k1 < d.w->cols ? k1 : d.w->cols;
    row_tiles<kDefer>(r0, r1, M, [&](auto mr, auto rr, auto defer, int64_t r) {
      constexpr int MR = decltype(mr)::value;
      byte_rows<MR, decltype(rr)::value, decltype(defer)::value>(c, r, xp, kpad, k0, kend, out + (r - r0) * MR);
    });
  }

  template <Codes kKind>
  static void dot_sym_fn(const WeightDecoder& d, int64_t r0, int64_t r1, const float* xp, int64_t M, int64_t kpad,
                         int64_t k0, int64_t k1, float* out) {
    with_gemv_rows(M, [&](auto mr) { dot_sym<kKind, decltype(mr)::value>(*d.w, r0, r1, xp, kpad, k0, k1, out); });
  }

  // GEMM panels: the same decode written to the tile (natural column order), then the
  // decoders' common post-processing.
  template <Codes kKind>
  static void decode(const WeightDecoder& d, int64_t r0, int64_t r1, int64_t k0, int64_t k1, float* out, int64_t ld,
                     uint8_t*) {
    const PackedWeight& w = *d.w;
    const Ctx c(w, kKind);
    const int64_t kend = k1 < w.cols ? k1 : w.cols;
    for (int64_t r = r0; r < r1; ++r) {
      float* dst = out + (r - r0) * ld - k0;  // dst[k], k in [k0, k1)
      row_values<kKind>(
          c, w, r, k0, kend,
          [&](int64_t k, const __m256* v) {
            for (int j = 0; j < 4; ++j) _mm256_storeu_ps(dst + k + 8 * j, v[j]);
          },
          [&](int64_t k, float v) { dst[k] = v; });
      for (int64_t k = kend > k0 ? kend : k0; k < k1; ++k) dst[k] = 0.0f;
      finish_row(w, r, dst + k0, kend > k0 ? kend - k0 : 0);
    }
  }

  template <Codes kKind>
  static void dot_fn(const WeightDecoder& d, int64_t r0, int64_t r1, const float* xp, int64_t M, int64_t kpad,
                     int64_t k0, int64_t k1, float* out) {
    with_gemv_rows(M, [&](auto mr) { dot<kKind, decltype(mr)::value>(*d.w, r0, r1, xp, kpad, k0, k1, out); });
  }

  // The generic decoder for integer panels (the codec's arithmetic is already gather-free);
  // register decoding for the float codes' panels and for every fused GEMV that applies.
  template <class Kernels>
  static WeightDecoder make(const PackedWeight& w) {
    WeightDecoder d = Kernels::generic_decoder(w);
    const bool fused = w.value_dtype == DType::kF32 && !w.row_scale1;
    // the deferred scale for granules of 128 columns or more (on groups of 32 the
    // per-group sums cost more than the multiplies they save)
    const bool deferred = w.spec.symmetric && driver::Kernels<VecAvx2>::granule_len(w.spec, w.cols) >= 128;
    switch (stored_code(w.spec.format)) {
      case StoredCode::kIntNibble:  // deferred scale; |x| >= 2^64, NaN or Inf: every weight scaled first
        if (fused && lanes_apply(w)) {
          d.dot_order = ColumnOrder::kNibbleLanes;
          d.dot_rows = &lanes_fn<true>;
          d.dot_rows_huge_x = &lanes_fn<false>;
          d.dot_rows_max = 16;  // where passes measured faster than the GEMM (AMD Zen 3)
          break;
        }
        if (fused) d.dot_rows = deferred ? &dot_sym_fn<Codes::kInt4> : &dot_fn<Codes::kInt4>;
        if (fused && deferred) d.dot_rows_huge_x = &dot_fn<Codes::kInt4>;
        break;
      case StoredCode::kInt8:
        if (fused && w.spec.symmetric && w.scales.scale) {
          d.dot_rows = &bytes_fn<true>;
          d.dot_rows_huge_x = &bytes_fn<false>;
          d.dot_rows_max = 12;  // likewise
        } else if (fused) {
          d.dot_rows = &dot_fn<Codes::kInt8>;
        }
        break;
      case StoredCode::kTable4:
        d.decode = &decode<Codes::kTable4>;
        if (fused) d.dot_rows = &dot_fn<Codes::kTable4>;
        break;
      case StoredCode::kE4M3:
        d.decode = &decode<Codes::kE4M3>;
        if (fused) d.dot_rows = &dot_fn<Codes::kE4M3>;
        break;
      case StoredCode::kHiF8:  // one or two rows gather from the table; more: the codec
        if (fused) d.dot_rows = &dot_fn<Codes::kGather8>;
        d.dot_rows_max = 2;
        break;
    }
    return d;
  }
};

}  // namespace deploy
}  // namespace
}  // namespace lowbit

// AVX-512 weight decoders, one per code width, producing exactly unpack()'s values:
//   4-bit codes (int4, FP4 E2M1/E1M2, MXFP4, FP8 x FP4): a 16-entry table of the group's
//     final values (code value x scale [x row scale], rounded to the weight dtype) indexed
//     with vpermps; low nibbles give the even columns, high nibbles the odd ones, so the
//     chunk comes out permuted (even columns first).
//   int8: sign extension, (q - offset) * scale.
// GEMV (dot_rows) of fp32 weights with one symmetric scale per row (channel, tensor): the
// 8-bit codes enter the dot products unscaled, and the row's dot product is multiplied by
// the scale once ("deferred scale"; two multiplies fewer per 32 codes). Activations with
// |x| >= 2^64 or a NaN/Inf take dot_rows_huge_x, which scales every value first.
//   E4M3 (FP8, MXFP8) into fp32 weights: bit moves into fp16, vcvtph2ps, x scale.
//   HiFloat8, E4M3 (FP8, MXFP8): |value| as bf16 (exact) from two 64-entry word permutes,
//     the sign from bit 7, widened to fp32 by a shift. Where the CPU has AVX512-VBMI the
//     byte-table decoder of weight_decoder_vbmi.h is used instead.
#pragma once
#include <immintrin.h>

#include <cmath>
#include <utility>

#include "deploy/linear_isa_table.h"
#include "deploy/weight_decoder.h"
#include "kernels/codec_luts.h"
#include "scales/granule_rule.h"

namespace lowbit {
namespace {
namespace deploy {

struct Avx512Decoder {
  static __m512 round_value(__m512 v, DType d) {
    if (d == DType::kBF16) {  // RNE to bf16, kept in fp32 (values are finite)
      __m512i b = _mm512_castps_si512(v);
      __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
      b = _mm512_add_epi32(b, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), lsb));
      return _mm512_castsi512_ps(_mm512_and_si512(b, _mm512_set1_epi32(int32_t(0xFFFF0000u))));
    }
    if (d == DType::kF16) return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    return v;
  }

  static const float* e8m0_table() {
    static const struct Table {
      float v[256];
      Table() {
        for (int b = 0; b < 256; ++b) v[b] = e8m0_value(uint8_t(b));
      }
    } table;
    return table.v;
  }

  // bf16 bits of |value| of the 8-bit float codes 0..127 (exact: at most 3 mantissa bits)
  static const uint16_t* magnitude_bf16_table(bool hif8) {
    struct Table {
      uint16_t v[128];
      explicit Table(Format f) {
        const float* lut = decode_lut(f);
        for (int c = 0; c < 128; ++c) v[c] = uint16_t(float_bits(lut[c]) >> 16);
      }
    };
    static const Table h(Format::kHiFloat8), e(Format::kFloat8E4M3FN);
    return hif8 ? h.v : e.v;
  }

  enum Kind { kNibbles, kInt8, kE4M3, kHiF8, kE4M3Half };
  static constexpr int kPrefetch = 2048;  // bytes ahead of the codes being decoded (streamed weights)

  // The 32 values of one chunk of codes in two vectors; `mask` selects the valid bytes.
  // !kScaled (int8, E4M3Half): the values before the multiplication by `scale`.
  // row_mult (8-bit codes; 4-bit codes have it in `table`): the row's multiplier
  // (PackedWeight::row_scale1), applied after the scale and before the rounding to vd,
  // as finish_row does.
  template <Kind kKind, bool kScaled = true>
  static inline void chunk(const uint8_t* codes, uint32_t mask, bool full, const __m512& table,
                           const __m512& scale, const __m512& offset, bool asym, DType vd, __m512& v0,
                           __m512& v1, const uint16_t* lut16 = nullptr, const float* row_mult = nullptr) {
    if constexpr (kKind == kHiF8 || kKind == kE4M3) {
      // |value| of codes 0..127 as bf16 (exact: at most 3 mantissa bits) from two 64-entry
      // word permutes picked by code bit 6; the sign is code bit 7 (weights never hold a
      // NaN code). 32 codes per step, widened to fp32 by a shift.
      const __m256i b = full ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes))
                             : _mm256_maskz_loadu_epi8(__mmask32(mask), codes);
      const __m512i idx = _mm512_cvtepu8_epi16(b);
      const __m512i lo = _mm512_permutex2var_epi16(_mm512_loadu_si512(lut16), idx, _mm512_loadu_si512(lut16 + 32));
      const __m512i hi = _mm512_permutex2var_epi16(_mm512_loadu_si512(lut16 + 64), idx, _mm512_loadu_si512(lut16 + 96));
      const __mmask32 b6 = _mm512_test_epi16_mask(idx, _mm512_set1_epi16(64));
      const __m512i h = _mm512_or_si512(_mm512_mask_blend_epi16(b6, lo, hi),
                                        _mm512_and_si512(_mm512_slli_epi16(idx, 8), _mm512_set1_epi16(-32768)));
      const __m512 f0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(h)), 16));
      const __m512 f1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(h, 1)), 16));
      v0 = round_value(times_row(_mm512_mul_ps(f0, scale), row_mult), vd);
      v1 = round_value(times_row(_mm512_mul_ps(f1, scale), row_mult), vd);
    } else if constexpr (kKind == kE4M3Half) {
      // E4M3 code s.eeee.mmm -> fp16 bits s.0eeee.mmm0000000: the fp16 value is the E4M3 one
      // times 2^-8, subnormals included, widened exactly by vcvtph2ps; `scale` carries the
      // 2^8 (`asym` here means the scale is too large for that, so 2^8 is applied first).
      const __m256i b = full ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes))
                             : _mm256_maskz_loadu_epi8(__mmask32(mask), codes);
      const __m512i h = _mm512_and_si512(_mm512_slli_epi16(_mm512_cvtepi8_epi16(b), 7), _mm512_set1_epi16(int16_t(0xBF80)));
      v0 = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
      v1 = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
      if (!kScaled) return;
      if (asym) {
        v0 = _mm512_mul_ps(v0, _mm512_set1_ps(256.0f));
        v1 = _mm512_mul_ps(v1, _mm512_set1_ps(256.0f));
      }
      v0 = times_row(_mm512_mul_ps(v0, scale), row_mult);  // (fp32 weights only: no rounding)
      v1 = times_row(_mm512_mul_ps(v1, scale), row_mult);
    } else if constexpr (kKind == kNibbles) {
      const __m128i b = full ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes))
                             : _mm_maskz_loadu_epi8(__mmask16(mask), codes);
      const __m512i idx = _mm512_cvtepu8_epi32(b);
      v0 = _mm512_permutexvar_ps(idx, table);
      v1 = _mm512_permutexvar_ps(_mm512_srli_epi32(idx, 4), table);
    } else {
      const __m256i b = full ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes))
                             : _mm256_maskz_loadu_epi8(__mmask32(mask), codes);
      static_assert(kKind == kInt8, "8-bit integer codes");
      v0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(b)));
      v1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(b, 1)));
      if (!kScaled) return;
      v0 = round_value(times_row(int8_values(v0, scale, offset, asym), row_mult), vd);
      v1 = round_value(times_row(int8_values(v1, scale, offset, asym), row_mult), vd);
    }
  }
  static inline __m512 times_row(__m512 v, const float* row_mult) {
    return row_mult ? _mm512_mul_ps(v, _mm512_set1_ps(*row_mult)) : v;
  }
  // (q - offset) * scale of 16 signed 8-bit codes q (as floats)
  static inline __m512 int8_values(__m512 q, const __m512& scale, const __m512& offset, bool asym) {
    if (asym) q = _mm512_sub_ps(q, offset);
    return _mm512_mul_ps(q, scale);
  }


  // Everything about a weight that does not change from row to row.
  struct Layout {
    bool mx, tensor, asym, simple;
    int64_t glen, groups;
    int64_t lanes_end;  // 4-bit codes: end of the columns a kNibbleLanes walk covers (0: none)
    const float* lut;
    DType vd;
    __m512 base;  // 4-bit codes: value of each code before scaling
    const float* e8m0;  // value of every E8M0 byte
    const uint16_t* lut16;  // HiF8 / E4M3: bf16 bits of |value| of codes 0..127
    explicit Layout(const PackedWeight& w)
        : e8m0(e8m0_table()), lut16(magnitude_bf16_table(stored_code(w.spec.format) == StoredCode::kHiF8)) {
      const Format f = w.spec.format;
      mx = format_info(f).is_mx();
      tensor = w.spec.granularity == Granularity::kTensor && !mx;
      asym = !w.spec.symmetric;
      glen = driver::Kernels<VecAvx512>::granule_len(w.spec, w.cols);
      groups = groups_per_row(w.spec, w.cols);
      lut = decode_lut(f);
      vd = w.value_dtype;
      alignas(64) float b[16];
      for (int c = 0; c < 16; ++c) b[c] = lut ? lut[c] : float(c < 8 ? c : c - 16);
      base = _mm512_load_ps(b);
      // kNibbleLanes blocks of 128 columns must not straddle granules
      const bool lanes = format_info(f).bits == 4 && !mx && (glen % kLaneBlock == 0 || glen >= w.cols);
      lanes_end = lanes ? w.cols / kLaneBlock * kLaneBlock : 0;
      simple = (!asym || lut) && vd == DType::kF32 && !w.row_scale1 && (mx ? w.scales.e8m0 != nullptr : w.scales.scale != nullptr);
    }
  };

  // Walks row r over columns [k0, kend) chunk by chunk: fn(k, v0, v1) for each chunk.
  // kMx: scales are E8M0 bytes. kSimple: symmetric (or float) codes, fp32 weights, no
  // row scale, scales present: the per-granule work is one load and one multiply.
  // kLanes (4-bit codes, t.lanes_end > 0): the blocks of 128 columns come in kNibbleLanes order
  // (k0 a multiple of 128), else every chunk is in kEvenOdd order.
  // !kScaled (int8 and E4M3Half codes, kSimple, one granule per row): values before the scale.
  template <Kind kKind, bool kMx, bool kSimple, bool kLanes, bool kScaled, class Fn>
  static inline void walk_row(const PackedWeight& w, const Layout& t, int64_t r, int64_t k0, int64_t kend, Fn&& fn) {
    const uint8_t* row = w.codes + r * w.row_bytes;
    const bool asym = kSimple ? false : t.asym;
    const DType vd = kSimple ? DType::kF32 : t.vd;
    const float* s1 = kSimple ? nullptr : w.row_scale1;
    // this row's granule parameters (a tensor scale repeats with stride 0)
    const int64_t first = t.tensor ? 0 : r * t.groups, stride = t.tensor ? 0 : 1;
    const float* srow = kMx || !w.scales.scale ? nullptr : w.scales.scale + first;
    const int32_t* orow = asym && w.scales.offset ? w.scales.offset + first : nullptr;
    const uint8_t* erow = kMx && w.scales.e8m0 ? w.scales.e8m0 + first : nullptr;
    const auto granule_scale = [&](int64_t g) -> float {
      if constexpr (kSimple) return kMx ? t.e8m0[erow[g]] : srow[g * stride];
      return kMx ? t.e8m0[erow ? erow[g] : 127] : (srow ? srow[g * stride] : 1.0f);
    };
    // 4-bit codes: the 16 final values of granule g's codes
    const auto nibble_table = [&](int64_t g, float sc) {
      __m512 table = t.base;
      if (!kSimple && asym && !t.lut && orow) table = _mm512_sub_ps(table, _mm512_set1_ps(float(orow[g * stride])));
      table = _mm512_mul_ps(table, _mm512_set1_ps(sc));
      if (!kSimple && s1) table = _mm512_mul_ps(table, _mm512_set1_ps(s1[r]));
      // (MX into bf16 without a row multiplier: a code value of at most 2 significant bits
      // times a power of two, at least 2^-128 and exact in fp32, is already a bf16 value)
      return kSimple || (kMx && vd == DType::kBF16 && !s1) ? table : round_value(table, vd);
    };
    int64_t k = k0;
    if constexpr (kKind == kNibbles && kLanes) {
      // 64 code bytes per step: nibble j of every 32-bit lane indexes the table directly
      // (vpermps reads the low 4 bits), 8 vectors from one load and 7 shifts
      const int64_t lend = driver::min64(kend, t.lanes_end);
      // blocks never straddle granules: the next granule starts exactly at gend
      int64_t g = k / t.glen, gend = (g + 1) * t.glen;
      __m512 table = nibble_table(g, granule_scale(g));
      for (; k + kLaneBlock <= lend; k += kLaneBlock) {
        if (k >= gend) {
          ++g;
          gend += t.glen;
          table = nibble_table(g, granule_scale(g));
        }
        const uint8_t* cp = row + uint64_t(k) / 2;
        _mm_prefetch(reinterpret_cast<const char*>(cp) + kPrefetch, _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(cp) + 4 * kPrefetch, _MM_HINT_T1);
        const __m512i codes = _mm512_loadu_si512(cp);
        __m512 v[8];
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j) v[j] = _mm512_permutexvar_ps(j ? _mm512_srli_epi32(codes, 4 * j) : codes, table);
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) fn(k + j * kChunk, v[2 * j], v[2 * j + 1]);
      }
      if (k >= kend) return;
    }
    if constexpr (kKind == kNibbles) {
      // one granule per chunk (group 32, MX): a lean loop, the table rebuilt per chunk
      if (t.glen == kChunk && !t.tensor && (kMx ? erow != nullptr : srow != nullptr)) {
        const uint8_t* cp = row + uint64_t(k) / 2;
        for (; k + kChunk <= kend; k += kChunk, cp += kChunk / 2) {
          _mm_prefetch(reinterpret_cast<const char*>(cp) + kPrefetch, _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(cp) + 4 * kPrefetch, _MM_HINT_T1);
          const int64_t g = k / kChunk;
          __m512 v0, v1;
          chunk<kKind>(cp, 0, true, nibble_table(g, granule_scale(g)), t.base, t.base, false, DType::kF32, v0, v1);
          fn(k, v0, v1);
        }
        if (k >= kend) return;
      }
    }
    for (int64_t g = k / t.glen; k < kend; ++g) {  // chunks never straddle granules (glen % 32 == 0)
      const int64_t gend = driver::min64(kend, (g + 1) * t.glen);
      float sc = granule_scale(g);
      bool flag = asym;
      if constexpr (kKind == kE4M3Half) {  // fp32 weights only: the 2^8 folded into the scale when it fits
        flag = !(std::fabs(sc) * 256.0f <= 3.4028234663852886e38f);
        if (!flag) sc *= 256.0f;
      }
      const __m512 scale = _mm512_set1_ps(sc);
      const float* row_mult = kKind != kNibbles && s1 ? s1 + r : nullptr;  // (4-bit: in the table)
      const __m512 offset = _mm512_set1_ps(orow ? float(orow[g * stride]) : 0.0f);
      __m512 table = t.base;
      if constexpr (kKind == kNibbles) table = nibble_table(g, sc);
      __m512 v0, v1;
      constexpr int64_t kStep = kKind == kNibbles ? kChunk / 2 : kChunk;  // code bytes per chunk
      const uint8_t* cp = row + (kKind == kNibbles ? uint64_t(k) / 2 : uint64_t(k));
      for (; k + kChunk <= gend; k += kChunk, cp += kStep) {
        _mm_prefetch(reinterpret_cast<const char*>(cp) + kPrefetch, _MM_HINT_T0);  // streamed weights: L1
        _mm_prefetch(reinterpret_cast<const char*>(cp) + 4 * kPrefetch, _MM_HINT_T1);  // and further ahead, L2
        chunk<kKind, kScaled>(cp, 0, true, table, scale, offset, flag, vd, v0, v1, t.lut16, row_mult);
        fn(k, v0, v1);
      }
      if (k < gend) {  // the ragged end of the row
        const int64_t valid = gend - k, bytes = kKind == kNibbles ? (valid + 1) / 2 : valid;
        chunk<kKind, kScaled>(row + (kKind == kNibbles ? k / 2 : k), uint32_t((uint64_t(1) << bytes) - 1), false,
                              table, scale, offset, flag, vd, v0, v1, t.lut16, row_mult);
        fn(k, v0, v1);
        k += kChunk;
      }
    }
  }

  // The row walker of one decoding mode: walks row r over columns [k0, kend), calling
  // fn(k, v0, v1) for each chunk of 32 columns; row() in `order`, dot_row() in dot_order().
  // kDeferScale: dot_row() gives the values before the row's scale, row_dot() applies it.
  template <Kind kKind, bool kMx, bool kSimple, bool kDeferScale = false>
  struct RowWalker {
    static_assert(!kDeferScale || ((kKind == kInt8 || kKind == kE4M3Half) && kSimple && !kMx), "deferred scales");
    static constexpr ColumnOrder kOrder = kKind == kNibbles ? ColumnOrder::kEvenOdd : ColumnOrder::kNatural;
    static constexpr bool kDeferredScale = kDeferScale;
    const PackedWeight& w;
    const Layout t;
    explicit RowWalker(const PackedWeight& weight) : w(weight), t(weight) {}
    ColumnOrder dot_order() const { return kKind == kNibbles && t.lanes_end > 0 ? ColumnOrder::kNibbleLanes : kOrder; }
    template <class Fn>
    void row(int64_t r, int64_t k0, int64_t kend, Fn&& fn) const {
      walk_row<kKind, kMx, kSimple, false, true>(w, t, r, k0, kend, fn);
    }
    template <class Fn>
    void dot_row(int64_t r, int64_t k0, int64_t kend, Fn&& fn) const {
      walk_row<kKind, kMx, kSimple, true, !kDeferScale>(w, t, r, k0, kend, fn);
    }
    // row r's dot product from that of dot_row()'s values (E4M3Half: they are the code
    // values x 2^-8; the 2^8 goes into the scale where that stays finite)
    float row_dot(int64_t r, float dot) const {
      if constexpr (!kDeferScale) return dot;
      const float sc = w.scales.scale[t.tensor ? 0 : r];
      if constexpr (kKind == kE4M3Half) return std::fabs(sc) <= 1e36f ? dot * (sc * 256.0f) : dot * 256.0f * sc;
      return dot * sc;
    }
  };

  template <class Walker>
  static void decode_rows(const WeightDecoder& d, int64_t r0, int64_t r1, int64_t k0, int64_t k1, float* out,
                          int64_t ld, uint8_t*) {
    const Walker walker(*d.w);
    const int64_t kend = driver::min64(k1, d.w->cols);
    for (int64_t r = r0; r < r1; ++r) {
      float* dst = out + (r - r0) * ld - k0;
      walker.row(r, k0, kend, [&](int64_t k, __m512 v0, __m512 v1) {
        _mm512_storeu_ps(dst + k, v0);
        _mm512_storeu_ps(dst + k + 16, v1);
      });
      for (int64_t k = round_up(max64(kend, k0), kChunk); k < k1; k += kChunk) {
        _mm512_storeu_ps(dst + k, _mm512_setzero_ps());
        _mm512_storeu_ps(dst + k + 16, _mm512_setzero_ps());
      }
    }
  }

  // GEMV without a tile, over columns [k0, k1) (k0 a multiple of 128, k1 of 32):
  // out[(r - r0) * MR + m] += sum_k w(r, k) x[m, k] (x in dot_order).
  // A = 4 (one activation row of nibble-lane blocks, whose decoding is cheap enough for
  // the FMA latency to bound the loop with two accumulators): even and odd chunks add into
  // separate pairs.
  template <class Walker, int MR, int A = 2>
  static void dot_rows_mr(const PackedWeight& w, int64_t r0, int64_t r1, const float* xp, int64_t kpad, int64_t k0,
                          int64_t k1, float* out) {
    static_assert(A == 2 || (A == 4 && MR == 1), "accumulators per activation row");
    const Walker walker(w);
    const int64_t kend = driver::min64(k1, w.cols);
    for (int64_t r = r0; r < r1; ++r) {
      __m512 acc[MR][A];
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m)
        for (int a = 0; a < A; ++a) acc[m][a] = _mm512_setzero_ps();
      walker.dot_row(r, k0, kend, [&](int64_t k, __m512 v0, __m512 v1) {
#pragma GCC unroll 8
        for (int m = 0; m < MR; ++m) {
          acc[m][0] = _mm512_fmadd_ps(v0, _mm512_loadu_ps(xp + m * kpad + k), acc[m][0]);
          acc[m][1] = _mm512_fmadd_ps(v1, _mm512_loadu_ps(xp + m * kpad + k + 16), acc[m][1]);
        }
        if constexpr (A == 4) {  // the next chunk adds into the other pair (register renames, no branch)
          std::swap(acc[0][0], acc[0][A - 2]);
          std::swap(acc[0][1], acc[0][A - 1]);
        }
      });
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) {
        __m512 sum = _mm512_add_ps(acc[m][0], acc[m][1]);
        if (A == 4) sum = _mm512_add_ps(sum, _mm512_add_ps(acc[m][A - 2], acc[m][A - 1]));
        out[(r - r0) * MR + m] += walker.row_dot(r, _mm512_reduce_add_ps(sum));
      }
    }
  }
  template <class Walker>
  static void dot_rows(const WeightDecoder& d, int64_t r0, int64_t r1, const float* xp, int64_t M, int64_t kpad,
                       int64_t k0, int64_t k1, float* out) {
    if (M == 1 && d.dot_order == ColumnOrder::kNibbleLanes)
      return dot_rows_mr<Walker, 1, 4>(*d.w, r0, r1, xp, kpad, k0, k1, out);
    with_gemv_rows(M, [&](auto mr) {
      dot_rows_mr<Walker, decltype(mr)::value>(*d.w, r0, r1, xp, kpad, k0, k1, out);
    });
  }
  template <class Walker>
  static WeightDecoder make_walker(const PackedWeight& w) {
    const Walker walker(w);
    WeightDecoder d;
    d.w = &w;
    d.order = Walker::kOrder;
    d.dot_order = walker.dot_order();
    d.decode = &decode_rows<Walker>;
    d.dot_rows = &dot_rows<Walker>;
    return d;
  }
  // A walker whose GEMV defers the row scale; its dot_rows_huge_x is that of `Scaled`.
  template <class Deferred, class Scaled>
  static WeightDecoder make_deferred(const PackedWeight& w) {
    WeightDecoder d = make_walker<Deferred>(w);
    d.dot_rows_huge_x = &dot_rows<Scaled>;
    return d;
  }
  template <Kind kKind, bool kMx, bool kSimple>
  static WeightDecoder make_mode(const PackedWeight& w) {
    return make_walker<RowWalker<kKind, kMx, kSimple>>(w);
  }
  template <Kind kKind>
  static WeightDecoder make_kind(const PackedWeight& w) {
    const Layout t(w);
    if constexpr (kKind == kNibbles || kKind == kE4M3 || kKind == kE4M3Half) {
      if (t.mx) return t.simple ? make_mode<kKind, true, true>(w) : make_mode<kKind, true, false>(w);
    }
    if constexpr (kKind == kInt8 || kKind == kE4M3Half) {
      if (t.simple && t.groups == 1)
        return make_deferred<RowWalker<kKind, false, true, true>, RowWalker<kKind, false, true>>(w);
    }
    return t.simple ? make_mode<kKind, false, true>(w) : make_mode<kKind, false, false>(w);
  }

  static WeightDecoder make(const PackedWeight& w) {
    const StoredCode code = stored_code(w.spec.format);
    switch (code) {
      case StoredCode::kIntNibble:
      case StoredCode::kTable4: return make_kind<kNibbles>(w);
      case StoredCode::kInt8:
        // symmetric codes into bf16/fp16 weights: byte tables of the rounded weights
        if (vbmi_decoders_enabled() && w.spec.symmetric && w.value_dtype != DType::kF32 && !w.row_scale1 &&
            w.scales.scale)
          return vbmi_decoder_avx512(w);
        return make_kind<kInt8>(w);
      case StoredCode::kHiF8:
      case StoredCode::kE4M3: break;
    }
    if (code != StoredCode::kHiF8 && w.value_dtype == DType::kF32) return make_kind<kE4M3Half>(w);
    // byte tables: fewer permutes (their tables hold scaled values, no per-row multiplier)
    if (vbmi_decoders_enabled() && !w.row_scale1) return vbmi_decoder_avx512(w);
    return code == StoredCode::kHiF8 ? make_kind<kHiF8>(w) : make_kind<kE4M3>(w);
  }
};

}  // namespace deploy
}  // namespace
}  // namespace lowbit

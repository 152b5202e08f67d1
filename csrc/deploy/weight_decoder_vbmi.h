// AVX-512 decoder of 8-bit codes through 128-entry byte tables (AVX512-VBMI's vpermi2b,
// which ignores index bit 7, so an 8-bit float code indexes its magnitude directly): FP8
// E4M3, MXFP8 and HiFloat8, and symmetric int8 into bf16/fp16 weights (the table indexed by
// |q|, code -128 patched in afterwards). Each code's 16-bit value lives in two byte tables, low and high bytes; 32 codes
// take two lookups, one bit-select to add the sign (code bit 7 -> bit 15), and one byte
// interleave into 32 words, which widen to fp32 by a shift (bf16) or vcvtph2ps (fp16).
//
// The tables hold, per mode:
//   kMagnitude: |value| as bf16 (exact: at most 3 mantissa bits), then x scale in fp32 (fp32
//     weights, and MX blocks whose scale is a power of two) and rounding to the weight dtype;
//   kValuesBf16 / kValuesF16: the final weight, round(|value| x scale) in the weight's 16-bit
//     dtype, rebuilt per granule (per row for channel scales): no arithmetic per code.
// bf16 words come out even columns first, then odd ones (the nibble decoders' order); fp16
// words in natural order. Weights never hold a NaN code (quantization saturates).
#pragma once
#include <immintrin.h>

#include "deploy/weight_decoder_avx512.h"
#include "formats/half.h"

namespace lowbit {
namespace {
namespace deploy {

struct VbmiDecoder {
  enum Mode { kMagnitude, kValuesBf16, kValuesF16 };
  using Base = Avx512Decoder;

  struct ByteTables {
    __m512i lo0, lo1, hi0, hi1;  // low / high bytes of the words of codes 0..63 and 64..127
  };

  struct ByteIndex {
    alignas(64) uint8_t even[64], odd[64], interleave[64], interleave_hi[64];
    ByteIndex() {
      for (int j = 0; j < 64; ++j) {
        even[j] = uint8_t(2 * j);
        odd[j] = uint8_t(2 * j + 1);
      }
      for (int j = 0; j < 32; ++j) {
        interleave[2 * j] = uint8_t(j);        // low byte of word j: lo[j]
        interleave[2 * j + 1] = uint8_t(64 + j);  // high byte: hi[j]
        interleave_hi[2 * j] = uint8_t(32 + j);   // the same for codes 32..63
        interleave_hi[2 * j + 1] = uint8_t(96 + j);
      }
    }
  };
  static const ByteIndex& byte_index() {
    static const ByteIndex b;
    return b;
  }

  // |value| of codes 0..127 in fp32
  static const float* magnitudes(Format f) {
    struct Table {
      alignas(64) float v[128];
      explicit Table(Format fmt) {
        const float* lut = decode_lut(fmt);
        for (int c = 0; c < 128; ++c) v[c] = lut[c];
      }
    };
    static const Table h(Format::kHiFloat8), e(Format::kFloat8E4M3FN);
    static const struct Ints {
      alignas(64) float v[128];
      Ints() {
        for (int c = 0; c < 128; ++c) v[c] = float(c);
      }
    } q;
    const StoredCode code = stored_code(f);
    return code == StoredCode::kInt8 ? q.v : code == StoredCode::kHiF8 ? h.v : e.v;
  }

  // Byte tables of round(mag[c] x sc) in vd (bf16 or fp16 bits) for c = 0..127.
  static ByteTables value_tables(const float* mag, float sc, DType vd) {
    const __m512 s = _mm512_set1_ps(sc);
    __m512i words[4];
    for (int i = 0; i < 4; ++i) {
      __m256i half[2];
      for (int h = 0; h < 2; ++h) {
        const __m512 v = _mm512_mul_ps(_mm512_load_ps(mag + 32 * i + 16 * h), s);
        half[h] = vd == DType::kF16
                      ? _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
                      : _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(Base::round_value(v, DType::kBF16)), 16));
      }
      words[i] = _mm512_inserti64x4(_mm512_castsi256_si512(half[0]), half[1], 1);
    }
    const ByteIndex& bi = byte_index();
    const __m512i even = _mm512_load_si512(bi.even), odd = _mm512_load_si512(bi.odd);
    return {_mm512_permutex2var_epi8(words[0], even, words[1]), _mm512_permutex2var_epi8(words[2], even, words[3]),
            _mm512_permutex2var_epi8(words[0], odd, words[1]), _mm512_permutex2var_epi8(words[2], odd, words[3])};
  }

  // The 16-bit words of 32 codes, in column order.
  // kInt8: codes are two's complement; the tables are indexed by |q| and code -128 (|q| =
  // 128, past the table) gets the word w128 = round(-128 x scale).
  template <bool kInt8>
  static inline __m512i words(const uint8_t* codes, uint32_t mask, bool full, const ByteTables& t,
                              const __m512i& interleave, uint16_t w128) {
    const __m256i b = full ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes))
                           : _mm256_maskz_loadu_epi8(__mmask32(mask), codes);
    const __m512i code = _mm512_zextsi256_si512(b);
    const __m512i idx = kInt8 ? _mm512_abs_epi8(code) : code;
    const __m512i lo = _mm512_permutex2var_epi8(t.lo0, idx, t.lo1);
    const __m512i hi = _mm512_permutex2var_epi8(t.hi0, idx, t.hi1);
    // hi | (code & 0x80): the sign bit
    const __m512i hs = _mm512_ternarylogic_epi32(hi, code, _mm512_set1_epi8(char(0x80)), 0xF8);
    const __m512i w = _mm512_permutex2var_epi8(lo, interleave, hs);
    if constexpr (!kInt8) return w;
    const __mmask64 m128 = _mm512_cmpeq_epi8_mask(code, _mm512_set1_epi8(char(0x80)));
    return _mm512_mask_blend_epi16(__mmask32(m128), w, _mm512_set1_epi16(int16_t(w128)));
  }

  // The same for 64 codes: the lookups of both halves share two permutes.
  template <bool kInt8>
  static inline void words64(const uint8_t* codes, const ByteTables& t, const __m512i& interleave,
                             const __m512i& interleave_hi, uint16_t w128, __m512i& w0, __m512i& w1) {
    const __m512i code = _mm512_loadu_si512(codes);
    const __m512i idx = kInt8 ? _mm512_abs_epi8(code) : code;
    const __m512i lo = _mm512_permutex2var_epi8(t.lo0, idx, t.lo1);
    const __m512i hi = _mm512_permutex2var_epi8(t.hi0, idx, t.hi1);
    const __m512i hs = _mm512_ternarylogic_epi32(hi, code, _mm512_set1_epi8(char(0x80)), 0xF8);
    w0 = _mm512_permutex2var_epi8(lo, interleave, hs);
    w1 = _mm512_permutex2var_epi8(lo, interleave_hi, hs);
    if constexpr (kInt8) {
      const __mmask64 m128 = _mm512_cmpeq_epi8_mask(code, _mm512_set1_epi8(char(0x80)));
      w0 = _mm512_mask_blend_epi16(__mmask32(m128), w0, _mm512_set1_epi16(int16_t(w128)));
      w1 = _mm512_mask_blend_epi16(__mmask32(m128 >> 32), w1, _mm512_set1_epi16(int16_t(w128)));
    }
  }

  // kDeferScale (kMagnitude, kSimple, one scale per row): dot_row() gives the magnitudes
  // with their signs, unscaled, and row_dot() applies the row's scale.
  template <Mode kMode, bool kMx, bool kSimple, bool kInt8 = false, bool kDeferScale = false>
  struct Walker {
    static_assert(!kDeferScale || (kMode == kMagnitude && kSimple && !kMx), "deferred scales");
    static constexpr ColumnOrder kOrder = kMode != kValuesF16 ? ColumnOrder::kEvenOdd : ColumnOrder::kNatural;
    static constexpr bool kDeferredScale = kDeferScale;
    const PackedWeight& w;
    const Base::Layout t;
    const float* mag;
    ByteTables mag_tables;
    __m512i interleave, interleave_hi;
    explicit Walker(const PackedWeight& weight)
        : w(weight), t(weight), mag(magnitudes(weight.spec.format)),
          mag_tables(value_tables(mag, 1.0f, DType::kBF16)),
          interleave(_mm512_load_si512(byte_index().interleave)),
          interleave_hi(_mm512_load_si512(byte_index().interleave_hi)) {}

    template <bool kScaled>
    inline void values(const uint8_t* codes, uint32_t mask, bool full, const ByteTables& tb, uint16_t w128,
                       const __m512& scale, DType vd, __m512& v0, __m512& v1) const {
      widen<kScaled>(words<kInt8>(codes, mask, full, tb, interleave, w128), scale, vd, v0, v1);
    }
    // 32 words -> two vectors of values (!kScaled: magnitudes not multiplied by `scale`)
    template <bool kScaled>
    static inline void widen(const __m512i& wd, const __m512& scale, DType vd, __m512& v0, __m512& v1) {
      if constexpr (kMode == kValuesF16) {
        v0 = _mm512_cvtph_ps(_mm512_castsi512_si256(wd));
        v1 = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(wd, 1));
      } else {
        v0 = _mm512_castsi512_ps(_mm512_slli_epi32(wd, 16));  // even columns
        v1 = _mm512_castsi512_ps(_mm512_and_si512(wd, _mm512_set1_epi32(int32_t(0xFFFF0000u))));  // odd ones
        if constexpr (kMode == kMagnitude && kScaled) {
          v0 = _mm512_mul_ps(v0, scale);
          v1 = _mm512_mul_ps(v1, scale);
          if constexpr (!kSimple) {
            v0 = Base::round_value(v0, vd);
            v1 = Base::round_value(v1, vd);
          }
        }
      }
    }

    ColumnOrder dot_order() const { return kOrder; }
    template <class Fn>
    void dot_row(int64_t r, int64_t k0, int64_t kend, Fn&& fn) const {
      walk<!kDeferScale>(r, k0, kend, fn);
    }
    float row_dot(int64_t r, float dot) const {
      return kDeferScale ? dot * w.scales.scale[t.tensor ? 0 : r] : dot;
    }
    template <class Fn>
    void row(int64_t r, int64_t k0, int64_t kend, Fn&& fn) const {
      walk<true>(r, k0, kend, fn);
    }
    template <bool kScaled, class Fn>
    void walk(int64_t r, int64_t k0, int64_t kend, Fn&& fn) const {
      const uint8_t* codes = w.codes + r * w.row_bytes;
      const DType vd = kSimple ? DType::kF32 : t.vd;
      const int64_t first = t.tensor ? 0 : r * t.groups, stride = t.tensor ? 0 : 1;
      const float* srow = kMx || !w.scales.scale ? nullptr : w.scales.scale + first;
      const uint8_t* erow = kMx && w.scales.e8m0 ? w.scales.e8m0 + first : nullptr;
      int64_t k = k0;
      for (int64_t g = k / t.glen; k < kend; ++g) {  // chunks never straddle granules (glen % 32 == 0)
        const int64_t gend = driver::min64(kend, (g + 1) * t.glen);
        float sc;
        if constexpr (kSimple) sc = kMx ? t.e8m0[erow[g]] : srow[g * stride];
        else sc = kMx ? t.e8m0[erow ? erow[g] : 127] : (srow ? srow[g * stride] : 1.0f);
        const __m512 scale = _mm512_set1_ps(sc);
        ByteTables tb;
        uint16_t w128 = 0;  // int8 code -128
        if constexpr (kMode == kMagnitude) {
          tb = mag_tables;
        } else {
          tb = value_tables(mag, sc, vd);
          if constexpr (kInt8) w128 = kMode == kValuesF16 ? float_to_fp16(-128.0f * sc) : float_to_bf16(-128.0f * sc);
        }
        __m512 v0, v1;
        const uint8_t* cp = codes + k;
        for (; k + 2 * kChunk <= gend; k += 2 * kChunk, cp += 2 * kChunk) {
          _mm_prefetch(reinterpret_cast<const char*>(cp) + Base::kPrefetch, _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(cp) + 4 * Base::kPrefetch, _MM_HINT_T1);
          __m512i w0, w1;
          words64<kInt8>(cp, tb, interleave, interleave_hi, w128, w0, w1);
          widen<kScaled>(w0, scale, vd, v0, v1);
          fn(k, v0, v1);
          widen<kScaled>(w1, scale, vd, v0, v1);
          fn(k + kChunk, v0, v1);
        }
        for (; k + kChunk <= gend; k += kChunk, cp += kChunk) {
          _mm_prefetch(reinterpret_cast<const char*>(cp) + Base::kPrefetch, _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(cp) + 4 * Base::kPrefetch, _MM_HINT_T1);
          values<kScaled>(cp, 0, true, tb, w128, scale, vd, v0, v1);
          fn(k, v0, v1);
        }
        if (k < gend) {  // the ragged end of the row
          values<kScaled>(cp, uint32_t((uint64_t(1) << (gend - k)) - 1), false, tb, w128, scale, vd, v0, v1);
          fn(k, v0, v1);
          k += kChunk;
        }
      }
    }
  };

  static WeightDecoder make(const PackedWeight& w) {
    const Base::Layout t(w);
    if (stored_code(w.spec.format) == StoredCode::kInt8)
      return t.vd == DType::kBF16 ? Base::make_walker<Walker<kValuesBf16, false, false, true>>(w)
                                  : Base::make_walker<Walker<kValuesF16, false, false, true>>(w);
    if (t.mx)
      return t.simple ? Base::make_walker<Walker<kMagnitude, true, true>>(w)
                      : Base::make_walker<Walker<kMagnitude, true, false>>(w);
    if (t.vd == DType::kBF16) return Base::make_walker<Walker<kValuesBf16, false, false>>(w);
    if (t.vd == DType::kF16) return Base::make_walker<Walker<kValuesF16, false, false>>(w);
    if (t.simple && t.groups == 1)
      return Base::make_deferred<Walker<kMagnitude, false, true, false, true>, Walker<kMagnitude, false, true>>(w);
    return t.simple ? Base::make_walker<Walker<kMagnitude, false, true>>(w)
                    : Base::make_walker<Walker<kMagnitude, false, false>>(w);
  }
};

}  // namespace deploy
}  // namespace
}  // namespace lowbit

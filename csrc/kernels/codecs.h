// Element codecs written once over the vector interface (VecScalar / VecAvx2 /
// VecAvx512). Each codec offers, for one granule's parameters:
//   qdq(x)     quantize-dequantize: the value decode(encode(x / s)) * s, NaN -> canonical NaN
//   encode(x)  the storage code of x / s (8-bit codes, or 4-bit codes in the low nibble)
//   decode(c)  the dequantized value of code c
// The rounding itself is done on the fp32 bit pattern (no code round trip), and is
// tested bit for bit against formats/reference.cpp.
#pragma once
#include <cstdint>

#include "formats/half.h"

namespace lowbit {

constexpr uint32_t kCanonicalNaN = 0x7FC00000u;

// Per-granule parameters broadcast into vectors.
template <class V>
struct Granule {
  typename V::F scale;
  typename V::F offset;  // asymmetric INT only, as float
  const float* lut;      // decode table (value of each code before scaling)
  typename V::F lo, hi;  // INT only: the code range [-2^(b-1), 2^(b-1) - 1] of the format
};

// ---- Integers: int8, int4, int3 ... ------------------------------------------------------
// kStorage is the stored width (8, or 4 for a nibble); the code range comes from the
// format's int_bits through Granule::lo/hi, so a narrower integer (int3 in a nibble)
// shares this codec and every decoder of its storage width.
template <class V, int kStorage, bool kSym>
struct IntCodec {
  using F = typename V::F;
  using I = typename V::I;
  static F levels(F x, const Granule<V>& g) {
    F v = V::div(x, g.scale);
    if (!kSym) v = V::add(v, g.offset);
    // + 0 turns -0 into +0: an integer code has no negative zero, so QDQ must agree
    // with decode(encode(x)).
    return V::min(V::max(V::add(V::rint(v), V::set1(0.0f)), g.lo), g.hi);
  }
  static F qdq(F x, const Granule<V>& g) {
    F q = levels(x, g);
    F out = kSym ? V::mul(q, g.scale) : V::mul(V::sub(q, g.offset), g.scale);
    return V::select(V::isnan(x), V::asf(V::iset1(int32_t(kCanonicalNaN))), out);
  }
  static I encode(F x, const Granule<V>& g) {
    F x0 = V::select(V::isnan(x), V::set1(0.0f), x);  // no NaN code: NaN packs as 0
    return V::iand(V::cvtfi(levels(x0, g)), V::iset1((1 << kStorage) - 1));
  }
  static F decode(I code, const Granule<V>& g) {
    // sign-extend the kStorage-wide two's complement code
    I q = V::template srai<32 - kStorage>(V::template slli<32 - kStorage>(code));
    F qf = V::cvtif(q);
    return kSym ? V::mul(qf, g.scale) : V::mul(V::sub(qf, g.offset), g.scale);
  }
};

// ---- Minifloats: E4M3FN, E2M1, E1M2 ---------------------------------------------------
struct E4M3Traits {
  static constexpr int kMbits = 3, kWidth = 7;
  static constexpr float kMinNormal = 0.015625f, kQuantum = 0.001953125f, kMax = 448.0f;
  static constexpr bool kHasNaN = true;
};
struct E2M1Traits {
  static constexpr int kMbits = 1, kWidth = 3;
  static constexpr float kMinNormal = 1.0f, kQuantum = 0.5f, kMax = 6.0f;
  static constexpr bool kHasNaN = false;
};
struct E1M2Traits {
  static constexpr int kMbits = 2, kWidth = 3;
  static constexpr float kMinNormal = 1.0f, kQuantum = 0.25f, kMax = 1.75f;
  static constexpr bool kHasNaN = false;
};

template <class V, class T>
struct MinifloatCodec {
  using F = typename V::F;
  using I = typename V::I;
  static constexpr int kShift = 23 - T::kMbits;
  // Magnitude rounded to the grid: RNE on the mantissa in the normal range, fixed
  // quantum below it, saturating at the largest finite value (Inf included).
  static F round_abs(F a) {
    I b = V::asi(a);
    I lsb = V::iand(V::template srli<kShift>(b), V::iset1(1));
    I bias = V::iadd(V::iset1((1 << (kShift - 1)) - 1), lsb);
    F normal = V::asf(V::iand(V::iadd(b, bias), V::iset1(~((1 << kShift) - 1))));
    F sub = V::mul(V::rint(V::mul(a, V::set1(1.0f / T::kQuantum))), V::set1(T::kQuantum));
    F r = V::select(V::lt(a, V::set1(T::kMinNormal)), sub, normal);
    return V::min(r, V::set1(T::kMax));
  }
  static F sign_of(F v) { return V::asf(V::iand(V::asi(v), V::iset1(int32_t(0x80000000u)))); }
  static F qdq(F x, const Granule<V>& g) {
    F v = V::div(x, g.scale);
    F r = V::asf(V::ior(V::asi(round_abs(V::abs(v))), V::asi(sign_of(v))));
    return V::select(V::isnan(v), V::asf(V::iset1(int32_t(kCanonicalNaN))), V::mul(r, g.scale));
  }
  static I encode(F x, const Granule<V>& g) {
    F v = V::div(x, g.scale);
    F r = round_abs(V::abs(v));
    const float min_normal = T::kMinNormal;
    I normal_code = V::iadd(V::template srli<kShift>(V::isub(V::asi(r), V::iset1(int32_t(float_bits(min_normal))))),
                            V::iset1(1 << T::kMbits));
    I sub_code = V::cvtfi(V::mul(r, V::set1(1.0f / T::kQuantum)));
    I code = V::selecti(V::ge(r, V::set1(T::kMinNormal)), normal_code, sub_code);
    I sign = V::template srli<31 - T::kWidth>(V::iand(V::asi(v), V::iset1(int32_t(0x80000000u))));
    code = V::ior(code, sign);
    const int32_t nan_code = T::kHasNaN ? 0x7F : 0;
    return V::selecti(V::isnan(v), V::ior(V::iset1(nan_code), T::kHasNaN ? sign : V::iset1(0)), code);
  }
  static F decode(I code, const Granule<V>& g) { return V::mul(V::gather(g.lut, code), g.scale); }
};

// ---- HiFloat8 -----------------------------------------------------------------------
template <class V>
struct HiFloat8Codec {
  using F = typename V::F;
  using I = typename V::I;
  using M = typename V::M;
  static I exponent(I bits) { return V::isub(V::template srli<23>(bits), V::iset1(127)); }
  static I abs_int(I e) { return V::imax(e, V::isub(V::iset1(0), e)); }
  // Mantissa bits kept for |E|: 3 up to 3, 2 up to 7, else 1.
  static I mantissa_bits(I abs_e) {
    return V::selecti(V::icmpgt(abs_e, V::iset1(7)), V::iset1(1),
                      V::selecti(V::icmpgt(abs_e, V::iset1(3)), V::iset1(2), V::iset1(3)));
  }
  // |x| rounded to the HiF8 grid (finite input; Inf/NaN are fixed by the callers).
  static F round_abs(F a) {
    I b = V::asi(a);
    I e = exponent(b);
    I shift = V::isub(V::iset1(23), mantissa_bits(abs_int(e)));
    I half = V::sllv(V::iset1(1), V::isub(shift, V::iset1(1)));
    I keep = V::sllv(V::iset1(-1), shift);
    F normal = V::asf(V::iand(V::iadd(b, half), keep));  // ties away from zero
    // Denormal codes are powers of two: 2^E, or 2^(E+1) when the fraction is >= 0.5.
    F denormal = V::asf(V::iand(V::iadd(b, V::iset1(0x00400000)), V::iset1(0x7F800000)));
    F r = V::select(V::icmpgt(e, V::iset1(-16)), normal,
                    V::select(V::icmpgt(e, V::iset1(-23)), denormal,
                              V::select(V::icmpeq(e, V::iset1(-23)), V::set1(0x1p-22f), V::set1(0.0f))));
    return V::min(r, V::set1(32768.0f));  // saturation at the largest finite value
  }
  static M is_inf(F v) { return V::eq(V::abs(v), V::set1(__builtin_inff())); }
  static F qdq(F x, const Granule<V>& g) {
    F v = V::div(x, g.scale);
    F r = round_abs(V::abs(v));
    F sign = V::asf(V::iand(V::asi(v), V::iset1(int32_t(0x80000000u))));
    F out = V::mul(V::asf(V::ior(V::asi(r), V::asi(sign))), g.scale);
    out = V::select(V::eq(r, V::set1(0.0f)), V::set1(0.0f), out);  // HiF8 has no -0
    out = V::select(is_inf(v), V::mul(v, g.scale), out);
    return V::select(V::isnan(v), V::asf(V::iset1(int32_t(kCanonicalNaN))), out);
  }
  static I encode(F x, const Granule<V>& g) {
    F v = V::div(x, g.scale);
    F r = round_abs(V::abs(v));
    I rb = V::asi(r);
    I e = exponent(rb);
    I ae = abs_int(e);
    I mbits = mantissa_bits(ae);
    I mant = V::srlv(V::iand(rb, V::iset1(0x7FFFFF)), V::isub(V::iset1(23), mbits));
    I neg = V::selecti(V::icmpgt(V::iset1(0), e), V::iset1(1), V::iset1(0));
    // Class codes: D0 0001mmm, D1 001smmm, D2 01sEmmm, D3 10sEEmm, D4 11sEEEm.
    I d1 = V::ior(V::iset1(0x10), V::template slli<3>(neg));
    I d2 = V::ior(V::iset1(0x20), V::ior(V::template slli<4>(neg), V::template slli<3>(V::isub(ae, V::iset1(2)))));
    I d3 = V::ior(V::iset1(0x40), V::ior(V::template slli<4>(neg), V::template slli<2>(V::isub(ae, V::iset1(4)))));
    I d4 = V::ior(V::iset1(0x60), V::ior(V::template slli<4>(neg), V::template slli<1>(V::isub(ae, V::iset1(8)))));
    I cls = V::selecti(V::icmpgt(ae, V::iset1(7)), d4,
                       V::selecti(V::icmpgt(ae, V::iset1(3)), d3,
                                  V::selecti(V::icmpgt(ae, V::iset1(1)), d2,
                                             V::selecti(V::icmpeq(ae, V::iset1(1)), d1, V::iset1(0x08)))));
    I code = V::ior(cls, mant);
    code = V::selecti(V::icmpgt(e, V::iset1(-16)), code, V::iadd(e, V::iset1(23)));  // denormal: 2^(m-23)
    code = V::selecti(V::eq(r, V::set1(0.0f)), V::iset1(0), code);
    I sign = V::template srli<24>(V::iand(V::asi(v), V::iset1(int32_t(0x80000000u))));
    code = V::selecti(V::icmpeq(code, V::iset1(0)), code, V::ior(code, sign));
    code = V::selecti(is_inf(v), V::ior(sign, V::iset1(0x6F)), code);
    return V::selecti(V::isnan(v), V::iset1(0x80), code);
  }
  static F decode(I code, const Granule<V>& g) { return V::mul(V::gather(g.lut, code), g.scale); }
};

}  // namespace lowbit

// One-lane "vector" with the same interface as VecAvx2/VecAvx512: the scalar fallback
// path instantiates the very same codec templates. min/max follow x86 semantics
// (the second operand is returned when either is NaN) so every path agrees.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "formats/half.h"

namespace lowbit {

struct VecScalar {
  static constexpr int kLanes = 1;
  static constexpr const char* kName = "scalar";
  using F = float;
  using I = int32_t;
  using M = bool;

  static F load(const float* p) { return *p; }
  static void store(float* p, F v) { *p = v; }
  // the first n (< kLanes, so 0) elements
  static F load_first(const float*, int) { return 0.0f; }
  static void store_first(float*, F, int) {}
  static F load_f16(const uint16_t* p) { return fp16_to_float(*p); }
  static void store_f16(uint16_t* p, F v) { *p = float_to_fp16(v); }
  static F load_bf16(const uint16_t* p) { return bf16_to_float(*p); }
  static void store_bf16(uint16_t* p, F v) { *p = float_to_bf16(v); }
  static I load_u8(const uint8_t* p) { return *p; }
  static void store_u8(uint8_t* p, I v) { *p = uint8_t(v); }

  static F set1(float v) { return v; }
  static F add(F a, F b) { return a + b; }
  static F sub(F a, F b) { return a - b; }
  static F mul(F a, F b) { return a * b; }
  static F fmadd(F a, F b, F c) { return a * b + c; }  // a * b + c
  static F div(F a, F b) { return a / b; }
  static F min(F a, F b) { return a < b ? a : b; }
  static F max(F a, F b) { return a > b ? a : b; }
  static F abs(F a) { return bits_float(float_bits(a) & 0x7FFFFFFFu); }
  static F rint(F a) { return std::nearbyint(a); }

  static M lt(F a, F b) { return a < b; }
  static M le(F a, F b) { return a <= b; }
  static M ge(F a, F b) { return a >= b; }
  static M eq(F a, F b) { return a == b; }
  static M isnan(F a) { return a != a; }
  static M mor(M a, M b) { return a || b; }
  static M mand(M a, M b) { return a && b; }
  static F select(M m, F a, F b) { return m ? a : b; }
  static I selecti(M m, I a, I b) { return m ? a : b; }

  static I asi(F a) { return int32_t(float_bits(a)); }
  static F asf(I a) { return bits_float(uint32_t(a)); }
  static F cvtif(I a) { return float(a); }
  static I cvtfi(F a) { return int32_t(a); }  // truncation

  static I iset1(int32_t v) { return v; }
  static I iadd(I a, I b) { return int32_t(uint32_t(a) + uint32_t(b)); }
  static I isub(I a, I b) { return int32_t(uint32_t(a) - uint32_t(b)); }
  static I iand(I a, I b) { return a & b; }
  static I ior(I a, I b) { return a | b; }
  template <int n> static I srli(I a) { return int32_t(uint32_t(a) >> n); }
  template <int n> static I slli(I a) { return int32_t(uint32_t(a) << n); }
  template <int n> static I srai(I a) { return a >> n; }
  static I sllv(I a, I n) { return int32_t(uint32_t(a) << n); }
  static I srlv(I a, I n) { return int32_t(uint32_t(a) >> n); }
  static M icmpeq(I a, I b) { return a == b; }
  static M icmpgt(I a, I b) { return a > b; }
  static I imax(I a, I b) { return a > b ? a : b; }

  static F gather(const float* table, I idx) { return table[idx]; }
  static F reduce_batch_max(const F* v) { return v[0]; }
  static F reduce_batch_min(const F* v) { return v[0]; }
  static float reduce_add(F v) { return v; }
  static float reduce_max(F v) { return v; }
  static float reduce_min(F v) { return v; }
};

}  // namespace lowbit

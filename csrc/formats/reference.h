// The scalar reference codecs: the rules of shared/spec/formats.md written as plainly as
// possible. Every vectorised kernel is tested bit for bit against these functions.
#pragma once
#include <cstdint>

namespace lowbit {
namespace ref {

// ---- INT8 / INT4 ------------------------------------------------------------------
struct IntScale {
  float scale;
  int32_t offset;  // 0 for symmetric
};
// Smallest scale accepted before the guard replaces it with 1.0.
constexpr float kMinScale = 1.192092896e-7f;
// Returns true when a scale must be replaced by 1.0 (tiny, zero, negative, NaN or Inf).
bool scale_needs_guard(float s);
IntScale int_scale_symmetric(float mx, float mn, int bits);
IntScale int_scale_asymmetric(float mx, float mn, int bits);
// ggml's Q4_0 rule: s = m / -2^(b-1), m = the value of largest magnitude with its sign
// (mx when |mx| > |mn|, else mn); negative when m is positive. The guard applies to |s|.
IntScale int_scale_signed_max(float mx, float mn, int bits);
// Dynamic per-token rule: absmax / (2^(b-1) - 1).
IntScale int_scale_token(float absmax, int bits);
// The integer code (before masking to `bits`); NaN quantizes like 0.
int32_t int_quantize(float x, IntScale s, int bits, bool symmetric);
float int_dequantize(int32_t q, IntScale s, bool symmetric);

// ---- Minifloats: FLOAT8_E4M3FN, FLOAT4_E2M1, FLOAT4_E1M2 --------------------------------
struct MinifloatSpec {
  int ebits, mbits, bias;
  float max_value;
  bool has_nan;  // E4M3FN: S.1111.111 is NaN; FP4 has no NaN code
};
extern const MinifloatSpec kE4M3FN, kE2M1, kE1M2;
// RNE to the grid, saturating; +-Inf -> +-max; NaN -> NaN code (or +0 code without one).
uint8_t minifloat_encode(float x, const MinifloatSpec& f);
float minifloat_decode(uint8_t code, const MinifloatSpec& f);

// ---- HiFloat8 -----------------------------------------------------------------------
uint8_t hifloat8_encode(float x);
float hifloat8_decode(uint8_t code);

// ---- MX shared exponent (E8M0) ------------------------------------------------------
// Exponent e of the block scale 2^e, clamped to [-127, 127]; an all-zero block gives 0.
// Returns the E8M0 byte (e + 127), 0xFF when amax is NaN or Inf.
uint8_t mx_scale_e8m0(float amax, int emax_elem, bool ascend_bump);
float e8m0_decode(uint8_t byte);  // 2^(byte-127), NaN for 0xFF

}  // namespace ref
}  // namespace lowbit

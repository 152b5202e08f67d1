#include "formats/reference.h"

#include <cmath>
#include <limits>

namespace lowbit {
namespace ref {

// ---- INT ---------------------------------------------------------------------------
bool scale_needs_guard(float s) { return !(s >= kMinScale) || std::isinf(s); }

IntScale int_scale_symmetric(float mx, float mn, int bits) {
  float a = std::fmax(std::fabs(mx), std::fabs(mn));
  // The extra negative code is used when the negative side dominates.
  float q = std::fabs(mn) > std::fabs(mx) ? float(1 << (bits - 1)) : float((1 << (bits - 1)) - 1);
  float s = a / q;
  if (scale_needs_guard(s)) s = 1.0f;
  return {s, 0};
}

IntScale int_scale_signed_max(float mx, float mn, int bits) {
  const float m = std::fabs(mx) > std::fabs(mn) ? mx : mn;
  float s = m / -float(1 << (bits - 1));
  if (scale_needs_guard(std::fabs(s))) s = 1.0f;
  return {s, 0};
}

IntScale int_scale_asymmetric(float mx, float mn, int bits) {
  float hi = std::fmax(mx, 0.0f), lo = std::fmin(mn, 0.0f);
  float s = (hi - lo) / float((1 << bits) - 1);
  float qmin = -float(1 << (bits - 1));
  if (scale_needs_guard(s)) return {1.0f, int32_t(qmin)};
  return {s, int32_t(std::nearbyint(qmin - lo / s))};
}

IntScale int_scale_token(float absmax, int bits) {
  float s = absmax / float((1 << (bits - 1)) - 1);
  if (scale_needs_guard(s)) s = 1.0f;
  return {s, 0};
}

int32_t int_quantize(float x, IntScale s, int bits, bool symmetric) {
  const float lo = -float(1 << (bits - 1)), hi = float((1 << (bits - 1)) - 1);
  if (std::isnan(x)) x = 0.0f;
  float v = symmetric ? x / s.scale : x / s.scale + float(s.offset);
  float q = std::nearbyint(v);
  q = q < lo ? lo : (q > hi ? hi : q);
  return int32_t(q);
}

float int_dequantize(int32_t q, IntScale s, bool symmetric) {
  return symmetric ? float(q) * s.scale : (float(q) - float(s.offset)) * s.scale;
}

// ---- Minifloats --------------------------------------------------------------------
const MinifloatSpec kE4M3FN = {4, 3, 7, 448.0f, true};
const MinifloatSpec kE2M1 = {2, 1, 1, 6.0f, false};
const MinifloatSpec kE1M2 = {1, 2, 1, 1.75f, false};

uint8_t minifloat_encode(float x, const MinifloatSpec& f) {
  const int width = f.ebits + f.mbits;
  const uint8_t sign = std::signbit(x) ? uint8_t(1u << width) : 0;
  if (std::isnan(x)) return f.has_nan ? uint8_t(sign | ((1u << width) - 1)) : 0;
  float a = std::isinf(x) ? f.max_value : std::fabs(x);
  const int emin = 1 - f.bias;  // exponent of the smallest normal
  int e2;
  std::frexp(a, &e2);           // a = m * 2^e2, m in [0.5, 1)
  int e = a == 0.0f ? emin : std::max(e2 - 1, emin);
  // Round to the spacing of the binade that holds a (subnormal spacing below emin).
  float quantum = std::ldexp(1.0f, e - f.mbits);
  float r = std::nearbyint(a / quantum) * quantum;
  if (r > f.max_value) r = f.max_value;
  uint32_t code;
  if (r < std::ldexp(1.0f, emin)) {
    code = uint32_t(r / std::ldexp(1.0f, emin - f.mbits));  // subnormal: exponent field 0
  } else {
    std::frexp(r, &e2);
    int er = e2 - 1;
    uint32_t mant = uint32_t((r / std::ldexp(1.0f, er) - 1.0f) * float(1 << f.mbits));
    code = (uint32_t(er + f.bias) << f.mbits) | mant;
  }
  return uint8_t(sign | code);
}

float minifloat_decode(uint8_t code, const MinifloatSpec& f) {
  const int width = f.ebits + f.mbits;
  const bool neg = (code >> width) & 1u;
  const uint32_t mag = code & ((1u << width) - 1);
  if (f.has_nan && mag == (1u << width) - 1) return std::numeric_limits<float>::quiet_NaN();
  const uint32_t exp = mag >> f.mbits, mant = mag & ((1u << f.mbits) - 1);
  float v = exp == 0 ? std::ldexp(float(mant), 1 - f.bias - f.mbits)
                     : std::ldexp(1.0f + float(mant) / float(1 << f.mbits), int(exp) - f.bias);
  return neg ? -v : v;
}

// ---- HiFloat8 ----------------------------------------------------------------------
namespace {
int hif8_mantissa_bits(int abs_e) { return abs_e <= 3 ? 3 : (abs_e <= 7 ? 2 : 1); }

// Code of the positive normal value 2^e * (1 + m / 2^mbits), -15 <= e <= 15.
uint8_t hif8_normal_code(int e, uint32_t m) {
  const uint32_t neg = e < 0 ? 1u : 0u;
  const uint32_t a = uint32_t(e < 0 ? -e : e);
  if (a == 0) return uint8_t(0x08 | m);
  if (a == 1) return uint8_t(0x10 | (neg << 3) | m);
  if (a <= 3) return uint8_t(0x20 | (neg << 4) | ((a - 2) << 3) | m);
  if (a <= 7) return uint8_t(0x40 | (neg << 4) | ((a - 4) << 2) | m);
  return uint8_t(0x60 | (neg << 4) | ((a - 8) << 1) | m);
}
}  // namespace

uint8_t hifloat8_encode(float x) {
  if (std::isnan(x)) return 0x80;
  const uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  if (std::isinf(x)) return sign | 0x6F;
  float a = std::fabs(x);
  if (a == 0.0f) return 0x00;  // there is no -0
  int e2;
  float m = std::frexp(a, &e2);  // a = m * 2^e2, m in [0.5, 1)
  int e = e2 - 1;
  float frac = 2.0f * m - 1.0f;  // a = 2^e * (1 + frac), exact
  if (e >= 15) return sign | 0x6E;
  if (e < -23) return 0x00;
  if (e == -23) return sign | 0x01;
  if (e <= -16) {  // denormal codes hold pure powers of two 2^-22 .. 2^-16
    int code = e + 23 + (frac >= 0.5f ? 1 : 0);
    return code == 8 ? uint8_t(sign | 0x7E) : uint8_t(sign | code);
  }
  int mbits = hif8_mantissa_bits(e < 0 ? -e : e);
  float scaled = std::ldexp(frac, mbits);
  uint32_t mant = uint32_t(scaled);
  if (scaled - float(mant) >= 0.5f) ++mant;  // ties away from zero
  if (mant == (1u << mbits)) {              // carry into the exponent
    mant = 0;
    ++e;
    if (e == 15) return sign | 0x6E;
  }
  return uint8_t(sign | hif8_normal_code(e, mant));
}

float hifloat8_decode(uint8_t code) {
  if (code == 0x80) return std::numeric_limits<float>::quiet_NaN();
  const bool neg = code & 0x80;
  const uint32_t v = code & 0x7Fu;
  float r;
  if (v == 0x6F) {
    r = std::numeric_limits<float>::infinity();
  } else if (v == 0) {
    r = 0.0f;
  } else if (v < 0x08) {
    r = std::ldexp(1.0f, int(v) - 23);
  } else {
    int abs_e, mbits, esign;
    uint32_t m;
    if (v < 0x10) {
      abs_e = 0, esign = 0, mbits = 3, m = v & 7;
    } else if (v < 0x20) {
      abs_e = 1, esign = (v >> 3) & 1, mbits = 3, m = v & 7;
    } else if (v < 0x40) {
      abs_e = 2 + int((v >> 3) & 1), esign = (v >> 4) & 1, mbits = 3, m = v & 7;
    } else if (v < 0x60) {
      abs_e = 4 + int((v >> 2) & 3), esign = (v >> 4) & 1, mbits = 2, m = v & 3;
    } else {
      abs_e = 8 + int((v >> 1) & 7), esign = (v >> 4) & 1, mbits = 1, m = v & 1;
    }
    r = std::ldexp(1.0f + float(m) / float(1 << mbits), esign ? -abs_e : abs_e);
  }
  return neg ? -r : r;
}

// ---- MX ----------------------------------------------------------------------------
uint8_t mx_scale_e8m0(float amax, int emax_elem, bool ascend_bump) {
  if (!std::isfinite(amax)) return 0xFF;
  if (amax == 0.0f) return 127;
  int e2;
  float m = std::frexp(amax, &e2);  // amax = m * 2^e2
  int fl = e2 - 1;                  // floor(log2 amax)
  if (ascend_bump && 2.0f * m > 1.75f) ++fl;
  int e = fl - emax_elem;
  e = e < -127 ? -127 : (e > 127 ? 127 : e);
  return uint8_t(e + 127);
}

float e8m0_decode(uint8_t byte) {
  if (byte == 0xFF) return std::numeric_limits<float>::quiet_NaN();
  return std::ldexp(1.0f, int(byte) - 127);
}

}  // namespace ref
}  // namespace lowbit

// The per-granule scale rule as the kernels run it: the same results as
// granule_params() (granule_scale.cpp, the readable version) with the per-call decisions
// taken once. Tests compare the kernels against granule_params() bit for bit.
// Internal linkage (static): included by translation units built for different ISAs.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>

#include "formats/half.h"
#include "formats/reference.h"
#include "scales/granule_scale.h"

namespace lowbit {

// What a granule's statistics must hold (see stats_span in quant_driver_impl.h).
enum class StatKind { kAbsMax, kMinMax, kAbsMaxNanInf };

struct GranuleRule {
  enum class Kind { kIntSym, kIntAsym, kIntToken, kDivisor, kMx } kind;
  StatKind stat;
  int bits;  // integer code range (FormatInfo::int_bits)
  float divisor;
  int emax;
  bool bump;
  bool is_mx;
  bool fp16;  // INT scales rounded to fp16 (QuantSpec::fp16_scale)
  bool signed_max;  // symmetric INT: s = m / -2^(b-1) (QuantSpec::signed_max)
};

static inline GranuleRule make_granule_rule(const QuantSpec& s) {
  using K = GranuleRule::Kind;
  const bool token = s.granularity == Granularity::kToken;
  const FormatInfo& info = format_info(s.format);
  GranuleRule r{K::kDivisor, StatKind::kAbsMax, info.int_bits, 1.0f, 0, false, info.is_mx(), false, false};
  switch (info.scale) {
    case ScaleRule::kIntRange:
      r.kind = token ? K::kIntToken : (s.symmetric ? K::kIntSym : K::kIntAsym);
      r.stat = token ? StatKind::kAbsMax : StatKind::kMinMax;
      r.fp16 = s.fp16_scale && !token;
      r.signed_max = s.signed_max && s.symmetric && !token;
      break;
    case ScaleRule::kDivisor: r.divisor = token ? info.token_divisor : info.divisor; break;
    case ScaleRule::kE8M0:
      r.kind = K::kMx;
      r.stat = StatKind::kAbsMaxNanInf;
      r.emax = info.mx_emax;
      r.bump = s.mx_rule == MxRule::kAuto ? info.mx_bump : s.mx_rule == MxRule::kAscend;
      break;
  }
  return r;
}

// 2^(b-127) without calling ldexp; NaN for 0xFF; 2^-127 is the fp32 subnormal 0x00400000.
static inline float e8m0_value(uint8_t b) {
  if (b == 0xFF) return std::numeric_limits<float>::quiet_NaN();
  return bits_float(b == 0 ? 0x00400000u : uint32_t(b) << 23);
}

__attribute__((always_inline)) static inline uint8_t e8m0_from_amax(float amax, int emax, bool bump) {
  if (!(amax <= std::numeric_limits<float>::max())) return 0xFF;  // NaN or Inf in the block
  if (amax == 0.0f) return 127;
  const uint32_t u = float_bits(amax);
  if ((u >> 23) == 0) return ref::mx_scale_e8m0(amax, emax, bump);  // subnormal amax: rare
  int fl = int(u >> 23) - 127;
  if (bump && (u & 0x7FFFFFu) > 0x600000u) ++fl;  // mantissa above 1.75
  int e = fl - emax;
  e = e < -127 ? -127 : (e > 127 ? 127 : e);
  return uint8_t(e + 127);
}

static inline float guard_scale(float s) { return (!(s >= ref::kMinScale) || std::isinf(s)) ? 1.0f : s; }

__attribute__((always_inline)) static inline GranuleParams rule_params(const GranuleRule& r, const GranuleStats& st) {
  using K = GranuleRule::Kind;
  switch (r.kind) {
    case K::kIntSym: {
      const bool empty = st.max_value < st.min_value;  // all NaN
      const float mx = empty ? 0.0f : st.max_value, mn = empty ? 0.0f : st.min_value;
      const float amx = std::fabs(mx), amn = std::fabs(mn);
      if (r.signed_max) {
        const float m = amx > amn ? mx : mn;
        const float s = m / -float(1 << (r.bits - 1));
        const float g = std::fabs(s) >= ref::kMinScale && !std::isinf(s) ? s : 1.0f;
        return {r.fp16 ? fp16_scale_value(g) : g, 0, 0};
      }
      // Branch-free on purpose: which side is larger is random from granule to granule.
      const float q = float((1 << (r.bits - 1)) - 1) + float(amn > amx);
      const float s = guard_scale(std::fmax(amx, amn) / q);
      return {r.fp16 ? fp16_scale_value(s) : s, 0, 0};
    }
    case K::kIntAsym: {
      const bool empty = st.max_value < st.min_value;
      const float hi = empty ? 0.0f : (st.max_value > 0.0f ? st.max_value : 0.0f);
      const float lo = empty ? 0.0f : (st.min_value < 0.0f ? st.min_value : 0.0f);
      const float qmin = -float(1 << (r.bits - 1));
      const float s = (hi - lo) / float((1 << r.bits) - 1);
      if (!(s >= ref::kMinScale) || std::isinf(s)) return {1.0f, int32_t(qmin), 0};
      const float sr = r.fp16 ? fp16_scale_value(s) : s;
      return {sr, int32_t(std::nearbyint(qmin - lo / sr)), 0};
    }
    case K::kIntToken: return {guard_scale(st.max_value / float((1 << (r.bits - 1)) - 1)), 0, 0};
    case K::kDivisor: return {guard_scale(st.max_value / r.divisor), 0, 0};
    case K::kMx: {
      const uint8_t b = e8m0_from_amax(st.max_value, r.emax, r.bump);
      return {e8m0_value(b), 0, b};
    }
  }
  return {1.0f, 0, 0};
}

}  // namespace lowbit

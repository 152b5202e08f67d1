#include "scales/granule_scale.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "formats/half.h"
#include "formats/reference.h"

namespace lowbit {

namespace {
// Scale = absmax / divisor with the INT guard applied (a zero, tiny or non-finite
// scale becomes 1.0 so that an all-zero granule never divides by zero).
float guarded(float absmax, float divisor) {
  float s = absmax / divisor;
  return ref::scale_needs_guard(s) ? 1.0f : s;
}

bool use_ascend_bump(const QuantSpec& spec) {
  if (spec.mx_rule == MxRule::kAuto) return format_info(spec.format).mx_bump;
  return spec.mx_rule == MxRule::kAscend;
}
}  // namespace

float fp16_scale_value(float s) {
  float r = fp16_to_float(float_to_fp16(std::fabs(s)));
  if (!(r <= 65504.0f)) r = 65504.0f;
  if (!(r > 0.0f)) r = 1.0f / 16777216.0f;  // 2^-24, the smallest fp16
  return std::copysign(r, s);
}

void superblock_scales(GranuleParams* p, int64_t n, int sc_max) {
  const float top = float(sc_max);
  for (int64_t b = 0; b < n; b += kSuperBlockGroups) {
    const int64_t e = std::min(n, b + kSuperBlockGroups);
    float m = 0.0f;
    for (int64_t j = b; j < e; ++j) m = std::fmax(m, p[j].scale);
    const float d = fp16_scale_value(m / top);
    for (int64_t j = b; j < e; ++j) {
      const float sc = std::fmin(std::fmax(std::nearbyint(p[j].scale / d), 1.0f), top);
      p[j].scale = d * sc;
    }
  }
}

bool split_superblock_scales(const float* s, int64_t n, int sc_max, float* d, uint8_t* sc) {
  float m = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    if (!(s[j] > 0.0f) || !(s[j] <= 65504.0f * float(sc_max))) return false;
    m = std::fmax(m, s[j]);
  }
  // the largest scale is d x sc_max unless d is an fp16 subnormal: try every multiplier
  for (int top = sc_max; top >= 1; --top) {
    const float dd = m / float(top);
    if (fp16_to_float(float_to_fp16(dd)) != dd || dd * float(top) != m) continue;
    bool ok = true;
    for (int64_t j = 0; j < n && ok; ++j) {
      const float q = std::nearbyint(s[j] / dd);
      ok = q >= 1.0f && q <= float(sc_max) && dd * q == s[j];
      if (ok) sc[j] = uint8_t(q);
    }
    if (ok) {
      *d = dd;
      return true;
    }
  }
  return false;
}

GranuleParams granule_params(const QuantSpec& spec, const GranuleStats& st) {
  const float absmax = std::fmax(std::fabs(st.max_value), std::fabs(st.min_value));
  const bool token = spec.granularity == Granularity::kToken;
  // An all-NaN granule has no finite statistics: treat it as all zero.
  const bool empty = st.max_value < st.min_value;
  const float mx = empty ? 0.0f : st.max_value, mn = empty ? 0.0f : st.min_value;
  const float amax = empty ? 0.0f : absmax;
  const FormatInfo& info = format_info(spec.format);
  switch (info.scale) {
    case ScaleRule::kIntRange: {
      const int bits = info.int_bits;
      ref::IntScale s = token              ? ref::int_scale_token(amax, bits)
                        : spec.signed_max  ? ref::int_scale_signed_max(mx, mn, bits)
                        : spec.symmetric   ? ref::int_scale_symmetric(mx, mn, bits)
                                           : ref::int_scale_asymmetric(mx, mn, bits);
      if (spec.fp16_scale && !token) {
        const float s16 = fp16_scale_value(s.scale);
        if (spec.symmetric || s16 == s.scale) return {s16, s.offset, 0};
        // the zero point of the rounded scale
        const float lo = std::fmin(mn, 0.0f), qmin = -float(1 << (bits - 1));
        return {s16, int32_t(std::nearbyint(qmin - lo / s16)), 0};
      }
      return {s.scale, s.offset, 0};
    }
    case ScaleRule::kDivisor: return {guarded(amax, token ? info.token_divisor : info.divisor), 0, 0};
    case ScaleRule::kE8M0: {
      const float a = st.has_nan ? std::numeric_limits<float>::quiet_NaN() : amax;
      const uint8_t b = ref::mx_scale_e8m0(a, info.mx_emax, use_ascend_bump(spec));
      return {ref::e8m0_decode(b), 0, b};
    }
  }
  return {1.0f, 0, 0};
}

}  // namespace lowbit

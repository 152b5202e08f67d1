// Test helper: quantization of a whole [rows, cols] matrix using only the scalar
// reference codecs and plain loops; the kernels must reproduce it bit for bit.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "formats/format.h"
#include "formats/reference.h"
#include "scales/granule_scale.h"

namespace lowbit {
namespace testing {

inline uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
// NaN compares equal to NaN; everything else bit for bit.
inline bool same_bits(float a, float b) { return (std::isnan(a) && std::isnan(b)) || bits_of(a) == bits_of(b); }

struct RefElement {
  uint8_t code;  // one code per byte (4-bit codes in the low nibble)
  float value;   // dequantized
};

inline RefElement reference_element(const QuantSpec& spec, const GranuleParams& p, float x) {
  const bool sym = spec.symmetric || spec.granularity == Granularity::kToken;
  const FormatInfo& info = format_info(spec.format);
  switch (info.code) {
    case Code::kInt: {
      ref::IntScale s{p.scale, p.offset};
      int32_t q = ref::int_quantize(x, s, info.int_bits, sym);
      float v = std::isnan(x) ? NAN : ref::int_dequantize(q, s, sym);
      return {uint8_t(q & ((1 << info.bits) - 1)), v};  // two's complement in the stored width
    }
    case Code::kHiF8: {
      uint8_t c = ref::hifloat8_encode(x / p.scale);
      return {c, ref::hifloat8_decode(c) * p.scale};
    }
    case Code::kE4M3FN:
    case Code::kE2M1:
    case Code::kE1M2: {
      const ref::MinifloatSpec& f = info.code == Code::kE4M3FN ? ref::kE4M3FN
                                    : info.code == Code::kE1M2 ? ref::kE1M2 : ref::kE2M1;
      float v = x / p.scale;
      uint8_t c = ref::minifloat_encode(v, f);
      return {c, std::isnan(v) ? NAN : ref::minifloat_decode(c, f) * p.scale};
    }
  }
  return {0, NAN};
}

struct RefMatrix {
  std::vector<GranuleParams> params;  // per scale entry
  std::vector<uint8_t> codes;         // rows * cols
  std::vector<float> values;          // rows * cols
};

inline int64_t ref_granule_len(const QuantSpec& spec, int64_t cols) {
  if (format_info(spec.format).is_mx()) return kMxBlock;
  return spec.granularity == Granularity::kGroup ? spec.group_size : cols;
}

inline GranuleStats ref_stats(const float* x, int64_t n) {
  GranuleStats st{-INFINITY, INFINITY, false};
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(x[i])) {
      st.has_nan = true;
      continue;
    }
    st.max_value = std::fmax(st.max_value, x[i]);
    st.min_value = std::fmin(st.min_value, x[i]);
  }
  return st;
}

inline RefMatrix reference_matrix(const QuantSpec& spec, const std::vector<float>& x, int64_t rows, int64_t cols) {
  RefMatrix m;
  const int64_t glen = ref_granule_len(spec, cols), groups = (cols + glen - 1) / glen;
  const bool tensor = spec.granularity == Granularity::kTensor && !format_info(spec.format).is_mx();
  if (tensor) m.params.push_back(granule_params(spec, ref_stats(x.data(), rows * cols)));
  for (int64_t r = 0; !tensor && r < rows; ++r)
    for (int64_t g = 0; g < groups; ++g) {
      int64_t k0 = g * glen, k1 = std::min(cols, k0 + glen);
      m.params.push_back(granule_params(spec, ref_stats(&x[r * cols + k0], k1 - k0)));
    }
  if (spec.superblock_scales)  // the Q4_K grid: each row's runs of 8 group scales together
    for (int64_t r = 0; r < rows; ++r)
      superblock_scales(&m.params[size_t(r * groups)], groups, format_info(spec.format).superblock_sc_max);
  m.codes.resize(x.size());
  m.values.resize(x.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < cols; ++k) {
      const GranuleParams& p = tensor ? m.params[0] : m.params[r * groups + k / glen];
      RefElement e = reference_element(spec, p, x[r * cols + k]);
      m.codes[r * cols + k] = e.code;
      m.values[r * cols + k] = e.value;
    }
  return m;
}

}  // namespace testing
}  // namespace lowbit

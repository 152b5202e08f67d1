// The constant arguments of the float-activation deploy products (linear_packed's format
// ... act_symmetric), parsed once, and their int64-tensor form: linear_packed_spec builds
// it at conversion and linear_packed_by_spec reads it on every call.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <string>

#include "ops/tensor_views.h"

namespace lowbit {

// Parsed and validated.
struct ProductSpec {
  QuantSpec w;
  int64_t cols = 0;
  at::ScalarType weight_dtype = at::kFloat;
  bool act = false;  // activation fake quantization inside the op
  QuantSpec a;
};

inline ProductSpec product_spec(const std::string& format, const std::string& granularity, int64_t group_size,
                                bool symmetric, int64_t cols, at::ScalarType weight_dtype,
                                const std::string& act_format, const std::string& act_granularity,
                                int64_t act_group_size, bool act_symmetric) {
  ProductSpec p;
  p.w = make_spec(format, granularity, group_size, symmetric, "auto");
  TORCH_CHECK_VALUE(cols > 0, "cols: ", cols, " must be positive");
  p.cols = cols;
  float_dtype(weight_dtype, "weight_dtype");
  p.weight_dtype = weight_dtype;
  p.act = !act_format.empty();
  if (p.act) p.a = make_spec(act_format, act_granularity, act_group_size, act_symmetric, "auto");
  return p;
}

// The tensor form: converting ten Python arguments (strings among them) on every call cost
// more than a small layer's whole product; one tensor argument costs about 0.1 us.
constexpr int64_t kSpecLen = 10;
inline at::Tensor encode_spec(const ProductSpec& p) {
  at::Tensor t = at::empty({kSpecLen}, at::kLong);
  int64_t* v = t.data_ptr<int64_t>();
  const int64_t e[kSpecLen] = {int64_t(p.w.format), int64_t(p.w.granularity), p.w.group_size, p.w.symmetric,
                               p.cols, int64_t(p.weight_dtype), p.act ? int64_t(p.a.format) : -1,
                               int64_t(p.a.granularity), p.a.group_size, p.a.symmetric};
  std::copy(e, e + kSpecLen, v);
  return t;
}
inline ProductSpec decode_spec_values(const int64_t* v) {
  const auto in = [](int64_t x, int64_t hi) { return x >= 0 && x <= hi; };
  const auto format = [](int64_t x) {  // a value of a row of the format table
    for (const FormatInfo& row : format_table())
      if (int64_t(row.format) == x) return true;
    return false;
  };
  const int64_t last_gran = int64_t(Granularity::kToken);
  TORCH_CHECK_VALUE(format(v[0]) && in(v[1], last_gran) && in(v[3], 1) && v[4] > 0 &&
                        (v[6] == -1 || (format(v[6]) && in(v[7], last_gran) && in(v[9], 1))),
                    "spec: not a tensor that linear_packed_spec returned");
  ProductSpec p;
  const auto spec = [](int64_t f, int64_t g, int64_t gs, int64_t sym) {
    QuantSpec q;
    q.format = Format(f), q.granularity = Granularity(g), q.group_size = gs, q.symmetric = sym != 0;
    value_errors([&] { validate_spec(q); });
    return q;
  };
  p.w = spec(v[0], v[1], v[2], v[3]);
  p.cols = v[4];
  p.weight_dtype = at::ScalarType(int8_t(v[5]));
  float_dtype(p.weight_dtype, "spec: weight_dtype");
  p.act = v[6] >= 0;
  if (p.act) p.a = spec(v[6], v[7], v[8], v[9]);
  return p;
}
inline ProductSpec decode_spec(const at::Tensor& t) {
  TORCH_CHECK_VALUE(
      t.scalar_type() == at::kLong && t.dim() == 1 && t.numel() == kSpecLen && t.is_contiguous() && t.device().is_cpu(),
      "spec: expected the int64 tensor of ", kSpecLen, " values that linear_packed_spec returns");
  return decode_spec_values(t.data_ptr<int64_t>());
}

}  // namespace lowbit

namespace lowbit {

// Everything a deploy Linear layer's forward needs besides its tensors, chosen once when
// the layer is built (modules/deploy.py): which kernel, the float product's spec, and
// how the activation scale and the bias are taken. linear_deploy reads it on every call.
enum class DeployKernel : int64_t {
  kPacked = 0,       // linear_packed: float activations (fake-quantized inside when the spec says so)
  kInt8 = 1,         // linear_int8: INT8 activations x INT8/INT4 weights, one scale per output row
  kDynamicInt8 = 2,  // linear_dynamic_int8: the opt-in 8-bit compute mode of weight-only layers
};
enum class ActScaleSource : int64_t {
  kNone = 0,     // dynamic activations (per token, MX), or none
  kBuffers = 1,  // static per-tensor: the layer's act_scale / act_offset
  kUnit = 2,     // HiF8 cast: scale 1, no offset
};
struct DeployPlan {
  ProductSpec spec;
  DeployKernel kernel = DeployKernel::kPacked;
  ActScaleSource act = ActScaleSource::kNone;
  bool int32_bias = false;  // INT8 x INT8 with a static scale: bias rounded to int32 steps of s_x * s_w
};

constexpr int64_t kPlanLen = kSpecLen + 3;
inline at::Tensor encode_plan(const DeployPlan& d) {
  at::Tensor t = at::empty({kPlanLen}, at::kLong);
  at::Tensor spec = encode_spec(d.spec);
  std::copy(spec.data_ptr<int64_t>(), spec.data_ptr<int64_t>() + kSpecLen, t.data_ptr<int64_t>());
  int64_t* v = t.data_ptr<int64_t>() + kSpecLen;
  v[0] = int64_t(d.kernel), v[1] = int64_t(d.act), v[2] = d.int32_bias;
  return t;
}
inline DeployPlan decode_plan(const at::Tensor& t) {
  TORCH_CHECK_VALUE(
      t.scalar_type() == at::kLong && t.dim() == 1 && t.numel() == kPlanLen && t.is_contiguous() && t.device().is_cpu(),
      "plan: expected the int64 tensor of ", kPlanLen, " values that deploy_plan returns");
  DeployPlan d;
  const int64_t* v = t.data_ptr<int64_t>() + kSpecLen;
  TORCH_CHECK_VALUE(v[0] >= 0 && v[0] <= 2 && v[1] >= 0 && v[1] <= 2 && (v[2] == 0 || v[2] == 1),
                    "plan: not a tensor that deploy_plan returned");
  d.spec = decode_spec_values(t.data_ptr<int64_t>());
  d.kernel = DeployKernel(v[0]), d.act = ActScaleSource(v[1]), d.int32_bias = v[2] != 0;
  const Format f = d.spec.w.format;
  TORCH_CHECK_VALUE(d.kernel == DeployKernel::kPacked || format_info(f).is_int(), "plan: the integer kernels take ",
                    format_names_where([](const FormatInfo& r) { return r.is_int(); }), " weights, not ",
                    format_info(f).name);
  return d;
}

}  // namespace lowbit

// Adapters between at::Tensor and the torch-free kernels, shared by the ops and the
// algorithm translation units. Inline: only torch-aware code includes this.
#pragma once
#include <ATen/ATen.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/quant_kernels.h"

namespace lowbit {

// Core errors are std::invalid_argument; Python users get a ValueError.
template <class Fn>
auto value_errors(Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
}

inline QuantSpec make_spec(const std::string& format, const std::string& granularity, int64_t group_size,
                    bool symmetric, const std::string& mx_rule, const std::string& scale_dtype = "float32",
                    const std::string& scale_rule = "absmax") {
  return value_errors([&] {
    const std::vector<std::string>& allowed = scale_dtype_names();
    if (std::find(allowed.begin(), allowed.end(), scale_dtype) == allowed.end()) {
      std::string list;
      for (const std::string& n : allowed) list += (list.empty() ? "" : ", ") + n;
      throw std::invalid_argument("scale_dtype: '" + scale_dtype + "' is not allowed; allowed: " + list);
    }
    if (scale_rule != "absmax" && scale_rule != "signed_max")
      throw std::invalid_argument("scale_rule: '" + scale_rule + "' is not allowed; allowed: absmax, signed_max");
    QuantSpec s;
    s.fp16_scale = scale_dtype == "float16";
    s.superblock_scales = scale_dtype != "float32" && scale_dtype != "float16";
    s.signed_max = scale_rule == "signed_max";
    s.format = parse_format(format);
    s.granularity = parse_granularity(granularity);
    s.group_size = group_size;
    s.symmetric = symmetric;
    s.mx_rule = parse_mx_rule(mx_rule);
    const char* grid = format_info(s.format).superblock_scale;
    if (s.superblock_scales && (!grid || scale_dtype != grid))
      throw std::invalid_argument("scale_dtype: '" + scale_dtype + "' is the K-quant grid of " +
                                  superblock_format_names(scale_dtype) + "; " + format + "'s is " +
                                  (grid ? "'" + std::string(grid) + "'" : std::string("none")));
    validate_spec(s);
    return s;
  });
}

// The kernels' dtype of a float scalar type; TypeError naming `arg` otherwise.
inline DType float_dtype(at::ScalarType t, const char* arg) {
  switch (t) {
    case at::kFloat: return DType::kF32;
    case at::kHalf: return DType::kF16;
    case at::kBFloat16: return DType::kBF16;
    default:
      TORCH_CHECK_TYPE(false, arg, ": dtype ", t, " is not supported; allowed: float32, float16, bfloat16");
  }
}
inline DType float_dtype(const at::Tensor& t, const char* arg) { return float_dtype(t.scalar_type(), arg); }

inline void check_input(const at::Tensor& x, const char* arg) {
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.dim() <= 6, arg, ": rank ", x.dim(), " is not supported; allowed ranks: 1 to 6");
  TORCH_CHECK_VALUE(x.device().is_cpu(), arg, ": device ", x.device(), " is not supported; allowed: cpu");
  TORCH_CHECK_VALUE(x.size(-1) > 0, arg, ": the last dimension must not be empty");
}

// A [rows, cols] view with a contiguous last axis: 2-D strided tensors are used as
// they are; any other non-contiguous layout is copied once.
inline at::Tensor matrix_source(const at::Tensor& x) {
  if (x.dim() == 2 && x.stride(1) == 1 && x.stride(0) >= x.size(1)) return x;
  return x.contiguous();
}
inline int64_t ld_of(const at::Tensor& m) { return m.dim() == 2 ? m.stride(0) : m.size(-1); }

inline ConstMatrix as_const(const at::Tensor& m) {
  int64_t cols = m.size(-1);
  return {m.data_ptr(), float_dtype(m, "x"), m.numel() / cols, cols, ld_of(m)};
}
inline MutMatrix as_mut(const at::Tensor& m) {
  int64_t cols = m.size(-1);
  return {m.data_ptr(), float_dtype(m, "out"), m.numel() / cols, cols, ld_of(m)};
}


// The first value of a tensor (an op's per-call activation scale or offset), read in
// place when the tensor already has the wanted dtype: .to().reshape()[0].item() costs
// four dispatcher calls, a quarter of a small layer's whole product.
template <class T>
T first_value(const at::Tensor& t, const char* arg) {
  TORCH_CHECK_VALUE(t.numel() >= 1, arg, ": expected a value, got an empty tensor");
  const at::ScalarType want = std::is_same<T, float>::value ? at::kFloat : at::kInt;
  if (t.scalar_type() == want && t.device().is_cpu()) return *t.data_ptr<T>();  // element [0, .., 0]
  return t.to(want).reshape(-1)[0].item<T>();
}

// Checks and adapts stored scales/offsets to a ScaleView.
struct ScaleArgs {
  at::Tensor scale, offset;
  ScaleView view;
};
inline ScaleArgs scale_args(const QuantSpec& spec, const at::Tensor& scale, const at::Tensor& offset, int64_t rows,
                     int64_t cols) {
  const int64_t n = scale_count(spec, rows, cols);
  ScaleArgs a;
  const bool mx = format_info(spec.format).is_mx();
  TORCH_CHECK_TYPE(scale.scalar_type() == (mx ? at::kByte : at::kFloat), "scale: dtype ", scale.scalar_type(),
                   " is not allowed for ", format_info(spec.format).name, "; expected ",
                   mx ? "uint8 (E8M0 bytes)" : "float32");
  TORCH_CHECK_VALUE(scale.numel() == n, "scale: expected ", n, " entries for this shape and granularity, got ",
                    scale.numel());
  a.scale = scale.contiguous();
  if (mx) {
    a.view.e8m0 = a.scale.data_ptr<uint8_t>();
  } else {
    a.view.scale = a.scale.data_ptr<float>();
  }
  if (offset.defined() && offset.numel() > 0) {
    TORCH_CHECK_TYPE(offset.scalar_type() == at::kInt, "offset: dtype ", offset.scalar_type(),
                     " is not allowed; expected int32");
    TORCH_CHECK_VALUE(offset.numel() == n, "offset: expected ", n, " entries, got ", offset.numel());
    a.offset = offset.contiguous();
    a.view.offset = a.offset.data_ptr<int32_t>();
  }
  return a;
}

// QDQ of a 2-D tensor with scales/offsets computed from itself (dynamic) for `spec`.
inline at::Tensor qdq_dynamic(const at::Tensor& x2d, const QuantSpec& spec) {
  at::Tensor src = x2d.contiguous();
  at::Tensor out = at::empty_like(src);
  fake_quant_dynamic(as_const(src), spec, as_mut(out));
  return out;
}

}  // namespace lowbit

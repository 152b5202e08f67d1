// torch.ops.lowbit.linear_packed / linear_int8: the deploy layers' matrix products on
// packed weights (csrc/deploy), for any leading shape [..., K] -> [..., N].
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

#include "deploy/packed_linear.h"
#include "ops/tensor_views.h"

namespace lowbit {
namespace {

DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kF32;
    case at::kHalf: return DType::kF16;
    case at::kBFloat16: return DType::kBF16;
    default:
      TORCH_CHECK_TYPE(false, "weight_dtype: ", t, " is not supported; allowed: float32, float16, bfloat16");
  }
}

at::Tensor float_bias(const c10::optional<at::Tensor>& bias, int64_t n) {
  if (!bias.has_value() || !bias->defined()) return at::Tensor();
  TORCH_CHECK_VALUE(bias->numel() == n, "bias: ", bias->numel(), " entries, expected ", n);
  return bias->to(at::kFloat).contiguous();
}

// x [..., K] as a [rows, K] matrix and the [..., N] output it produces.
struct Operands {
  at::Tensor src, out;
};
Operands operands(const at::Tensor& x, int64_t cols, int64_t n) {
  check_input(x, "x");
  float_dtype(x, "x");
  TORCH_CHECK_VALUE(x.size(-1) == cols, "x: last dimension ", x.size(-1), " does not match the weight's ", cols,
                    " input features");
  Operands o;
  o.src = x.dim() == 2 ? matrix_source(x) : x.contiguous();
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = n;
  o.out = at::empty(shape, x.options());
  return o;
}

at::Tensor linear_packed_op(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                            const at::Tensor& offset, const c10::optional<at::Tensor>& scale1,
                            const c10::optional<at::Tensor>& bias, const std::string& format,
                            const std::string& granularity, int64_t group_size, bool symmetric, int64_t cols,
                            at::ScalarType weight_dtype) {
  TORCH_CHECK_TYPE(packed.scalar_type() == at::kByte, "packed: dtype ", packed.scalar_type(), "; expected uint8");
  TORCH_CHECK_VALUE(packed.dim() == 2, "packed: expected a 2-D [out_features, bytes] tensor, got rank ", packed.dim());
  const QuantSpec spec = make_spec(format, granularity, group_size, symmetric, "auto");
  const int64_t n = packed.size(0);
  Operands o = operands(x, cols, n);
  TORCH_CHECK_VALUE(packed.size(1) == packed_row_bytes(spec, cols), "packed: ", packed.size(1),
                    " bytes per row do not match ", packed_row_bytes(spec, cols), " for ", cols, " columns of ",
                    format);
  at::Tensor codes = packed.contiguous();
  ScaleArgs sa = scale_args(spec, scale, offset, n, cols);
  at::Tensor s1, b = float_bias(bias, n);
  PackedWeight w;
  w.codes = codes.data_ptr<uint8_t>();
  w.row_bytes = codes.size(1);
  w.rows = n;
  w.cols = cols;
  w.spec = spec;
  w.scales = sa.view;
  w.value_dtype = dtype_of(weight_dtype);
  if (scale1.has_value() && scale1->defined()) {
    TORCH_CHECK_VALUE(scale1->numel() == n, "scale1: ", scale1->numel(), " entries, expected ", n);
    s1 = scale1->to(at::kFloat).contiguous();
    w.row_scale1 = s1.data_ptr<float>();
  }
  value_errors([&] {
    linear_packed(as_const(o.src), w, b.defined() ? b.data_ptr<float>() : nullptr, as_mut(o.out));
  });
  return o.out;
}

at::Tensor linear_int8_op(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& w_scale, int64_t bits,
                          int64_t cols, bool per_token, const at::Tensor& act_scale, const at::Tensor& act_offset,
                          const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK_TYPE(packed.scalar_type() == at::kByte, "packed: dtype ", packed.scalar_type(), "; expected uint8");
  TORCH_CHECK_VALUE(packed.dim() == 2, "packed: expected a 2-D tensor, got rank ", packed.dim());
  TORCH_CHECK_TYPE(w_scale.scalar_type() == at::kFloat, "w_scale: expected float32");
  const int64_t n = packed.size(0);
  TORCH_CHECK_VALUE(w_scale.numel() == n || w_scale.numel() == 1, "w_scale: ", w_scale.numel(),
                    " entries; expected 1 or ", n);
  Operands o = operands(x, cols, n);
  at::Tensor codes = packed.contiguous(), ws = w_scale.contiguous(), b = float_bias(bias, n);
  IntWeight w;
  w.codes = codes.data_ptr<uint8_t>();
  w.row_bytes = codes.size(1);
  w.rows = n;
  w.cols = cols;
  w.bits = int(bits);
  w.scale = ws.data_ptr<float>();
  w.per_tensor = ws.numel() == 1 && n != 1;
  Int8Activation act;
  act.per_token = per_token;
  if (!per_token) {
    act.scale = act_scale.to(at::kFloat).reshape(-1)[0].item<float>();
    act.offset = act_offset.numel() ? act_offset.to(at::kInt).reshape(-1)[0].item<int32_t>() : 0;
  }
  value_errors([&] { linear_int8(as_const(o.src), act, w, b.defined() ? b.data_ptr<float>() : nullptr, as_mut(o.out)); });
  return o.out;
}

}  // namespace
}  // namespace lowbit

TORCH_LIBRARY_FRAGMENT(lowbit, m) {
  using namespace lowbit;
  m.def("linear_packed(Tensor x, Tensor packed, Tensor scale, Tensor offset, Tensor? scale1, Tensor? bias, "
        "str format, str granularity, int group_size, bool symmetric, int cols, ScalarType weight_dtype) -> Tensor");
  m.def("linear_int8(Tensor x, Tensor packed, Tensor w_scale, int bits, int cols, bool per_token, "
        "Tensor act_scale, Tensor act_offset, Tensor? bias) -> Tensor");
  m.def("int8_kernel() -> str");
  m.impl("linear_packed", c10::DispatchKey::CPU, TORCH_FN(linear_packed_op));
  m.impl("linear_int8", c10::DispatchKey::CPU, TORCH_FN(linear_int8_op));
  m.impl("int8_kernel", TORCH_FN(int8_kernel_name));
}

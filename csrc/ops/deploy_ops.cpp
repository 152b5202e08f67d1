// torch.ops.lowbit.linear_packed / linear_int8: the deploy layers' matrix products on
// packed weights (csrc/deploy), for any leading shape [..., K] -> [..., N].
#include <ATen/ATen.h>
#include <cmath>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "deploy/dynamic_int8.h"
#include "deploy/packed_linear.h"
#include "deploy/scratch.h"
#include "formats/half.h"
#include "ops/product_spec.h"
#include "ops/tensor_views.h"

namespace lowbit {
namespace {

// A static activation scale and zero point as the kernels need them: the scale finite
// and positive, the zero point an int8 value (anything else overflows their arithmetic).
void check_static_act(float scale, int32_t offset) {
  TORCH_CHECK_VALUE(std::isfinite(scale) && scale > 0.0f, "act_scale: ", scale, " is not a finite positive scale");
  TORCH_CHECK_VALUE(offset >= -128 && offset <= 127, "act_offset: ", offset, " is outside the int8 range [-128, 127]");
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

// Everything a product needs besides the activations, kept alive by its tensors.
struct WeightArgs {
  bool integer = false;
  PackedWeight packed;
  IntWeight intw;
  Int8Activation act;
  at::Tensor codes, s1_keep, ws_keep;
  ScaleArgs sa;
  ActQuant act_quant;  // float-activation full quantization

  void run(const ConstMatrix& x, const float* bias, const MutMatrix& y) const {
    if (integer) return value_errors([&] { linear_int8(x, act, intw, bias, y); });
    value_errors([&] { linear_packed(x, packed, bias, y, act_quant); });
  }
};

WeightArgs packed_args(const at::Tensor& packed, const at::Tensor& scale, const at::Tensor& offset,
                       const c10::optional<at::Tensor>& scale1, const QuantSpec& spec, int64_t cols,
                       at::ScalarType weight_dtype) {
  TORCH_CHECK_TYPE(packed.scalar_type() == at::kByte, "packed: dtype ", packed.scalar_type(), "; expected uint8");
  TORCH_CHECK_VALUE(packed.dim() == 2, "packed: expected a 2-D [out_features, bytes] tensor, got rank ", packed.dim());
  const int64_t n = packed.size(0);
  TORCH_CHECK_VALUE(packed.size(1) == packed_row_bytes(spec, cols), "packed: ", packed.size(1),
                    " bytes per row do not match ", packed_row_bytes(spec, cols), " for ", cols, " columns of ",
                    format_info(spec.format).name);
  WeightArgs a;
  a.codes = packed.contiguous();
  a.sa = scale_args(spec, scale, offset, n, cols);
  PackedWeight& w = a.packed;
  w.codes = a.codes.data_ptr<uint8_t>();
  w.row_bytes = a.codes.size(1);
  w.rows = n;
  w.cols = cols;
  w.spec = spec;
  w.scales = a.sa.view;
  w.value_dtype = float_dtype(weight_dtype, "weight_dtype");
  if (scale1.has_value() && scale1->defined()) {
    TORCH_CHECK_VALUE(scale1->numel() == n, "scale1: ", scale1->numel(), " entries, expected ", n);
    a.s1_keep = scale1->to(at::kFloat).contiguous();
    w.row_scale1 = a.s1_keep.data_ptr<float>();
  }
  return a;
}

// The integer products' weight tensors: uint8 codes [N, row bytes], float32 scales.
void check_int_weight(const at::Tensor& packed, const at::Tensor& w_scale) {
  TORCH_CHECK_TYPE(packed.scalar_type() == at::kByte, "packed: dtype ", packed.scalar_type(), "; expected uint8");
  TORCH_CHECK_VALUE(packed.dim() == 2, "packed: expected a 2-D tensor, got rank ", packed.dim());
  TORCH_CHECK_TYPE(w_scale.scalar_type() == at::kFloat, "w_scale: expected float32");
}

WeightArgs int8_args(const at::Tensor& packed, const at::Tensor& w_scale, int64_t bits, int64_t cols, bool per_token,
                     const at::Tensor& act_scale, const at::Tensor& act_offset) {
  check_int_weight(packed, w_scale);
  const int64_t n = packed.size(0);
  TORCH_CHECK_VALUE(w_scale.numel() == n || w_scale.numel() == 1, "w_scale: ", w_scale.numel(),
                    " entries; expected 1 or ", n);
  WeightArgs a;
  a.integer = true;
  a.codes = packed.contiguous();
  a.ws_keep = w_scale.contiguous();
  IntWeight& w = a.intw;
  w.codes = a.codes.data_ptr<uint8_t>();
  w.row_bytes = a.codes.size(1);
  w.rows = n;
  w.cols = cols;
  w.bits = int(bits);
  w.scale = a.ws_keep.data_ptr<float>();
  w.per_tensor = a.ws_keep.numel() == 1 && n != 1;
  a.act.per_token = per_token;
  if (!per_token) {
    a.act.scale = first_value<float>(act_scale, "act_scale");
    a.act.offset = act_offset.numel() ? first_value<int32_t>(act_offset, "act_offset") : 0;
    check_static_act(a.act.scale, a.act.offset);
  }
  return a;
}

// Activation fake quantization applied inside a product op (none unless `enabled`).
ActQuant act_args(bool enabled, const QuantSpec& spec, const c10::optional<at::Tensor>& act_scale,
                  const c10::optional<at::Tensor>& act_offset) {
  ActQuant a;
  if (!enabled) return a;
  a.enabled = true;
  a.spec = spec;
  a.dynamic = a.spec.granularity != Granularity::kTensor || format_info(a.spec.format).is_mx();
  if (!a.dynamic) {
    TORCH_CHECK_VALUE(act_scale.has_value() && act_scale->numel() == 1, "act_scale: a static per-tensor "
                      "activation needs one scale");
    a.scale = first_value<float>(*act_scale, "act_scale");
    if (act_offset.has_value() && act_offset->numel() == 1)
      a.offset = first_value<int32_t>(*act_offset, "act_offset");
    check_static_act(a.scale, a.offset);
  }
  return a;
}

// AWQ / SmoothQuant layers: the activations divided by the smoothing factors as the
// fake-quant module computes them (torch's x / s.to(x.dtype): s rounded to x's dtype, the
// quotient too). Small inputs (decoding) go into a per-thread buffer, which saves the ATen
// division's dispatch and allocation (about 1 us); larger ones use that division, which is
// vectorized and parallel (`keep` holds its result).
ConstMatrix smoothed(const ConstMatrix& x, const c10::optional<at::Tensor>& smooth, const at::Tensor& src,
                     at::Tensor& keep) {
  if (!smooth.has_value() || !smooth->defined()) return x;
  TORCH_CHECK_VALUE(smooth->numel() == x.cols, "smooth: ", smooth->numel(), " entries, expected one per input ",
                    "feature of x (", x.cols, ")");
  if (x.rows * x.cols > (1 << 14)) {
    keep = (src / smooth->reshape({x.cols}).to(src.scalar_type())).contiguous();
    return as_const(keep);
  }
  const at::Tensor s = smooth->scalar_type() == at::kFloat && smooth->is_contiguous() ? *smooth
                                                                                       : smooth->to(at::kFloat).contiguous();
  const float* sv = s.data_ptr<float>();
  thread_local GrowBuffer<uint8_t> buf;
  const int64_t es = dtype_bytes(x.dtype);
  uint8_t* out = buf.get(x.rows * x.cols * es);
  for (int64_t r = 0; r < x.rows; ++r) {
    const uint8_t* in = static_cast<const uint8_t*>(x.data) + r * x.ld * es;
    uint8_t* dst = out + r * x.cols * es;
    if (x.dtype == DType::kF32) {
      const float* a = reinterpret_cast<const float*>(in);
      float* d = reinterpret_cast<float*>(dst);
      for (int64_t k = 0; k < x.cols; ++k) d[k] = a[k] / sv[k];
      continue;
    }
    const uint16_t* a = reinterpret_cast<const uint16_t*>(in);
    uint16_t* d = reinterpret_cast<uint16_t*>(dst);
    for (int64_t k = 0; k < x.cols; ++k)
      d[k] = x.dtype == DType::kBF16 ? float_to_bf16(bf16_to_float(a[k]) / bf16_to_float(float_to_bf16(sv[k])))
                                     : float_to_fp16(fp16_to_float(a[k]) / fp16_to_float(float_to_fp16(sv[k])));
  }
  return {out, x.dtype, x.rows, x.cols, x.cols};
}

at::Tensor linear_by_spec(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                          const at::Tensor& offset, const c10::optional<at::Tensor>& scale1,
                          const c10::optional<at::Tensor>& bias, const ProductSpec& p,
                          const c10::optional<at::Tensor>& act_scale, const c10::optional<at::Tensor>& act_offset,
                          const c10::optional<at::Tensor>& smooth = c10::nullopt) {
  WeightArgs w = packed_args(packed, scale, offset, scale1, p.w, p.cols, p.weight_dtype);
  w.act_quant = act_args(p.act, p.a, act_scale, act_offset);
  const int64_t n = packed.size(0);
  Operands o = operands(x, p.cols, n);
  at::Tensor b = float_bias(bias, n);
  at::Tensor keep;
  w.run(smoothed(as_const(o.src), smooth, o.src, keep), b.defined() ? b.data_ptr<float>() : nullptr, as_mut(o.out));
  return o.out;
}

at::Tensor linear_packed_op(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                            const at::Tensor& offset, const c10::optional<at::Tensor>& scale1,
                            const c10::optional<at::Tensor>& bias, const std::string& format,
                            const std::string& granularity, int64_t group_size, bool symmetric, int64_t cols,
                            at::ScalarType weight_dtype, const std::string& act_format,
                            const std::string& act_granularity, int64_t act_group_size, bool act_symmetric,
                            const c10::optional<at::Tensor>& act_scale, const c10::optional<at::Tensor>& act_offset) {
  const ProductSpec p = product_spec(format, granularity, group_size, symmetric, cols, weight_dtype, act_format,
                                     act_granularity, act_group_size, act_symmetric);
  return linear_by_spec(x, packed, scale, offset, scale1, bias, p, act_scale, act_offset);
}

at::Tensor linear_packed_spec_op(const std::string& format, const std::string& granularity, int64_t group_size,
                                 bool symmetric, int64_t cols, at::ScalarType weight_dtype,
                                 const std::string& act_format, const std::string& act_granularity,
                                 int64_t act_group_size, bool act_symmetric) {
  return encode_spec(product_spec(format, granularity, group_size, symmetric, cols, weight_dtype, act_format,
                                  act_granularity, act_group_size, act_symmetric));
}

at::Tensor linear_packed_by_spec_op(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                                    const at::Tensor& offset, const c10::optional<at::Tensor>& scale1,
                                    const c10::optional<at::Tensor>& bias, const at::Tensor& spec,
                                    const c10::optional<at::Tensor>& act_scale,
                                    const c10::optional<at::Tensor>& act_offset,
                                    const c10::optional<at::Tensor>& smooth) {
  return linear_by_spec(x, packed, scale, offset, scale1, bias, decode_spec(spec), act_scale, act_offset, smooth);
}

at::Tensor linear_int8_op(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& w_scale, int64_t bits,
                          int64_t cols, bool per_token, const at::Tensor& act_scale, const at::Tensor& act_offset,
                          const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& smooth) {
  const WeightArgs w = int8_args(packed, w_scale, bits, cols, per_token, act_scale, act_offset);
  const int64_t n = packed.size(0);
  Operands o = operands(x, cols, n);
  at::Tensor b = float_bias(bias, n);
  at::Tensor keep;
  w.run(smoothed(as_const(o.src), smooth, o.src, keep), b.defined() ? b.data_ptr<float>() : nullptr, as_mut(o.out));
  return o.out;
}

// The 8-bit compute mode of a weight-only INT8/INT4 layer (deploy/dynamic_int8.h).
// w_scale: one value, one per row, or one per row and group of `group_size` columns.
at::Tensor linear_dynamic_int8_op(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& w_scale,
                                  int64_t bits, int64_t group_size, int64_t cols,
                                  const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& smooth) {
  check_int_weight(packed, w_scale);
  TORCH_CHECK_VALUE(bits == 8 || bits == 4, "bits: ", bits, "; allowed: 8, 4");
  TORCH_CHECK_VALUE(cols >= 1, "cols: ", cols, "; expected at least 1");
  const int64_t n = packed.size(0);
  const int64_t g = group_size > 0 && group_size < cols ? group_size : cols;
  const int64_t groups = (cols + g - 1) / g;
  TORCH_CHECK_VALUE(w_scale.numel() == 1 || w_scale.numel() == n * groups, "w_scale: ", w_scale.numel(),
                    " entries; expected 1 or ", n * groups, " (", n, " rows x ", groups, " groups)");
  const at::Tensor codes = packed.contiguous(), ws = w_scale.contiguous();
  GroupedIntWeight w;
  w.codes = codes.data_ptr<uint8_t>();
  w.rows = n;
  w.cols = cols;
  w.row_bytes = codes.size(1);
  w.bits = int(bits);
  w.scale = ws.data_ptr<float>();
  w.group = g;
  w.per_tensor = ws.numel() == 1 && n * groups != 1;
  Operands o = operands(x, cols, n);
  at::Tensor b = float_bias(bias, n);
  at::Tensor keep;
  const ConstMatrix src = smoothed(as_const(o.src), smooth, o.src, keep);
  value_errors([&] { linear_dynamic_int8(src, w, b.defined() ? b.data_ptr<float>() : nullptr, as_mut(o.out)); });
  return o.out;
}

// The bias of an INT8 x INT8 layer with a static activation scale, in int32 steps of
// s = act_scale * w_scale[n], rounded to x's dtype: the ATen ops of the fake-quant layer's
// effective_bias (modules/common.py), so both round alike.
at::Tensor int32_step_bias(const at::Tensor& bias, const at::Tensor& w_scale, const at::Tensor& act_scale,
                           at::ScalarType dtype) {
  const at::Tensor s = act_scale.reshape({}) * w_scale.reshape(-1);
  const at::Tensor q = at::clamp(at::round(bias.to(at::kFloat) / s), int64_t{-2147483648LL}, int64_t{2147483647LL});
  return (q * s).to(dtype);
}

at::Tensor deploy_plan_op(const at::Tensor& spec, int64_t kernel, int64_t act_source, bool int32_bias) {
  TORCH_CHECK_VALUE(kernel >= 0 && kernel <= 2, "kernel: ", kernel, "; allowed: 0 (packed), 1 (int8), 2 (dynamic int8)");
  TORCH_CHECK_VALUE(act_source >= 0 && act_source <= 2, "act_source: ", act_source,
                    "; allowed: 0 (none), 1 (the layer's buffers), 2 (unit scale)");
  DeployPlan d;
  d.spec = decode_spec(spec);
  d.kernel = DeployKernel(kernel), d.act = ActScaleSource(act_source), d.int32_bias = int32_bias;
  const at::Tensor t = encode_plan(d);
  (void)decode_plan(t);  // the same checks as every call
  return t;
}

// What a plan takes from a deploy op's optional tensors: the bias (rounded to int32 steps
// where the plan says so) and the static activation scale and offset from their source
// (the layer's buffers, scale 1 for the HiF8 cast, or none).
struct PlannedOperands {
  c10::optional<at::Tensor> bias, act_scale, act_offset;
};
PlannedOperands planned_operands(const DeployPlan& d, const at::Tensor& x, const at::Tensor& w_scale,
                                 const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& act_scale,
                                 const c10::optional<at::Tensor>& act_offset) {
  const bool have = act_scale.has_value() && act_scale->defined();
  TORCH_CHECK_VALUE(d.act != ActScaleSource::kBuffers || have, "act_scale: the plan takes a static activation "
                    "scale, none was given");
  PlannedOperands o;
  o.bias = bias;
  if (d.int32_bias && bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(have, "act_scale: an int32-step bias needs the static activation scale");
    o.bias = int32_step_bias(*bias, w_scale, *act_scale, x.scalar_type());
  }
  static const at::Tensor unit = at::ones({1, 1});
  if (d.act == ActScaleSource::kUnit) o.act_scale = unit;
  if (d.act == ActScaleSource::kBuffers) o.act_scale = act_scale, o.act_offset = act_offset;
  return o;
}

// The integer kernels' per-row weight scale (times a folded BatchNorm's rows) and their
// static activation offset (none: 0).
at::Tensor int_weight_scale(const at::Tensor& w_scale, const c10::optional<at::Tensor>& w_scale1) {
  return w_scale1.has_value() && w_scale1->defined() ? w_scale.reshape(-1) * w_scale1->reshape(-1) : w_scale;
}
at::Tensor int_act_offset(const c10::optional<at::Tensor>& act_offset) {
  return act_offset.has_value() && act_offset->defined() ? *act_offset : at::empty({0}, at::kInt);
}

// A deploy Linear layer's forward: the plan (deploy_plan, built with the layer)
// picks the kernel and where the activation scale and the bias come from.
at::Tensor linear_deploy_op(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& w_scale,
                            const at::Tensor& w_offset, const c10::optional<at::Tensor>& w_scale1,
                            const c10::optional<at::Tensor>& bias, const at::Tensor& plan,
                            const c10::optional<at::Tensor>& act_scale, const c10::optional<at::Tensor>& act_offset,
                            const c10::optional<at::Tensor>& smooth) {
  const DeployPlan d = decode_plan(plan);
  const PlannedOperands o = planned_operands(d, x, w_scale, bias, act_scale, act_offset);
  const int64_t bits = format_info(d.spec.w.format).bits;
  switch (d.kernel) {
    case DeployKernel::kDynamicInt8:
      return linear_dynamic_int8_op(x, packed, w_scale, bits, d.spec.w.group_size, d.spec.cols, o.bias, smooth);
    case DeployKernel::kInt8: {
      const bool per_token = d.act != ActScaleSource::kBuffers;  // (per token: no static scale is read)
      return linear_int8_op(x, packed, int_weight_scale(w_scale, w_scale1), bits, d.spec.cols, per_token,
                            per_token ? at::Tensor() : *o.act_scale, int_act_offset(o.act_offset), o.bias, smooth);
    }
    case DeployKernel::kPacked:
      break;
  }
  return linear_by_spec(x, packed, w_scale, w_offset, w_scale1, o.bias, d.spec, o.act_scale, o.act_offset, smooth);
}

// NCHW input and its output for a convolution with `cout` output channels.
struct ConvTensors {
  at::Tensor x, y, bias;
  Conv2dArgs a;
};
ConvTensors conv_tensors(const at::Tensor& x_in, int64_t cout, const c10::optional<at::Tensor>& bias,
                         at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK_VALUE(x_in.dim() == 4, "x: expected [N, C, H, W], got rank ", x_in.dim());
  TORCH_CHECK_VALUE(kernel.size() == 2 && stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
                    "kernel/stride/padding/dilation: expected 2 values each");
  TORCH_CHECK_VALUE(groups >= 1 && x_in.size(1) % groups == 0, "groups: ", groups, " does not divide ", x_in.size(1),
                    " input channels");
  ConvTensors t;
  Conv2dArgs& a = t.a;
  // channels-last input stays so (the kernels read it, or convert); the output follows it, as torch's does
  a.channels_last = !x_in.is_contiguous() && x_in.is_contiguous(at::MemoryFormat::ChannelsLast);
  t.x = a.channels_last ? x_in : x_in.contiguous();
  a.dtype = float_dtype(t.x, "x");
  a.n = t.x.size(0), a.c = t.x.size(1), a.h = t.x.size(2), a.w = t.x.size(3);
  a.cout = cout, a.groups = groups, a.cg = a.c / groups;
  a.kh = kernel[0], a.kw = kernel[1], a.sy = stride[0], a.sx = stride[1], a.py = padding[0], a.px = padding[1];
  a.dy = dilation[0], a.dx = dilation[1];
  a.ho = (a.h + 2 * a.py - a.dy * (a.kh - 1) - 1) / a.sy + 1;
  a.wo = (a.w + 2 * a.px - a.dx * (a.kw - 1) - 1) / a.sx + 1;
  TORCH_CHECK_VALUE(a.ho > 0 && a.wo > 0, "x: ", a.h, "x", a.w, " is smaller than the kernel");
  t.y = at::empty({a.n, a.cout, a.ho, a.wo},
                  t.x.options().memory_format(a.channels_last ? at::MemoryFormat::ChannelsLast
                                                              : at::MemoryFormat::Contiguous));
  t.bias = float_bias(bias, cout);
  a.x = t.x.data_ptr();
  a.y = t.y.data_ptr();
  return t;
}

at::Tensor conv2d_packed_op(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                            const at::Tensor& offset, const c10::optional<at::Tensor>& scale1,
                            const c10::optional<at::Tensor>& bias, const std::string& format,
                            const std::string& granularity, int64_t group_size, bool symmetric, int64_t cols,
                            at::ScalarType weight_dtype, at::IntArrayRef kernel, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                            const std::string& act_format, bool act_symmetric,
                            const c10::optional<at::Tensor>& act_scale, const c10::optional<at::Tensor>& act_offset) {
  const ProductSpec p = product_spec(format, granularity, group_size, symmetric, cols, weight_dtype, act_format,
                                     "tensor", 0, act_symmetric);
  const WeightArgs w = packed_args(packed, scale, offset, scale1, p.w, p.cols, p.weight_dtype);
  // static per-tensor activations: quantized inside conv2d_packed (fused into the direct
  // kernel's copy of the input, or one pass before it)
  const ActQuant act = act_args(p.act, p.a, act_scale, act_offset);
  ConvTensors t = conv_tensors(x, packed.size(0), bias, kernel, stride, padding, dilation, groups);
  value_errors([&] { conv2d_packed(t.a, w.packed, t.bias.defined() ? t.bias.data_ptr<float>() : nullptr, act); });
  return t.y;
}

at::Tensor conv2d_int8_op(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& w_scale, int64_t bits,
                          int64_t cols, const at::Tensor& act_scale, const at::Tensor& act_offset,
                          const c10::optional<at::Tensor>& bias, at::IntArrayRef kernel, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const WeightArgs w = int8_args(packed, w_scale, bits, cols, false, act_scale, act_offset);
  ConvTensors t = conv_tensors(x, packed.size(0), bias, kernel, stride, padding, dilation, groups);
  value_errors([&] { conv2d_int8(t.a, w.act, w.intw, t.bias.defined() ? t.bias.data_ptr<float>() : nullptr); });
  return t.y;
}

// A deploy Conv2d layer's forward (modules/deploy.py): the plan as for Linear layers (the
// 8-bit compute mode has no Conv2d kernel), the geometry as the int64 tensor
// [kh, kw, stride y, stride x, pad y, pad x, dilation y, dilation x, groups].
at::Tensor conv2d_deploy_op(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& w_scale,
                            const at::Tensor& w_offset, const c10::optional<at::Tensor>& w_scale1,
                            const c10::optional<at::Tensor>& bias, const at::Tensor& plan, const at::Tensor& geometry,
                            const c10::optional<at::Tensor>& act_scale, const c10::optional<at::Tensor>& act_offset) {
  const DeployPlan d = decode_plan(plan);
  TORCH_CHECK_VALUE(d.kernel != DeployKernel::kDynamicInt8, "plan: the 8-bit compute mode has no Conv2d kernel");
  TORCH_CHECK_VALUE(geometry.scalar_type() == at::kLong && geometry.dim() == 1 && geometry.numel() == 9 &&
                        geometry.is_contiguous() && geometry.device().is_cpu(),
                    "geometry: expected an int64 tensor [kh, kw, sy, sx, py, px, dy, dx, groups]");
  const int64_t* g = geometry.data_ptr<int64_t>();
  const std::vector<int64_t> kernel{g[0], g[1]}, stride{g[2], g[3]}, padding{g[4], g[5]}, dilation{g[6], g[7]};
  const PlannedOperands o = planned_operands(d, x, w_scale, bias, act_scale, act_offset);
  if (d.kernel == DeployKernel::kInt8) {
    TORCH_CHECK_VALUE(o.act_scale.has_value(), "act_scale: the integer Conv2d kernel needs the static activation "
                      "scale");
    return conv2d_int8_op(x, packed, int_weight_scale(w_scale, w_scale1), format_info(d.spec.w.format).bits,
                          d.spec.cols, *o.act_scale, int_act_offset(o.act_offset), o.bias, kernel, stride, padding,
                          dilation, g[8]);
  }
  const WeightArgs w = packed_args(packed, w_scale, w_offset, w_scale1, d.spec.w, d.spec.cols, d.spec.weight_dtype);
  const ActQuant act = act_args(d.spec.act, d.spec.a, o.act_scale, o.act_offset);
  ConvTensors t = conv_tensors(x, packed.size(0), o.bias, kernel, stride, padding, dilation, g[8]);
  value_errors([&] { conv2d_packed(t.a, w.packed, t.bias.defined() ? t.bias.data_ptr<float>() : nullptr, act); });
  return t.y;
}

}  // namespace
}  // namespace lowbit

TORCH_LIBRARY_FRAGMENT(lowbit, m) {
  using namespace lowbit;
  m.def("linear_packed(Tensor x, Tensor packed, Tensor scale, Tensor offset, Tensor? scale1, Tensor? bias, "
        "str format, str granularity, int group_size, bool symmetric, int cols, ScalarType weight_dtype, "
        "str act_format='', str act_granularity='tensor', int act_group_size=0, bool act_symmetric=True, "
        "Tensor? act_scale=None, Tensor? act_offset=None) -> Tensor");
  // The deploy modules' form of linear_packed: the constant arguments as one int64 tensor,
  // built once by linear_packed_spec (same meaning, same checks).
  m.def("linear_packed_spec(str format, str granularity, int group_size, bool symmetric, int cols, "
        "ScalarType weight_dtype, str act_format='', str act_granularity='tensor', int act_group_size=0, "
        "bool act_symmetric=True) -> Tensor");
  m.def("linear_packed_by_spec(Tensor x, Tensor packed, Tensor scale, Tensor offset, Tensor? scale1, Tensor? bias, "
        "Tensor spec, Tensor? act_scale=None, Tensor? act_offset=None, Tensor? smooth=None) -> Tensor");
  m.def("linear_int8(Tensor x, Tensor packed, Tensor w_scale, int bits, int cols, bool per_token, "
        "Tensor act_scale, Tensor act_offset, Tensor? bias, Tensor? smooth=None) -> Tensor");
  m.def("int8_kernel() -> str");
  // A deploy layer's forward in one call (the kernel chosen when the layer is built).
  m.def("deploy_plan(Tensor spec, int kernel, int act_source, bool int32_bias) -> Tensor");
  m.def("conv2d_deploy(Tensor x, Tensor packed, Tensor w_scale, Tensor w_offset, Tensor? w_scale1, Tensor? bias, "
        "Tensor plan, Tensor geometry, Tensor? act_scale=None, Tensor? act_offset=None) -> Tensor");
  m.def("linear_deploy(Tensor x, Tensor packed, Tensor w_scale, Tensor w_offset, Tensor? w_scale1, Tensor? bias, "
        "Tensor plan, Tensor? act_scale=None, Tensor? act_offset=None, Tensor? smooth=None) -> Tensor");
  m.def("linear_dynamic_int8(Tensor x, Tensor packed, Tensor w_scale, int bits, int group_size, int cols, "
        "Tensor? bias=None, Tensor? smooth=None) -> Tensor");
  m.def("conv2d_packed(Tensor x, Tensor packed, Tensor scale, Tensor offset, Tensor? scale1, Tensor? bias, "
        "str format, str granularity, int group_size, bool symmetric, int cols, ScalarType weight_dtype, "
        "int[2] kernel, int[2] stride, int[2] padding, int[2] dilation, int groups, str act_format='', "
        "bool act_symmetric=True, Tensor? act_scale=None, Tensor? act_offset=None) -> Tensor");
  m.def("conv2d_int8(Tensor x, Tensor packed, Tensor w_scale, int bits, int cols, Tensor act_scale, "
        "Tensor act_offset, Tensor? bias, int[2] kernel, int[2] stride, int[2] padding, int[2] dilation, "
        "int groups) -> Tensor");
  m.impl("conv2d_packed", c10::DispatchKey::CPU, TORCH_FN(conv2d_packed_op));
  m.impl("conv2d_int8", c10::DispatchKey::CPU, TORCH_FN(conv2d_int8_op));
  m.impl("linear_packed", c10::DispatchKey::CPU, TORCH_FN(linear_packed_op));
  m.impl("linear_packed_by_spec", c10::DispatchKey::CPU, TORCH_FN(linear_packed_by_spec_op));
  m.impl("linear_packed_spec", TORCH_FN(linear_packed_spec_op));
  m.impl("linear_int8", c10::DispatchKey::CPU, TORCH_FN(linear_int8_op));
  m.impl("int8_kernel", TORCH_FN(int8_kernel_name));
  m.impl("deploy_plan", TORCH_FN(deploy_plan_op));
  m.impl("linear_deploy", c10::DispatchKey::CPU, TORCH_FN(linear_deploy_op));
  m.impl("conv2d_deploy", c10::DispatchKey::CPU, TORCH_FN(conv2d_deploy_op));
  m.impl("linear_dynamic_int8", c10::DispatchKey::CPU, TORCH_FN(linear_dynamic_int8_op));
}

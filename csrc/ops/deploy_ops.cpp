// torch.ops.lowbit.linear_packed / linear_int8: the deploy layers' matrix products on
// packed weights (csrc/deploy), for any leading shape [..., K] -> [..., N].
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
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

// Everything a product needs besides the activations, kept alive by its tensors.
struct WeightArgs {
  bool integer = false;
  PackedWeight packed;
  IntWeight intw;
  Int8Activation act;
  at::Tensor codes, scale_keep, offset_keep, s1_keep, ws_keep;
  ScaleArgs sa;
  int64_t per_row_scales = 0;  // scale entries per output row (0: one for the tensor)

  // rows [lo, hi) of the weight
  void run(const ConstMatrix& x, int64_t lo, int64_t hi, const float* bias, const MutMatrix& y) const {
    if (integer) {
      IntWeight w = intw;
      w.codes += lo * w.row_bytes;
      w.rows = hi - lo;
      if (!w.per_tensor) w.scale += lo;
      return value_errors([&] { linear_int8(x, act, w, bias, y); });
    }
    PackedWeight w = packed;
    w.codes += lo * w.row_bytes;
    w.rows = hi - lo;
    if (per_row_scales) {
      if (w.scales.scale) w.scales.scale += lo * per_row_scales;
      if (w.scales.offset) w.scales.offset += lo * per_row_scales;
      if (w.scales.e8m0) w.scales.e8m0 += lo * per_row_scales;
    }
    if (w.row_scale1) w.row_scale1 += lo;
    value_errors([&] { linear_packed(x, w, bias, y); });
  }
};

WeightArgs packed_args(const at::Tensor& packed, const at::Tensor& scale, const at::Tensor& offset,
                       const c10::optional<at::Tensor>& scale1, const std::string& format,
                       const std::string& granularity, int64_t group_size, bool symmetric, int64_t cols,
                       at::ScalarType weight_dtype) {
  TORCH_CHECK_TYPE(packed.scalar_type() == at::kByte, "packed: dtype ", packed.scalar_type(), "; expected uint8");
  TORCH_CHECK_VALUE(packed.dim() == 2, "packed: expected a 2-D [out_features, bytes] tensor, got rank ", packed.dim());
  const QuantSpec spec = make_spec(format, granularity, group_size, symmetric, "auto");
  const int64_t n = packed.size(0);
  TORCH_CHECK_VALUE(packed.size(1) == packed_row_bytes(spec, cols), "packed: ", packed.size(1),
                    " bytes per row do not match ", packed_row_bytes(spec, cols), " for ", cols, " columns of ",
                    format);
  WeightArgs a;
  a.codes = packed.contiguous();
  a.sa = scale_args(spec, scale, offset, n, cols);
  a.per_row_scales = spec.granularity == Granularity::kTensor && !format_info(spec.format).is_mx
                         ? 0 : groups_per_row(spec, cols);
  PackedWeight& w = a.packed;
  w.codes = a.codes.data_ptr<uint8_t>();
  w.row_bytes = a.codes.size(1);
  w.rows = n;
  w.cols = cols;
  w.spec = spec;
  w.scales = a.sa.view;
  w.value_dtype = dtype_of(weight_dtype);
  if (scale1.has_value() && scale1->defined()) {
    TORCH_CHECK_VALUE(scale1->numel() == n, "scale1: ", scale1->numel(), " entries, expected ", n);
    a.s1_keep = scale1->to(at::kFloat).contiguous();
    w.row_scale1 = a.s1_keep.data_ptr<float>();
  }
  return a;
}

WeightArgs int8_args(const at::Tensor& packed, const at::Tensor& w_scale, int64_t bits, int64_t cols, bool per_token,
                     const at::Tensor& act_scale, const at::Tensor& act_offset) {
  TORCH_CHECK_TYPE(packed.scalar_type() == at::kByte, "packed: dtype ", packed.scalar_type(), "; expected uint8");
  TORCH_CHECK_VALUE(packed.dim() == 2, "packed: expected a 2-D tensor, got rank ", packed.dim());
  TORCH_CHECK_TYPE(w_scale.scalar_type() == at::kFloat, "w_scale: expected float32");
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
    a.act.scale = act_scale.to(at::kFloat).reshape(-1)[0].item<float>();
    a.act.offset = act_offset.numel() ? act_offset.to(at::kInt).reshape(-1)[0].item<int32_t>() : 0;
  }
  return a;
}

at::Tensor linear_packed_op(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                            const at::Tensor& offset, const c10::optional<at::Tensor>& scale1,
                            const c10::optional<at::Tensor>& bias, const std::string& format,
                            const std::string& granularity, int64_t group_size, bool symmetric, int64_t cols,
                            at::ScalarType weight_dtype) {
  const WeightArgs w =
      packed_args(packed, scale, offset, scale1, format, granularity, group_size, symmetric, cols, weight_dtype);
  const int64_t n = packed.size(0);
  Operands o = operands(x, cols, n);
  at::Tensor b = float_bias(bias, n);
  w.run(as_const(o.src), 0, n, b.defined() ? b.data_ptr<float>() : nullptr, as_mut(o.out));
  return o.out;
}

at::Tensor linear_int8_op(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& w_scale, int64_t bits,
                          int64_t cols, bool per_token, const at::Tensor& act_scale, const at::Tensor& act_offset,
                          const c10::optional<at::Tensor>& bias) {
  const WeightArgs w = int8_args(packed, w_scale, bits, cols, per_token, act_scale, act_offset);
  const int64_t n = packed.size(0);
  Operands o = operands(x, cols, n);
  at::Tensor b = float_bias(bias, n);
  w.run(as_const(o.src), 0, n, b.defined() ? b.data_ptr<float>() : nullptr, as_mut(o.out));
  return o.out;
}

// Patch rows [M, cg * kh * kw] of images n0.. for channels [c0, c0 + cg), zero padded.
// T: the element's bits (copied, not converted).
template <class T>
void im2col(const at::Tensor& x, at::Tensor& rows, int64_t n0, int64_t M, int64_t L, int64_t wo, int64_t c0,
            int64_t cg, int64_t kh, int64_t kw, at::IntArrayRef stride, at::IntArrayRef padding,
            at::IntArrayRef dilation) {
  const int64_t C = x.size(1), H = x.size(2), W = x.size(3), K = cg * kh * kw;
  const T* src = static_cast<const T*>(x.data_ptr());
  T* r = static_cast<T*>(rows.data_ptr());
  const int64_t sy = stride[0], sx = stride[1], py = padding[0], px = padding[1], dy = dilation[0], dx = dilation[1];
#pragma omp parallel for schedule(static) if (M * K >= (1 << 16))
  for (int64_t m = 0; m < M; ++m) {
    const int64_t n = n0 + m / L, p = m % L, oy = p / wo, ox = p % wo;
    T* dst = r + m * K;
    for (int64_t c = 0; c < cg; ++c) {
      const T* plane = src + ((n * C + c0 + c) * H) * W;
      for (int64_t i = 0; i < kh; ++i) {
        const int64_t iy = oy * sy - py + i * dy;
        if (iy < 0 || iy >= H) {
          for (int64_t j = 0; j < kw; ++j) *dst++ = T(0);
          continue;
        }
        const T* line = plane + iy * W;
        for (int64_t j = 0; j < kw; ++j) {
          const int64_t ix = ox * sx - px + j * dx;
          *dst++ = (ix >= 0 && ix < W) ? line[ix] : T(0);
        }
      }
    }
  }
}

// out [M, og] (rows: image, position) -> y[n, o0 + c, position]
template <class T>
void scatter_out(const at::Tensor& out, at::Tensor& y, int64_t n0, int64_t M, int64_t L, int64_t o0, int64_t og) {
  const int64_t cout = y.size(1);
  const T* o = static_cast<const T*>(out.data_ptr());
  T* dst = static_cast<T*>(y.data_ptr());
  const int64_t images = M / L;
#pragma omp parallel for collapse(2) schedule(static) if (M * og >= (1 << 16))
  for (int64_t n = 0; n < images; ++n)
    for (int64_t c = 0; c < og; ++c) {
      T* d = dst + ((n0 + n) * cout + o0 + c) * L;
      const T* s = o + n * L * og + c;
      for (int64_t p = 0; p < L; ++p) d[p] = s[p * og];
    }
}

// Convolution as im2col + the products above, a few images at a time (the patch matrix
// stays small and is reused), one product per group. Zero padding only: other padding
// modes are applied by the caller. Rows are (image, out_y, out_x); columns follow
// F.unfold: (channel, ky, kx).
at::Tensor conv2d_deploy(const at::Tensor& x_in, const WeightArgs& w, const c10::optional<at::Tensor>& bias,
                         at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK_VALUE(x_in.dim() == 4, "x: expected [N, C, H, W], got rank ", x_in.dim());
  float_dtype(x_in, "x");
  TORCH_CHECK_VALUE(kernel.size() == 2 && stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
                    "kernel/stride/padding/dilation: expected 2 values each");
  TORCH_CHECK_VALUE(groups >= 1 && x_in.size(1) % groups == 0, "groups: ", groups, " does not divide ", x_in.size(1),
                    " input channels");
  const at::Tensor x = x_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t kh = kernel[0], kw = kernel[1], cg = C / groups, K = cg * kh * kw;
  const int64_t cout = w.integer ? w.intw.rows : w.packed.rows, og = cout / groups;
  TORCH_CHECK_VALUE(cout % groups == 0, "weight: ", cout, " output channels are not divisible by groups=", groups);
  TORCH_CHECK_VALUE((w.integer ? w.intw.cols : w.packed.cols) == K, "weight: ", (w.integer ? w.intw.cols : w.packed.cols),
                    " input features per output channel, expected ", K, " (channels/groups x kernel)");
  const int64_t ho = (H + 2 * padding[0] - dilation[0] * (kh - 1) - 1) / stride[0] + 1;
  const int64_t wo = (W + 2 * padding[1] - dilation[1] * (kw - 1) - 1) / stride[1] + 1;
  TORCH_CHECK_VALUE(ho > 0 && wo > 0, "x: ", H, "x", W, " is smaller than the kernel");
  const int64_t L = ho * wo;
  at::Tensor y = at::empty({N, cout, ho, wo}, x.options());
  at::Tensor b = float_bias(bias, cout);
  const int64_t es = x.element_size();
  const int64_t chunk = std::max<int64_t>(1, (int64_t(1) << 16) / L);  // about 64K patch rows per step
  at::Tensor rows = at::empty({std::min(chunk, N) * L, K}, x.options());
  at::Tensor out = at::empty({std::min(chunk, N) * L, og}, x.options());
  for (int64_t n0 = 0; n0 < N; n0 += chunk) {
    const int64_t nc = std::min(chunk, N - n0), M = nc * L;
    for (int64_t g = 0; g < groups; ++g) {
      if (es == 4) im2col<uint32_t>(x, rows, n0, M, L, wo, g * cg, cg, kh, kw, stride, padding, dilation);
      else im2col<uint16_t>(x, rows, n0, M, L, wo, g * cg, cg, kh, kw, stride, padding, dilation);
      const ConstMatrix xm{rows.data_ptr(), float_dtype(rows, "x"), M, K, K};
      const MutMatrix om{out.data_ptr(), float_dtype(out, "out"), M, og, og};
      w.run(xm, g * og, (g + 1) * og, b.defined() ? b.data_ptr<float>() + g * og : nullptr, om);
      if (es == 4) scatter_out<uint32_t>(out, y, n0, M, L, g * og, og);
      else scatter_out<uint16_t>(out, y, n0, M, L, g * og, og);
    }
  }
  return y;
}

at::Tensor conv2d_packed_op(const at::Tensor& x_in, const at::Tensor& packed, const at::Tensor& scale,
                            const at::Tensor& offset, const c10::optional<at::Tensor>& scale1,
                            const c10::optional<at::Tensor>& bias, const std::string& format,
                            const std::string& granularity, int64_t group_size, bool symmetric, int64_t cols,
                            at::ScalarType weight_dtype, at::IntArrayRef kernel, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const WeightArgs w =
      packed_args(packed, scale, offset, scale1, format, granularity, group_size, symmetric, cols, weight_dtype);
  TORCH_CHECK_VALUE(x_in.dim() == 4, "x: expected [N, C, H, W], got rank ", x_in.dim());
  TORCH_CHECK_VALUE(kernel.size() == 2 && stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
                    "kernel/stride/padding/dilation: expected 2 values each");
  TORCH_CHECK_VALUE(groups >= 1 && x_in.size(1) % groups == 0, "groups: ", groups, " does not divide ", x_in.size(1),
                    " input channels");
  const at::Tensor x = x_in.contiguous();
  Conv2dArgs a;
  a.dtype = float_dtype(x, "x");
  a.n = x.size(0), a.c = x.size(1), a.h = x.size(2), a.w = x.size(3);
  a.cout = packed.size(0), a.groups = groups, a.cg = a.c / groups;
  a.kh = kernel[0], a.kw = kernel[1], a.sy = stride[0], a.sx = stride[1], a.py = padding[0], a.px = padding[1];
  a.dy = dilation[0], a.dx = dilation[1];
  a.ho = (a.h + 2 * a.py - a.dy * (a.kh - 1) - 1) / a.sy + 1;
  a.wo = (a.w + 2 * a.px - a.dx * (a.kw - 1) - 1) / a.sx + 1;
  TORCH_CHECK_VALUE(a.ho > 0 && a.wo > 0, "x: ", a.h, "x", a.w, " is smaller than the kernel");
  at::Tensor y = at::empty({a.n, a.cout, a.ho, a.wo}, x.options());
  at::Tensor b = float_bias(bias, a.cout);
  a.x = x.data_ptr();
  a.y = y.data_ptr();
  value_errors([&] { conv2d_packed(a, w.packed, b.defined() ? b.data_ptr<float>() : nullptr); });
  return y;
}

at::Tensor conv2d_int8_op(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& w_scale, int64_t bits,
                          int64_t cols, const at::Tensor& act_scale, const at::Tensor& act_offset,
                          const c10::optional<at::Tensor>& bias, at::IntArrayRef kernel, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const WeightArgs w = int8_args(packed, w_scale, bits, cols, false, act_scale, act_offset);
  return conv2d_deploy(x, w, bias, kernel, stride, padding, dilation, groups);
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
  m.def("conv2d_packed(Tensor x, Tensor packed, Tensor scale, Tensor offset, Tensor? scale1, Tensor? bias, "
        "str format, str granularity, int group_size, bool symmetric, int cols, ScalarType weight_dtype, "
        "int[2] kernel, int[2] stride, int[2] padding, int[2] dilation, int groups) -> Tensor");
  m.def("conv2d_int8(Tensor x, Tensor packed, Tensor w_scale, int bits, int cols, Tensor act_scale, "
        "Tensor act_offset, Tensor? bias, int[2] kernel, int[2] stride, int[2] padding, int[2] dilation, "
        "int groups) -> Tensor");
  m.impl("conv2d_packed", c10::DispatchKey::CPU, TORCH_FN(conv2d_packed_op));
  m.impl("conv2d_int8", c10::DispatchKey::CPU, TORCH_FN(conv2d_int8_op));
  m.impl("linear_packed", c10::DispatchKey::CPU, TORCH_FN(linear_packed_op));
  m.impl("linear_int8", c10::DispatchKey::CPU, TORCH_FN(linear_int8_op));
  m.impl("int8_kernel", TORCH_FN(int8_kernel_name));
}

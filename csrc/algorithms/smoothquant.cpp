// SmoothQuant: per input channel factors s_j = amax_j^a / wmax_j^(1-a) that move
// activation outliers into the weights (x / s) @ (W * s)^T.
#include <ATen/ATen.h>
#include <torch/library.h>

namespace lowbit {
namespace {

// Per-channel running statistics of calibration rows: max |x|, min x, max x.
void channel_stats_update(at::Tensor& amax, at::Tensor& cmin, at::Tensor& cmax, const at::Tensor& x2d) {
  at::Tensor x = x2d.to(at::kFloat);
  TORCH_CHECK_VALUE(x.size(1) == amax.numel(), "channel_stats_update: ", x.size(1), " channels for ", amax.numel());
  amax.copy_(at::maximum(amax, x.abs().amax(0)));
  cmin.copy_(at::minimum(cmin, x.amin(0)));
  cmax.copy_(at::maximum(cmax, x.amax(0)));
}

at::Tensor smoothquant_factors(const at::Tensor& act_amax, const at::Tensor& W2d, double alpha) {
  TORCH_CHECK_VALUE(alpha > 0.0 && alpha < 1.0, "smooth_strength: ", alpha, " is not in the open interval (0, 1)");
  at::Tensor a = act_amax.to(at::kDouble);
  at::Tensor w = W2d.to(at::kDouble).abs().amax(0);
  at::Tensor s = a.pow(alpha) / w.pow(1.0 - alpha);
  // non-finite or tiny factors (dead channels, zero weights) are left alone
  at::Tensor ok = at::isfinite(s) & (s > 1e-5) & (a > 0) & (w > 0);
  return at::where(ok, s, at::ones_like(s)).to(at::kFloat);
}

}  // namespace
}  // namespace lowbit

TORCH_LIBRARY_FRAGMENT(lowbit, m) {
  m.def("channel_stats_update(Tensor(a!) amax, Tensor(b!) cmin, Tensor(c!) cmax, Tensor x2d) -> ()");
  m.def("smoothquant_factors(Tensor act_amax, Tensor W2d, float alpha) -> Tensor");
  m.impl("channel_stats_update", c10::DispatchKey::CPU, TORCH_FN(lowbit::channel_stats_update));
  m.impl("smoothquant_factors", c10::DispatchKey::CPU, TORCH_FN(lowbit::smoothquant_factors));
}

// AWQ (Lin et al. 2023): per input channel scales s = mu^alpha (mu = mean |x|) that
// protect the channels carrying large activations; the layer computes
// (x / s) @ QDQ(W * s)^T. The grid search over alpha and the clipping search of the
// original paper (shrink each group's max by ratios down to 0.5) both score a candidate
// by its output error on the calibration rows, dW H dW^T with H = X^T X, so no input
// rows are stored.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "ops/tensor_views.h"

namespace lowbit {
namespace {

// Output error of W -> Wq per (row, granule column range): [N, G]
at::Tensor group_losses(const at::Tensor& dW, const at::Tensor& H, int64_t glen) {
  const int64_t K = dW.size(1), G = (K + glen - 1) / glen;
  at::Tensor out = at::empty({dW.size(0), G}, at::kDouble);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t c0 = g * glen, c = std::min(glen, K - c0);
    at::Tensor d = dW.narrow(1, c0, c);
    out.select(1, g).copy_((d.mm(H.narrow(0, c0, c).narrow(1, c0, c)) * d).sum(1));
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor, double, double> awq_search(const at::Tensor& W2d, const at::Tensor& H_in,
                                                              const at::Tensor& mu, const std::string& fmt,
                                                              const std::string& strategy, int64_t group_size,
                                                              bool symmetric, int64_t grids_num, bool clip,
                                                              const std::string& scale_dtype,
                                                              const std::string& scale_rule) {
  QuantSpec spec =
      make_spec(fmt, strategy, strategy == "group" ? group_size : 0, symmetric, "auto", scale_dtype, scale_rule);
  TORCH_CHECK_VALUE(grids_num > 0, "awq: grids_num must be positive");
  at::Tensor W = W2d.to(at::kFloat).contiguous();
  at::Tensor H = H_in.to(at::kDouble);
  at::Tensor m = mu.to(at::kFloat).clamp_min(1e-8f);
  const int64_t K = W.size(1);
  auto loss_of = [&](const at::Tensor& Wq) {
    at::Tensor dW = (W - Wq).to(at::kDouble);
    return (dW.mm(H) * dW).sum().item<double>();
  };
  const double base = loss_of(qdq_dynamic(W, spec));
  double best = std::numeric_limits<double>::infinity();
  at::Tensor best_s = at::ones({K}, at::kFloat);
  for (int64_t g = 0; g < grids_num; ++g) {
    const double alpha = double(g) / double(grids_num);
    at::Tensor s = m.pow(alpha);
    s = s / std::sqrt(s.max().item<float>() * s.min().item<float>());
    s = s.clamp_min(1e-4f);
    const double l = loss_of(qdq_dynamic(W * s, spec) / s);
    if (std::isfinite(l) && l < best) best = l, best_s = s;
  }
  at::Tensor src = W * best_s;  // the weight the layer quantizes
  if (clip && spec.granularity != Granularity::kTensor) {
    const int64_t glen = format_info(spec.format).is_mx() ? 32
                         : spec.granularity == Granularity::kGroup ? spec.group_size : K;
    const int64_t G = (K + glen - 1) / glen;
    // per (row, group) max |w| of the scaled weight
    at::Tensor gmax = at::empty({W.size(0), G}, at::kFloat);
    for (int64_t g = 0; g < G; ++g) gmax.select(1, g).copy_(src.narrow(1, g * glen, std::min(glen, K - g * glen)).abs().amax(1));
    at::Tensor best_loss = at::full({W.size(0), G}, std::numeric_limits<double>::infinity(), at::kDouble);
    at::Tensor best_ratio = at::ones({W.size(0), G}, at::kFloat);
    for (int r = 0; r <= 10; ++r) {  // ratios 1.0, 0.95, ..., 0.5
      const float ratio = 1.0f - 0.05f * float(r);
      at::Tensor lim = (gmax * ratio).repeat_interleave(glen, 1).narrow(1, 0, K);
      at::Tensor q = qdq_dynamic(at::max(at::min(src, lim), -lim), spec) / best_s;
      at::Tensor l = group_losses((W - q).to(at::kDouble), H, glen);
      at::Tensor better = l < best_loss;
      best_loss = at::where(better, l, best_loss);
      best_ratio = at::where(better, at::full_like(best_ratio, ratio), best_ratio);
    }
    at::Tensor lim = (gmax * best_ratio).repeat_interleave(glen, 1).narrow(1, 0, K);
    src = at::max(at::min(src, lim), -lim);
  }
  const double final_loss = loss_of(qdq_dynamic(src, spec) / best_s);
  const double den = (W.to(at::kDouble).mm(H) * W.to(at::kDouble)).sum().item<double>();
  return {best_s, src, den > 0 ? final_loss / den : 0.0, den > 0 ? base / den : 0.0};
}

}  // namespace
}  // namespace lowbit

TORCH_LIBRARY_FRAGMENT(lowbit, m) {
  m.def("awq_search(Tensor W2d, Tensor H, Tensor mu, str fmt, str strategy, int group_size, bool symmetric, "
        "int grids_num, bool clip, str scale_dtype='float32', str scale_rule='absmax') -> "
        "(Tensor, Tensor, float, float)");
  m.impl("awq_search", c10::DispatchKey::CPU, TORCH_FN(lowbit::awq_search));
}

// OFMR (output feature-map reconstruction) for HiF8 and FP8: the output MSE each
// candidate scale causes, and the choice.
//  - weights: the output error of W -> QDQ(W) on calibration rows X is, per output
//    channel n, dW_n H dW_n^T with H = X^T X, so only H is accumulated during calibration;
//  - activations: the output error of QDQ(x) accumulated per call, as the layer's output
//    MSE: sum over rows of ||((x - QDQ(x)) W^T)_r||^2, each row times an optional weight
//    given by the caller (ofmr.py: the rows a sampled row stands for, damped by the row's
//    output energy mean / (e_r + mean), which no near-zero row can exceed).
//    The former per-row normalization (each row's error over its own output energy) let
//    near-zero rows decide: in a depthwise Conv2d a row of a group is one output, flat
//    patches under zero-sum kernels give |y| ~ 1e-4, and 0.1% of the rows made 99% of the
//    loss; the chosen FP8 scale clipped half of the inputs (issue 22).
// The candidates and the fallback to the MIN-MAX scales are chosen in algorithms/ofmr.py;
// ofmr_select prefers the powers of two and takes another candidate only when strictly lower.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "ops/tensor_views.h"

namespace lowbit {
namespace {

Format float8_format(const std::string& name) {
  Format f = value_errors([&] { return parse_format(name); });
  TORCH_CHECK_VALUE(f == Format::kHiFloat8 || f == Format::kFloat8E4M3FN, "ofmr: format '", name,
                    "' is not allowed; allowed: hifloat8, float8_e4m3fn");
  return f;
}

at::Tensor finite_or_inf(at::Tensor loss) {
  return at::where(at::isfinite(loss), loss, at::full_like(loss, std::numeric_limits<double>::infinity()));
}

// QDQ of W [N, K] with one scale per row (scales [N] or [1]).
at::Tensor qdq_rows(const at::Tensor& W, Format f, const at::Tensor& scales) {
  at::Tensor s = scales.to(at::kFloat).expand({W.size(0)}).contiguous();
  QuantSpec spec;
  spec.format = f;
  spec.granularity = Granularity::kChannel;
  at::Tensor out = at::empty_like(W);
  fake_quant(as_const(W), spec, ScaleView{s.data_ptr<float>(), nullptr, nullptr}, as_mut(out));
  return out;
}

// loss [C, N]: output MSE of each candidate (a scale per row, cand [C, N] or [C, 1]).
at::Tensor ofmr_weight_losses(const at::Tensor& W2d, const at::Tensor& H, const std::string& fmt,
                              const at::Tensor& cand) {
  const Format f = float8_format(fmt);
  at::Tensor W = W2d.to(at::kFloat).contiguous();
  at::Tensor Hd = H.to(at::kDouble);
  TORCH_CHECK_VALUE(cand.dim() == 2 && (cand.size(1) == 1 || cand.size(1) == W.size(0)),
                    "ofmr: candidates must be [C, 1] or [C, N], got ", cand.sizes());
  at::Tensor loss = at::empty({cand.size(0), W.size(0)}, at::kDouble);
  for (int64_t c = 0; c < cand.size(0); ++c) {
    at::Tensor dW = (W - qdq_rows(W, f, cand[c])).to(at::kDouble);
    loss[c] = (dW.mm(Hd) * dW).sum(1);
  }
  return finite_or_inf(loss);
}

// loss[c] += sum_r w_r ||((x - QDQ_c(x)) W^T)_r||^2 (w_r = 1 without row_weights): the
// output error of quantizing the activation alone with candidate scale c.
// (Scoring with the weight quantized too was tried: no better on stories260K.)
void ofmr_act_losses_accumulate(at::Tensor& loss, const at::Tensor& x2d, const at::Tensor& W2d,
                                const std::string& fmt, const at::Tensor& cand,
                                const c10::optional<at::Tensor>& row_weights) {
  const Format f = float8_format(fmt);
  at::Tensor x = x2d.to(at::kFloat).contiguous();
  at::Tensor Wt = W2d.to(at::kFloat).t();
  auto c_acc = cand.to(at::kFloat).contiguous();
  TORCH_CHECK_TYPE(loss.scalar_type() == at::kDouble && loss.is_contiguous(),
                   "ofmr: loss must be a contiguous float64 tensor, got ", loss.scalar_type());
  TORCH_CHECK_VALUE(loss.numel() == c_acc.numel(), "ofmr: loss has ", loss.numel(), " entries for ", c_acc.numel(),
                    " candidates");
  at::Tensor rw;
  if (row_weights.has_value()) {
    rw = row_weights->to(at::kDouble).reshape({-1});
    TORCH_CHECK_VALUE(rw.numel() == x.size(0), "ofmr: ", rw.numel(), " row weights for ", x.size(0), " rows");
  }
  const float* cs = c_acc.data_ptr<float>();
  // Candidates in chunks of up to 32 MB of rows, each chunk one QDQ per candidate (the
  // kernels, straight into the chunk) and then a handful of tensor ops for all of them:
  // the former dozen tensor ops and a small GEMM per candidate spent most of their time
  // in dispatch and OpenBLAS thread hand-offs (stories260K HIFP8_OFMR calibration: 12 s of 15).
  QuantSpec spec;
  spec.format = f;
  spec.granularity = Granularity::kTensor;
  int32_t zero = 0;
  const int64_t C = c_acc.numel(), R = x.size(0), K = x.size(1);
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(C, (int64_t(32) << 20) / std::max<int64_t>(1, R * K * 4)));
  at::Tensor E = at::empty({chunk, R, K}, x.options());
  double* acc = loss.data_ptr<double>();
  for (int64_t c0 = 0; c0 < C; c0 += chunk) {
    const int64_t n = std::min(chunk, C - c0);
    float* e = E.data_ptr<float>();
    for (int64_t j = 0; j < n; ++j) {
      float sc = cs[c0 + j];
      fake_quant(as_const(x), spec, ScaleView{&sc, &zero, nullptr}, MutMatrix{e + j * R * K, DType::kF32, R, K, K});
    }
    at::Tensor En = E.narrow(0, 0, n);
    at::sub_out(En, x.unsqueeze(0), En);  // x - QDQ_c(x)
    at::Tensor per_row = En.reshape({n * R, K}).mm(Wt).to(at::kDouble).pow_(2).sum(1).view({n, R});
    at::Tensor v = (rw.defined() ? (per_row * rw.unsqueeze(0)).sum(1) : per_row.sum(1)).contiguous();
    const double* vp = v.data_ptr<double>();
    for (int64_t j = 0; j < n; ++j)
      acc[c0 + j] += std::isfinite(vp[j]) ? vp[j] : std::numeric_limits<double>::infinity();
  }
}

// Index of the chosen candidate per column of loss [C, M]: the best preferred one (the
// powers of two), replaced by a non-preferred one only when that is strictly lower.
at::Tensor ofmr_select(const at::Tensor& loss, const at::Tensor& preferred, const std::string& layer) {
  at::Tensor L = loss.to(at::kDouble).reshape({loss.size(0), -1});
  at::Tensor masked = at::where(preferred.to(at::kBool).unsqueeze(1), L,
                                at::full_like(L, std::numeric_limits<double>::infinity()));
  auto [best_pref_loss, best_pref] = masked.min(0);
  auto [best_all_loss, best_all] = L.min(0);
  TORCH_CHECK_VALUE(at::isfinite(best_all_loss).all().item<bool>(), "ofmr: layer '", layer,
                    "': no candidate scale gives a finite output error (NaN/Inf in its calibration data?)");
  return at::where(best_all_loss < best_pref_loss, best_all, best_pref);
}

}  // namespace
}  // namespace lowbit

TORCH_LIBRARY_FRAGMENT(lowbit, m) {
  m.def("ofmr_weight_losses(Tensor W2d, Tensor H, str fmt, Tensor candidates) -> Tensor");
  m.def("ofmr_act_losses_accumulate(Tensor(a!) loss, Tensor x2d, Tensor W2d, str fmt, Tensor candidates, "
        "Tensor? row_weights=None) -> ()");
  m.def("ofmr_select(Tensor loss, Tensor preferred, str layer) -> Tensor");
  m.impl("ofmr_weight_losses", c10::DispatchKey::CPU, TORCH_FN(lowbit::ofmr_weight_losses));
  m.impl("ofmr_act_losses_accumulate", c10::DispatchKey::CPU, TORCH_FN(lowbit::ofmr_act_losses_accumulate));
  m.impl("ofmr_select", c10::DispatchKey::CPU, TORCH_FN(lowbit::ofmr_select));
}

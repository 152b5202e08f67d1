// GPTQ (Frantar et al. 2022) for every weight-only format: columns are quantized one
// at a time and each one's rounding error is spread over the columns not yet quantized,
// weighted by the inverse Hessian of the layer's calibration inputs.
//
// What this version adds to the textbook algorithm:
//  - any format and granule: a column is quantized with the kernels' own arithmetic
//    (w / s, + o, the element codec, - o, * s), so the result lies on the packed grid;
//    MX/FP4 groups use their real block scale;
//  - group scales are taken when a group's first column is reached, from the up-to-date
//    (error-compensated) values of the whole group, also under act-order (the group is
//    the stored contiguous group, so act-order needs no column reordering at deploy);
//  - damping that grows until the Cholesky factorisation succeeds (float64 if float32 fails);
//  - symmetric integer scales (channel, and each group when it is reached) are shrunk by
//    the factor in [0.80, 1.00] that minimises the row's rounding error weighted by the
//    inputs' energy (the Hessian diagonal) before the columns are solved (a clipping
//    search, like the reference code's optional `mse`, aimed at the layer's output). The
//    caller turns it off for convolutions, where it measured worse (ResNet-20/56 W4
//    channel: -0.5 point), while it helps Linear layers (stories260K W4 channel 4.61 -> 4.48).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "algorithms/gptq_kernels.h"
#include "ops/tensor_views.h"

namespace lowbit {
namespace {

// Columns per inner sub-block: rank-1 updates within it, one rank-16 pass beyond it
// (two-level lazy updates: the outer level is block_size, with GEMMs).
constexpr int64_t kSubBlock = 16;

struct ColumnScales {
  at::Tensor scale;   // float32 [N] (MX: 2^e)
  at::Tensor offset;  // float32 [N]
  at::Tensor e8m0;    // uint8 [N] for MX
};

// Clipping search for symmetric integer scales: each row's scale is shrunk by the factor
// in 1.00, 0.99, ..., 0.80 that gives the smallest rounding error of that row's values,
// each squared error weighted by its input's energy h (a max-abs scale leaves most values on a coarse grid to fit one outlier; the
// reference GPTQ code offers the same search as an option).
void shrink_scales(const at::Tensor& slice, const at::Tensor& hdiag, const QuantSpec& spec, at::Tensor& scale) {
  const int64_t n = slice.size(0), c = slice.size(1);
  const float qmax = float((1 << (format_info(spec.format).int_bits - 1)) - 1), qmin = -qmax - 1.0f;
  const float* w = slice.data_ptr<float>();
  const float* h = hdiag.data_ptr<float>();
  float* sc = scale.data_ptr<float>();
  const GptqKernels kern = gptq_kernels();
  for (int64_t r = 0; r < n; ++r) {
    const float s0 = sc[r];
    if (!(s0 != 0.0f)) continue;  // (signed_max scales are negative where the max is positive)
    float best = s0, best_err = kern.grid_error(w + r * c, h, c, s0, qmin, qmax);
    for (int step = 1; step <= 20; ++step) {
      float st = s0 * (1.0f - 0.01f * float(step));
      if (spec.fp16_scale) st = fp16_scale_value(st);  // search the grid that will be stored (sign kept)
      const float e = kern.grid_error(w + r * c, h, c, st, qmin, qmax);
      if (e < best_err) best_err = e, best = st;
    }
    sc[r] = best;
  }
}

// Scales of one granule column-slice [N, c] under `spec` (one granule per row).
// hdiag: the Hessian diagonal of the slice's columns (weights of the clipping search, run
// when `clip` is set).
ColumnScales slice_scales(const at::Tensor& slice, const QuantSpec& spec, const at::Tensor& hdiag, bool clip) {
  const int64_t n = slice.size(0);
  QuantSpec s = spec;
  if (!format_info(spec.format).is_mx()) s.granularity = Granularity::kChannel, s.group_size = 0;
  at::Tensor src = slice.contiguous();
  ColumnScales cs;
  cs.scale = at::empty({n}, at::kFloat);
  at::Tensor off = at::zeros({n}, at::kInt);
  if (format_info(spec.format).is_mx()) {
    cs.e8m0 = at::empty({n}, at::kByte);
    compute_scales(as_const(src), s, ScaleView{nullptr, nullptr, cs.e8m0.data_ptr<uint8_t>()});
    // 2^(b-127); 0xFF (a NaN block) cannot occur: weights are checked finite
    cs.scale = at::exp2(cs.e8m0.to(at::kFloat) - 127.0f);
  } else {
    compute_scales(as_const(src), s, ScaleView{cs.scale.data_ptr<float>(), off.data_ptr<int32_t>(), nullptr});
    if (clip && s.symmetric && format_info(s.format).is_int())
      shrink_scales(src, hdiag, s, cs.scale);
  }
  cs.offset = off.to(at::kFloat);
  return cs;
}

// Scales of the groups of one Q4_K super-block, slice [N, up to 256 columns]: group scales
// of the slice's current values, then the super-block grid (no clipping search: it would
// leave the grid).
std::vector<ColumnScales> superblock_slice_scales(const at::Tensor& slice, const QuantSpec& spec) {
  const int64_t n = slice.size(0), c = slice.size(1), groups = (c + 31) / 32;
  at::Tensor src = slice.contiguous();
  at::Tensor scale = at::empty({n, groups}, at::kFloat);
  at::Tensor off = at::zeros({n, groups}, at::kInt);
  compute_scales(as_const(src), spec, ScaleView{scale.data_ptr<float>(), off.data_ptr<int32_t>(), nullptr});
  std::vector<ColumnScales> out;
  for (int64_t j = 0; j < groups; ++j) out.push_back({scale.select(1, j).contiguous(), at::zeros({n}, at::kFloat), {}});
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gptq_quantize(
    const at::Tensor& W2d, const at::Tensor& H_in, const std::string& fmt, const std::string& strategy,
    int64_t group_size, bool symmetric, double damp_ratio, bool act_order, bool static_groups, int64_t block_size,
    bool clip, const std::string& scale_dtype, const std::string& scale_rule) {
  QuantSpec spec =
      make_spec(fmt, strategy, strategy == "group" ? group_size : 0, symmetric, "auto", scale_dtype, scale_rule);
  TORCH_CHECK_VALUE(spec.granularity != Granularity::kToken, "gptq: granularity 'token' is for activations");
  TORCH_CHECK_VALUE(block_size > 0, "gptq: block_size must be positive");
  const bool mx = format_info(spec.format).is_mx();
  const int64_t N = W2d.size(0), K = W2d.size(1);
  const GptqKernels kern = gptq_kernels();
  TORCH_CHECK_VALUE(H_in.size(0) == K && H_in.size(1) == K, "gptq: H ", H_in.sizes(), " does not match K=", K);
  at::Tensor W0 = W2d.to(at::kFloat).clone();  // the caller's tensor is never modified
  // dead inputs: no signal ever reached them
  const at::Tensor dead = H_in.diagonal() == 0;
  const at::Tensor hdiag = H_in.diagonal().to(at::kFloat).contiguous();  // input energies, original order
  const at::Tensor live_diag = H_in.diagonal().to(at::kDouble).masked_fill(dead, 1.0);  // dead inputs: 1
  W0.index_put_({at::indexing::Slice(), dead}, 0.0f);

  const int64_t glen = spec.granularity == Granularity::kGroup ? (mx ? 32 : spec.group_size) : K;
  const int64_t groups = spec.granularity == Granularity::kTensor ? 1 : (K + glen - 1) / glen;
  const auto granule_cols = [&](int64_t g) { return std::min(glen, K - g * glen); };  // (the last may be ragged)
  at::Tensor scale_out = at::empty({spec.granularity == Granularity::kTensor ? 1 : N, groups},
                                   mx ? at::kByte : at::kFloat);
  at::Tensor offset_out = at::zeros(scale_out.sizes(), at::kInt);
  std::vector<ColumnScales> gs(static_cast<size_t>(groups));
  std::vector<bool> have(static_cast<size_t>(groups), false);
  auto store = [&](int64_t g, const ColumnScales& cs) {
    gs[size_t(g)] = cs;
    have[size_t(g)] = true;
    if (spec.granularity == Granularity::kTensor) {
      scale_out.index_put_({0, 0}, cs.scale[0]);
      offset_out.index_put_({0, 0}, cs.offset[0].to(at::kInt));
    } else if (mx) {
      scale_out.select(1, g).copy_(cs.e8m0);
    } else {
      scale_out.select(1, g).copy_(cs.scale);
      offset_out.select(1, g).copy_(cs.offset.to(at::kInt));
    }
  };
  // columns [c0, c1) of a super-block (8 groups from its first one, g0)
  const auto superblock_cols = [&](int64_t g0) {
    return std::make_pair(g0 * glen, std::min(K, (g0 + kSuperBlockGroups) * glen));
  };
  const auto store_superblock = [&](int64_t g0, const at::Tensor& slice) {
    const std::vector<ColumnScales> cs = superblock_slice_scales(slice, spec);
    for (size_t j = 0; j < cs.size(); ++j) store(g0 + int64_t(j), cs[j]);
  };
  if (spec.granularity == Granularity::kTensor) {
    QuantSpec t = spec;
    float s;
    int32_t o = 0;
    at::Tensor src = W0.contiguous();
    compute_scales(as_const(src), t, ScaleView{&s, &o, nullptr});
    store(0, {at::full({N}, s, at::kFloat), at::full({N}, float(o), at::kFloat), {}});
  } else if (spec.superblock_scales && static_groups) {
    for (int64_t g0 = 0; g0 < groups; g0 += kSuperBlockGroups) {
      const auto c = superblock_cols(g0);
      store_superblock(g0, W0.narrow(1, c.first, c.second - c.first));
    }
  } else if (spec.granularity == Granularity::kChannel || static_groups) {
    for (int64_t g = 0; g < groups; ++g)
      store(g, slice_scales(W0.narrow(1, g * glen, granule_cols(g)), spec, hdiag.narrow(0, g * glen, granule_cols(g)),
                            clip));
  }

  // act-order: most informative inputs first
  at::Tensor perm = act_order ? at::argsort(live_diag, 0, true) : at::arange(K, at::kLong);
  at::Tensor invperm = at::argsort(perm);
  const int64_t* p = perm.data_ptr<int64_t>();
  // the weight transposed, [column][row]: a block of columns is a contiguous row range
  at::Tensor WT = W0.index_select(1, perm).t().contiguous();
  // original columns [c0, c1) as they are now ([N, c1 - c0]: rows of WT in solve order)
  const auto current_cols = [&](int64_t c0, int64_t c1) {
    return WT.index_select(0, invperm.narrow(0, c0, c1 - c0)).t();
  };
  W0.reset();
  // H in the solve's order and dtype, dead inputs given a unit diagonal, damped; one
  // K x K allocation (the permutation is gathered row by row)
  const double mean_diag = live_diag.mean().item<double>();
  auto damped_h = [&](at::ScalarType dtype, double ratio) {
    at::Tensor h = at::empty({K, K}, dtype);
    const at::Tensor src = H_in.to(dtype).contiguous();
    AT_DISPATCH_FLOATING_TYPES(dtype, "gptq_permute", [&] {
      const scalar_t* in = src.data_ptr<scalar_t>();
      scalar_t* out = h.data_ptr<scalar_t>();
      at::parallel_for(0, K, 16, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i)
          for (int64_t j = 0; j < K; ++j) out[i * K + j] = in[p[i] * K + p[j]];
      });
    });
    h.diagonal().masked_fill_(dead.index_select(0, perm), 1.0);
    h.diagonal().add_(ratio * mean_diag);
    return h;
  };

  // damping, raised until H is positive definite; float32 factorisations as in the
  // reference (4x faster here), float64 when float32 fails. Each step frees its input
  // before the next one: at most two K x K matrices at a time (K = 3072: 38 MB each).
  at::Tensor U;
  for (double ratio = damp_ratio; !U.defined(); ratio *= 10.0) {
    for (auto dtype : {at::kFloat, at::kDouble}) {
      at::Tensor L, info;
      std::tie(L, info) = at::linalg_cholesky_ex(damped_h(dtype, ratio));
      if (info.item<int>() != 0) continue;
      at::Tensor Hinv = at::cholesky_inverse(L);
      L.reset();
      std::tie(L, info) = at::linalg_cholesky_ex(Hinv, /*upper=*/true);
      Hinv.reset();
      if (info.item<int>() != 0) continue;
      U = L.to(at::kFloat);
      break;
    }
    TORCH_CHECK_VALUE(U.defined() || ratio < 1e4, "gptq: the Hessian stays singular even with heavy damping");
  }

  at::Tensor QT = at::empty_like(WT);
  // element codec of the format, applied with scale 1 to w / s (+ o)
  QuantSpec unit;
  unit.format = format_info(spec.format).element;
  const bool asym = !(spec.symmetric || mx);
  float one = 1.0f;
  int32_t zero = 0;
  std::vector<float> colv(static_cast<size_t>(N)), colq(static_cast<size_t>(N));
  // Everything is transposed ([column][row]), so that a column's quantization, its error
  // and the updates are contiguous, vectorisable loops over the N rows.
  for (int64_t i1 = 0; i1 < K; i1 += block_size) {
    const int64_t i2 = std::min(i1 + block_size, K), count = i2 - i1;
    at::Tensor W1 = WT.narrow(0, i1, count);  // [count, N], updated in place
    at::Tensor Err1 = at::empty({count, N}, at::kFloat);
    float* q1 = QT.data_ptr<float>() + i1 * N;
    at::Tensor U1 = U.narrow(0, i1, count).narrow(1, i1, count).contiguous();
    float* w1 = W1.data_ptr<float>();
    float* e1 = Err1.data_ptr<float>();
    const float* u1 = U1.data_ptr<float>();
    for (int64_t i = 0; i < count; ++i) {
      const int64_t col = p[i1 + i];
      const int64_t g = spec.granularity == Granularity::kTensor ? 0 : col / glen;
      if (!have[size_t(g)] && spec.superblock_scales) {  // first column of a super-block: all its groups
        const int64_t g0 = g / kSuperBlockGroups * kSuperBlockGroups;
        const auto c = superblock_cols(g0);
        store_superblock(g0, current_cols(c.first, c.second));
      }
      if (!have[size_t(g)])  // first column of this group: scale from its current values
        store(g, slice_scales(current_cols(g * glen, g * glen + granule_cols(g)), spec,
                              hdiag.narrow(0, g * glen, granule_cols(g)), clip));
      const ColumnScales& cs = gs[size_t(g)];
      const float* sc = cs.scale.data_ptr<float>();
      const float* off = cs.offset.data_ptr<float>();
      float* wi = w1 + i * N;
      // column QDQ with the kernels' arithmetic, on raw buffers
      for (int64_t n = 0; n < N; ++n) {
        const float v = wi[n] / sc[n];
        colv[size_t(n)] = asym ? v + off[n] : v;
      }
      fake_quant(ConstMatrix{colv.data(), DType::kF32, 1, N, N}, unit, ScaleView{&one, &zero, nullptr},
                 MutMatrix{colq.data(), DType::kF32, 1, N, N});
      const float d = u1[i * count + i];
      const float* urow = u1 + i * count;
      float* qi = q1 + i * N;
      float* ei = e1 + i * N;
      for (int64_t n = 0; n < N; ++n) {  // err = (w - q) / d
        const float q = (asym ? colq[size_t(n)] - off[n] : colq[size_t(n)]) * sc[n];
        qi[n] = q;
        ei[n] = (wi[n] - q) / d;
      }
      // rank-1 update of the block's later columns: contiguous rows of the transposed
      // block (L2-resident), single-threaded (an OpenMP region between BLAS calls makes
      // both thread pools spin against each other on few cores; small GEMMs here cost
      // more in thread wake-ups than they save)
      const int64_t sub_end = std::min(count, (i / kSubBlock + 1) * kSubBlock);
      kern.rank_k_update(w1 + (i + 1) * N, N, sub_end - i - 1, urow + i + 1, 0, ei, 1);
      if (i + 1 == sub_end && sub_end < count) {  // the sub-block's errors on the block's later columns
        const int64_t s0 = sub_end - ((sub_end - 1) % kSubBlock + 1);
        kern.rank_k_update(w1 + sub_end * N, N, count - sub_end, u1 + s0 * count + sub_end, count, e1 + s0 * N,
                      sub_end - s0);
      }
    }
    if (i2 < K) {  // lazy update of the columns after the block, in place (no N x K temporary)
      at::Tensor rest = WT.narrow(0, i2, K - i2);
      rest.addmm_(U.narrow(0, i1, count).narrow(1, i2, K - i2).t(), Err1, 1.0, -1.0);
    }
  }
  at::Tensor Q = QT.index_select(0, invperm).t().contiguous();

  return {Q, scale_out, offset_out};
}

}  // namespace
}  // namespace lowbit

TORCH_LIBRARY_FRAGMENT(lowbit, m) {
  m.def("gptq_quantize(Tensor W2d, Tensor H, str fmt, str strategy, int group_size, bool symmetric, float damp, "
        "bool act_order, bool static_groups, int block_size, bool clip=True, str scale_dtype='float32', "
        "str scale_rule='absmax') -> (Tensor, Tensor, Tensor)");
  m.impl("gptq_quantize", c10::DispatchKey::CPU, TORCH_FN(lowbit::gptq_quantize));
}

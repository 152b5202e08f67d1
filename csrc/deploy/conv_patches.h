// Where the patch rows of a convolution read their input: for a block of output positions
// (rows of the patch matrix), each row's image offset and top-left input corner, and the
// runs of rows that lie on one output line of one image (with stride 1 along x, a run
// reads consecutive input pixels). Shared by the float GEMM's patch packer and the INT8
// patch gatherer. Internal linkage; no std:: templates (compiled into ISA units).
#pragma once
#include <cstdint>

#include "deploy/packed_linear.h"

namespace lowbit {
namespace {

struct PatchRows {
  static constexpr int64_t kMax = 64;  // rows per block
  int64_t base[kMax], iy0[kMax], ix0[kMax], run_at[kMax + 1], runs = 0;

  // rows [m0, m0 + mb) of input channel group starting at channel c0
  PatchRows(const Conv2dArgs& a, int64_t c0, int64_t m0, int64_t mb) {
    const int64_t L = a.ho * a.wo, plane = a.h * a.w;
    for (int64_t t = 0; t < mb; ++t) {
      const int64_t m = m0 + t, img = m / L, p = m % L;
      base[t] = (img * a.c + c0) * plane;
      iy0[t] = (p / a.wo) * a.sy - a.py;
      ix0[t] = (p % a.wo) * a.sx - a.px;
      if (t == 0 || base[t] != base[t - 1] || iy0[t] != iy0[t - 1]) run_at[runs++] = t;
    }
    run_at[runs] = mb;
  }

  // Run r at kernel column offset dxj (stride 1 along x): rows [lo, hi) of the run
  // [run_at[r], run_at[r + 1]) read inside the image, the others the padding.
  void inside(int64_t r, int64_t dxj, int64_t width, int64_t& lo, int64_t& hi) const {
    const int64_t t = run_at[r], e = run_at[r + 1], x0 = ix0[t] + dxj;  // ix0 grows by 1 along the run
    lo = t - x0 > t ? t - x0 : t;
    if (lo > e) lo = e;
    hi = t + (width - x0) < e ? t + (width - x0) : e;
    if (hi < lo) hi = lo;
  }
};

}  // namespace
}  // namespace lowbit

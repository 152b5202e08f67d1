// The 8-bit compute mode's driver and scalar reference (dynamic_int8.h): per-token
// activation codes in kernel order, the kernels' lane sums, the output scaling.
#include "deploy/dynamic_int8.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "deploy/int8_common.h"
#include "kernels/omp_region.h"

namespace lowbit {

using namespace int8_detail;

namespace {
// Column of kernel-order position p of a block (INT4: even columns first).
inline int64_t column_of(int bits, int64_t p) { return bits == 8 ? p : (p < 16 ? 2 * p : 2 * (p - 16) + 1); }

inline float reduce_lanes(const float* f) {
  return ((f[0] + f[4]) + (f[2] + f[6])) + ((f[1] + f[5]) + (f[3] + f[7]));
}
}  // namespace

void dynamic_rows_scalar(const DynamicRows& a) {
  const int64_t blocks = a.whole + (a.tails != nullptr);
  const int64_t groups = (blocks + a.bpg - 1) / a.bpg;
  for (int64_t i = 0; i < a.rows; ++i) {
    const uint8_t* row = a.codes + i * a.row_bytes;
    // weight value at kernel-order position p of block b
    auto wv = [&](int64_t b, int64_t p) -> int32_t {
      if (b == a.whole) return a.bits == 8 ? a.tails[i * 32 + p] : a.tails[i * 32 + p] - 8;
      const int64_t k = 32 * b + column_of(a.bits, p);
      return code_value(row, a.bits, k);
    };
    for (int64_t m = 0; m < a.M; ++m) {
      const int8_t* xm = a.x + m * a.ldx;
      float f[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t g = 0; g < groups; ++g) {
        const float s = a.scale[i * a.scale_ld + (a.scale_ld ? g : 0)];
        for (int j = 0; j < 8; ++j) {
          int32_t sum = 0;
          for (int64_t b = g * a.bpg; b < std::min(blocks, (g + 1) * a.bpg); ++b)
            for (int t = 0; t < 4; ++t) sum += wv(b, 4 * j + t) * int32_t(xm[32 * b + 4 * j + t]);
          f[j] = std::fma(float(sum), s, f[j]);
        }
      }
      a.out[i * a.M + m] = reduce_lanes(f);
    }
  }
}

namespace {
DynamicInt8Kernels dynamic_int8_avx2() { return {"avx2", &dynamic_rows_avx2}; }
DynamicInt8Kernels dynamic_int8_scalar() { return {"scalar", &dynamic_rows_scalar}; }
const IsaImpl<DynamicInt8Kernels> kDynamicImpls[] = {{"avx2", &dynamic_int8_avx2}, {"scalar", &dynamic_int8_scalar}};
}  // namespace

DynamicInt8Kernels dynamic_int8_kernels() { return isa_pick(kDynamicImpls); }

void linear_dynamic_int8(const ConstMatrix& x, const GroupedIntWeight& w, const float* bias, const MutMatrix& y) {
  if (w.bits != 8 && w.bits != 4) throw std::invalid_argument("weight: bits " + std::to_string(w.bits) + "; allowed: 8, 4");
  if (w.row_bytes != (w.bits == 8 ? w.cols : (w.cols + 1) / 2))
    throw std::invalid_argument("weight: row_bytes does not match cols");
  if (x.cols != w.cols) throw std::invalid_argument("x: columns do not match the weight");
  if (w.cols > kDynamicInt8MaxCols)  // a lane sums K / 8 products of at most 128 * 128: below 2^31
    throw std::invalid_argument("weight: " + std::to_string(w.cols) + " input features; the 8-bit compute mode "
                                "allows up to " + std::to_string(kDynamicInt8MaxCols));
  if (y.rows != x.rows || y.cols != w.rows) throw std::invalid_argument("y: shape does not match");
  const int64_t M = x.rows, N = w.rows, K = w.cols;
  const int64_t G = w.per_tensor || w.group <= 0 || w.group >= K ? K : w.group;  // columns per scale
  if (G < K && G % 32 != 0)
    throw std::invalid_argument("weight: group size " + std::to_string(G) +
                                "; the 8-bit compute mode needs a multiple of 32 (or one scale per row)");
  if (M == 0 || N == 0) return;
  const int64_t whole = K / 32, blocks = (K + 31) / 32, kp = 32 * blocks;
  const int64_t bpg = G < K ? G / 32 : blocks, groups = (blocks + bpg - 1) / bpg;
  const bool tail = whole < blocks;

  // 1. activation codes: per-token INT8, exactly as fake quantization computes them
  QuantSpec spec;
  spec.format = Format::kInt8;
  spec.granularity = Granularity::kToken;
  spec.symmetric = true;
  thread_local GrowBuffer<float> sx_buf;
  thread_local GrowBuffer<uint8_t> codes_buf, flag_buf;
  thread_local GrowBuffer<int8_t> xk_buf;
  thread_local GrowBuffer<int32_t> corr_buf;
  float* sx = sx_buf.get(M);
  compute_scales(x, spec, ScaleView{sx, nullptr, nullptr});
  uint8_t* codes = codes_buf.get(M * K);
  pack(x, spec, ScaleView{sx, nullptr, nullptr}, codes, K, false);
  int8_t* xk = xk_buf.get(M * kp);
  int32_t* corr = w.bits == 4 ? corr_buf.get(M * groups * 8) : nullptr;
  // flag: 2 = NaN in the row (pack stores 0 for NaN; the reference gives a NaN row, so do
  // we); 1 = the row holds code -128 (its scale was guarded: Inf in it), outside the AVX2
  // INT8-weight kernel's range: such rows are recomputed by the scalar reference.
  uint8_t* flag = flag_buf.get(M);
  omp_region(M * K >= (1 << 16), [&] {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      const int8_t* src = reinterpret_cast<const int8_t*>(codes + m * K);
      int8_t* dst = xk + m * kp;
      for (int64_t b = 0; b < blocks; ++b)
        for (int64_t p = 0; p < 32; ++p) {
          const int64_t k = 32 * b + column_of(w.bits, p);
          dst[32 * b + p] = k < K ? src[k] : int8_t(0);
        }
      if (corr) {
        for (int64_t g = 0; g < groups; ++g)
          for (int j = 0; j < 8; ++j) {
            int32_t s = 0;
            for (int64_t b = g * bpg; b < std::min(blocks, (g + 1) * bpg); ++b)
              for (int t = 0; t < 4; ++t) s += dst[32 * b + 4 * j + t];
            corr[(m * groups + g) * 8 + j] = 8 * s;
          }
      }
      const bool nan = has_nan(static_cast<const char*>(x.data) + m * x.ld * dtype_bytes(x.dtype), x.dtype, K);
      flag[m] = nan ? 2 : uint8_t(std::find(src, src + K, int8_t(-128)) != src + K);
    }
  });
  const bool any_flag = std::any_of(flag, flag + M, [](uint8_t f) { return f != 0; });

  // 2. weight rows in chunks; activation rows in chunks that stay in L2 (256 KiB)
  const DynamicInt8Kernels kern = dynamic_int8_kernels();
  constexpr int64_t kRows = 16;
  const int64_t mchunk = std::max<int64_t>(1, std::min<int64_t>(M, (256 << 10) / kp));
  const int64_t nchunks = (N + kRows - 1) / kRows;
  omp_region(M * N * K >= (1 << 16), [&] {
    thread_local GrowBuffer<int8_t> tail_buf;
    thread_local GrowBuffer<float> out_buf;
    int8_t* tails = tail_buf.get(kRows * 32);
    float* out = out_buf.get(kRows * mchunk);
    for (int64_t m0 = 0; m0 < M; m0 += mchunk) {
      const int64_t mc = std::min(mchunk, M - m0);
#pragma omp for schedule(static)
      for (int64_t c = 0; c < nchunks; ++c) {
        const int64_t n0 = c * kRows, rows = std::min(kRows, N - n0);
        const uint8_t* wrows = w.codes + n0 * w.row_bytes;
        if (tail)
          for (int64_t i = 0; i < rows; ++i)
            for (int64_t p = 0; p < 32; ++p) {
              const int64_t k = 32 * whole + column_of(w.bits, p);
              const uint8_t* row = wrows + i * w.row_bytes;
              const int32_t offset = w.bits == 8 ? 0 : 8;  // INT4 tails hold q + 8
              tails[i * 32 + p] = int8_t((k < K ? code_value(row, w.bits, k) : 0) + offset);
            }
        DynamicRows a{wrows, w.row_bytes, w.bits, rows, tail ? tails : nullptr,
                      w.per_tensor ? w.scale : w.scale + n0 * groups, w.per_tensor ? 0 : groups,
                      whole, bpg, xk + m0 * kp, kp, mc, corr ? corr + m0 * groups * 8 : nullptr, out};
        kern.rows(a);
        if (any_flag && w.bits == 8)  // rows with code -128: the scalar reference, row by row
          for (int64_t m = 0; m < mc; ++m)
            if (flag[m0 + m] == 1) {
              DynamicRows r = a;
              r.x = xk + (m0 + m) * kp;
              r.M = 1;
              thread_local GrowBuffer<float> one_buf;
              r.out = one_buf.get(kRows);
              dynamic_rows_scalar(r);
              for (int64_t i = 0; i < rows; ++i) out[i * mc + m] = r.out[i];
            }
        for (int64_t i = 0; i < rows; ++i)
          for (int64_t m = 0; m < mc; ++m) {
            const float v = flag[m0 + m] == 2 ? std::numeric_limits<float>::quiet_NaN() : out[i * mc + m] * sx[m0 + m];
            store_at(y, m0 + m, n0 + i, bias ? v + bias[n0 + i] : v);
          }
      }
    }
  });
}

}  // namespace lowbit

// INT8 x INT8 Conv2d deploy product (see int8_linear.cpp for the integer arithmetic).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "deploy/conv_patches.h"
#include "deploy/conv_layout.h"
#include "deploy/int8_common.h"

namespace lowbit {

using namespace int8_detail;

// INT8 x INT8 convolution, static per-tensor activations: the input is quantized once
// (the same rule as fake quantization), then each group's patches are gathered from the
// codes straight into the tile layout (the padding gets the code of 0) and the results
// are written to NCHW. A NaN pixel makes every output that reads it NaN.
void conv2d_int8(const Conv2dArgs& a, const Int8Activation& act, const IntWeight& w, const float* bias) {
  if (act.per_token) throw std::invalid_argument("conv2d_int8: activations must be quantized per tensor");
  if (w.bits != 8 && w.bits != 4) throw std::invalid_argument("weight: bits " + std::to_string(w.bits) + "; allowed: 8, 4");
  const int64_t og = a.cout / a.groups, K = a.cg * a.kh * a.kw;
  if (a.groups < 1 || a.c % a.groups != 0 || a.cout % a.groups != 0 || w.rows != a.cout || w.cols != K)
    throw std::invalid_argument("weight: shape does not match the convolution");
  const int64_t L = a.ho * a.wo, M = a.n * L, pixels = a.n * a.c * a.h * a.w;
  if (M == 0) return;
  // the code of 0.0 (what zero padding quantizes to), made unsigned
  const uint8_t pad_code = uint8_t(uint8_t(int8_t(std::max(-128, std::min(127, act.offset)))) ^ 0x80u);
  if (conv2d_int8_direct(a, act, w, bias, pad_code)) return;
  if (a.channels_last) return conv2d_through_nchw(a, [&](const Conv2dArgs& b) { conv2d_int8(b, act, w, bias); });
  // 1. codes of every input pixel, and where the NaNs are
  QuantSpec spec;
  spec.format = Format::kInt8;
  spec.symmetric = act.offset == 0;
  float sx = act.scale;
  int32_t zx = act.offset;
  thread_local GrowBuffer<uint8_t> codes_buf, nan_buf, xq_buf;
  uint8_t* codes = codes_buf.get(pixels);
  const int64_t plane = a.h * a.w;
  pack(ConstMatrix{a.x, a.dtype, a.n * a.c, plane, plane}, spec, ScaleView{&sx, spec.symmetric ? nullptr : &zx, nullptr},
       codes, plane, false);
  const bool any_nan = has_nan(a.x, a.dtype, pixels);
  const int32_t zero_shift = 128 + act.offset;
  const Int8Kernels kern = int8_kernels();
  const int64_t k4 = (K + 3) / 4, mblocks = (M + kInt8TileM - 1) / kInt8TileM;
  uint8_t* xq = xq_buf.get(mblocks * k4 * kInt8TileM * 4);
  uint8_t* nan_row = nan_buf.get(M);
  const uint8_t* pix = codes;
  const char* raw = static_cast<const char*>(a.x);
  for (int64_t g = 0; g < a.groups; ++g) {
    omp_region(M * K >= (1 << 16), [&] {
#pragma omp for schedule(static)
      for (int64_t blk = 0; blk < mblocks; ++blk) {
        constexpr int64_t T = kInt8TileM;
        const int64_t m0 = blk * T, mb = std::min(T, M - m0);
        const PatchRows pr(a, g * a.cg, m0, mb);
        const int64_t *base = pr.base, *iy0 = pr.iy0, *ix0 = pr.ix0;
        // patches as [K][T] bytes (unsigned codes), then interleaved into quads
        uint8_t col[4][T];
        uint8_t* dst = xq + blk * k4 * T * 4;
        int64_t k = 0;
        for (int64_t c = 0; c < a.cg; ++c)
          for (int64_t i = 0; i < a.kh; ++i)
            for (int64_t j = 0; j < a.kw; ++j, ++k) {
              uint8_t* out = col[k & 3];
              const int64_t dyi = i * a.dy, dxj = j * a.dx, cp = c * plane;
              for (int64_t r = 0; r < pr.runs; ++r) {
                int64_t t = pr.run_at[r];
                const int64_t e = pr.run_at[r + 1], iy = iy0[t] + dyi;
                if (uint64_t(iy) >= uint64_t(a.h)) {
                  for (; t < e; ++t) out[t] = pad_code;
                  continue;
                }
                if (a.sx == 1) {  // consecutive rows read consecutive pixels
                  int64_t lo, hi;
                  pr.inside(r, dxj, a.w, lo, hi);
                  const uint8_t* src = pix + base[t] + cp + iy * a.w + ix0[t] + dxj - t;
                  for (; t < lo; ++t) out[t] = pad_code;
                  for (; t < hi; ++t) out[t] = uint8_t(src[t] ^ 0x80u);
                  for (; t < e; ++t) out[t] = pad_code;
                } else {
                  for (; t < e; ++t) {
                    const int64_t ix = ix0[t] + dxj;
                    out[t] = uint64_t(ix) < uint64_t(a.w) ? uint8_t(pix[base[t] + cp + iy * a.w + ix] ^ 0x80u) : pad_code;
                  }
                }
              }
              for (int64_t t = mb; t < T; ++t) out[t] = 0;  // rows past M
              if ((k & 3) == 3 || k == K - 1) {  // a full (or the last) quad: interleave
                const int64_t q = k >> 2, filled = (k & 3) + 1;
                uint8_t* d = dst + q * T * 4;
                for (int64_t r = filled; r < 4; ++r) std::memset(col[r], 0, T);  // K padding: 0
                interleave_quads(col, d);
              }
            }
        if (any_nan) {  // rows whose patch reads a NaN pixel
          for (int64_t t = 0; t < mb; ++t) {
            bool nan = false;
            for (int64_t c = 0; c < a.cg && !nan; ++c)
              for (int64_t i = 0; i < a.kh && !nan; ++i)
                for (int64_t j = 0; j < a.kw && !nan; ++j) {
                  const int64_t iy = iy0[t] + i * a.dy, ix = ix0[t] + j * a.dx;
                  if (uint64_t(iy) >= uint64_t(a.h) || uint64_t(ix) >= uint64_t(a.w)) continue;
                  const int64_t flat = base[t] + c * plane + iy * a.w + ix;
                  nan = std::isnan(load_element(raw, a.dtype, flat));
                }
            nan_row[m0 + t] = nan;
          }
        } else {
          for (int64_t t = 0; t < mb; ++t) nan_row[m0 + t] = 0;
        }
      }
    });
    const IntWeight wg = weight_rows(w, g * og, (g + 1) * og);  // this group's output channels
    const int64_t es = dtype_bytes(a.dtype);
    int8_tiles(wg, kern, xq, M, [&](int64_t m0, int64_t mend, int64_t n0, int64_t rows, const int32_t* acc,
                                    const int32_t* rsum) {
      float v[kInt8TileM];
      for (int64_t i = 0; i < rows; ++i) {
        const int64_t o = g * og + n0 + i;
        const float s = sx * (w.per_tensor ? w.scale[0] : w.scale[o]), b = bias ? bias[o] : 0.0f;
        const int64_t corr = int64_t(zero_shift) * rsum[i];
        for (int64_t j = 0; j < mend; ++j)
          v[j] = nan_row[m0 + j] ? __builtin_nanf("") : float(int64_t(acc[i * kInt8TileM + j]) - corr) * s + b;
        for (int64_t j = 0; j < mend;) {  // runs of one image: contiguous outputs
          const int64_t m = m0 + j, img = m / L, p = m % L, n = std::min(mend - j, L - p);
          const MutMatrix out{static_cast<char*>(a.y) + ((img * a.cout + o) * L + p) * es, a.dtype, 1, n, n};
          for (int64_t q = 0; q < n; ++q) store_at(out, 0, q, v[j + q]);
          j += n;
        }
      }
    });
  }
}

}  // namespace lowbit

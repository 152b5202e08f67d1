// INT8 x INT8 deploy product: the activations are quantized here (the same pack kernel
// and scale rule as fake quantization), multiplied with int8 (or int4) weight codes in
// int32, and scaled once per output:
//   y[m, n] = (sum_k u[m, k] w[n, k] - (128 + z) * sum_k w[n, k]) * s_x[m] * s_w[n] + bias[n]
// where u = q + 128 is the activation code made unsigned (what VNNI's vpdpbusd takes).
// That is the static per-tensor case; per-token activations go to the 8-bit compute
// mode's kernel (dynamic_int8.h), which takes the same codes.
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "deploy/dynamic_int8.h"
#include "deploy/int8_common.h"
#include "kernels/omp_region.h"

namespace lowbit {

using namespace int8_detail;

std::string int8_kernel_name() { return int8_kernels().name; }

void linear_int8(const ConstMatrix& x, const Int8Activation& act, const IntWeight& w, const float* bias,
                 const MutMatrix& y) {
  if (w.bits != 8 && w.bits != 4) throw std::invalid_argument("weight: bits " + std::to_string(w.bits) + "; allowed: 8, 4");
  if (w.row_bytes != (w.bits == 8 ? w.cols : (w.cols + 1) / 2))
    throw std::invalid_argument("weight: row_bytes does not match cols");
  if (x.cols != w.cols) throw std::invalid_argument("x: columns do not match the weight");
  if (w.cols > 65536)  // 255 * 128 * K must stay below 2^31 in the int32 accumulators
    throw std::invalid_argument("weight: " + std::to_string(w.cols) + " input features; the int8 kernel allows up to 65536");
  if (y.rows != x.rows || y.cols != w.rows) throw std::invalid_argument("y: shape does not match");
  const int64_t M = x.rows, N = w.rows, K = w.cols;
  if (M == 0) return;
  if (act.per_token && std::string(int8_kernels().name) != "avx512_vnni") {
    // Per-token activations are the 8-bit compute mode's product (dynamic_int8.h): the
    // same codes, integer sums and one scale per row. Its kernel (vpmaddubsw) replaces the
    // int16 tiles of CPUs without VNNI; VNNI CPUs keep their vpdpbusd tiles.
    GroupedIntWeight g;
    g.codes = w.codes;
    g.rows = N;
    g.cols = K;
    g.row_bytes = w.row_bytes;
    g.bits = w.bits;
    g.scale = w.scale;
    g.per_tensor = w.per_tensor;
    return linear_dynamic_int8(x, g, bias, y);
  }
  const int64_t k4 = (K + 3) / 4;
  const int64_t mblocks = (M + kInt8TileM - 1) / kInt8TileM;

  // 1. activation codes (static per tensor), exactly as fake quantization computes them
  QuantSpec spec;
  spec.format = Format::kInt8;
  spec.granularity = Granularity::kTensor;
  spec.symmetric = act.offset == 0;
  thread_local GrowBuffer<uint8_t> codes_buf, nan_buf, xq_buf;
  float sx = act.scale;
  int32_t zx = act.offset;
  uint8_t* codes = codes_buf.get(M * K);
  pack(x, spec, ScaleView{&sx, spec.symmetric ? nullptr : &zx, nullptr}, codes, K, false);
  const int32_t zero_shift = 128 + act.offset;

  const Int8Kernels kern = int8_kernels();
  // NaN has no int8 code (pack stores 0); the fake-quant reference gives a NaN row, so do we.
  uint8_t* nan_row = nan_buf.get(M);
  omp_region(M * K >= (1 << 16), [&] {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      nan_row[m] = has_nan(static_cast<const char*>(x.data) + m * x.ld * dtype_bytes(x.dtype), x.dtype, K);
    }
  });
  auto output = [&](int64_t m, int64_t n, int32_t acc, int32_t rsum) {
    if (nan_row[m]) return store_at(y, m, n, __builtin_nanf(""));
    const float sw = w.per_tensor ? w.scale[0] : w.scale[n];
    const float s = sx * sw;
    const float v = float(int64_t(acc) - int64_t(zero_shift) * rsum) * s;
    store_at(y, m, n, bias ? v + bias[n] : v);
  };

  if (M <= 4) {  // GEMV: each weight row once against every activation row
    const int64_t kp = (K + 63) / 64 * 64;
    std::vector<uint8_t> xu(size_t(M * kp), 0);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k) xu[size_t(m * kp + k)] = uint8_t(codes[m * K + k] ^ 0x80u);
    constexpr int64_t kRows = 16;
    omp_region(N * K >= (1 << 16), [&] {
      std::vector<int8_t> wrow(size_t(w.bits == 8 ? 0 : kRows * kp));
      int32_t acc[kRows * 4];
#pragma omp for schedule(static)
      for (int64_t n0 = 0; n0 < N; n0 += kRows) {
        const int64_t rows = std::min(kRows, N - n0);
        const int8_t* wp;
        int64_t ldw;
        if (w.bits == 8) {
          wp = reinterpret_cast<const int8_t*>(w.codes + n0 * w.row_bytes);
          ldw = w.row_bytes;
        } else {
          for (int64_t i = 0; i < rows; ++i) weight_row(w, n0 + i, wrow.data() + i * kp, kp);
          wp = wrow.data();
          ldw = kp;
        }
        kern.rows(wp, ldw, rows, K, xu.data(), M, kp, acc);
        for (int64_t i = 0; i < rows; ++i) {
          const int32_t rs = kern.row_sum(wp + i * ldw, K);
          for (int64_t m = 0; m < M; ++m) output(m, n0 + i, acc[i * M + m], rs);
        }
      }
    });
    return;
  }

  // Tiles: unsigned codes in quads [mblock][k4][kInt8TileM][4], zero padded
  uint8_t* xq = xq_buf.get(mblocks * k4 * kInt8TileM * 4);
  omp_region(M * K >= (1 << 16), [&] {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < mblocks * kInt8TileM; ++m) {
      uint32_t* dst = reinterpret_cast<uint32_t*>(xq + (m / kInt8TileM) * k4 * kInt8TileM * 4) + m % kInt8TileM;
      if (m >= M) {  // zero rows of the last block
        for (int64_t q = 0; q < k4; ++q) dst[q * kInt8TileM] = 0;
        continue;
      }
      const uint8_t* src = codes + m * K;
      const int64_t whole = K / 4;
      for (int64_t q = 0; q < whole; ++q) {  // four codes at a time, made unsigned
        uint32_t v;
        std::memcpy(&v, src + 4 * q, 4);
        dst[q * kInt8TileM] = v ^ 0x80808080u;
      }
      if (whole < k4) {
        uint8_t tail[4] = {0, 0, 0, 0};
        for (int64_t k = 4 * whole; k < K; ++k) tail[k - 4 * whole] = uint8_t(src[k] ^ 0x80u);
        std::memcpy(&dst[whole * kInt8TileM], tail, 4);
      }
    }
  });
  int8_tiles(w, kern, xq, M, [&](int64_t m0, int64_t mend, int64_t n0, int64_t rows, const int32_t* acc,
                                 const int32_t* rsum) {
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < mend; ++j) output(m0 + j, n0 + i, acc[i * kInt8TileM + j], rsum[i]);
  });
}

}  // namespace lowbit

// INT8 x INT8 deploy product: the activations are quantized here (the same pack kernel
// and scale rule as fake quantization), multiplied with int8 (or int4) weight codes in
// int32, and scaled once per output:
//   y[m, n] = (sum_k u[m, k] w[n, k] - (128 + z) * sum_k w[n, k]) * s_x[m] * s_w[n] + bias[n]
// where u = q + 128 is the activation code made unsigned (what VNNI's vpdpbusd takes).
#include <cpuid.h>
#include <omp.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "deploy/int8_tile.h"
#include "deploy/packed_linear.h"
#include "formats/half.h"

namespace lowbit {

namespace {

bool cpu_has_vnni() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  return (c & (1u << 11)) != 0;  // AVX512_VNNI
}

struct Int8Kernels {
  const char* name;
  Int8TileFn tile;
  Int8RowsFn rows;
  Int8RowSumFn row_sum;
};
Int8Kernels int8_kernels() {
  if (current_isa() == "avx512" && cpu_has_vnni()) return {"avx512_vnni", &int8_tile_vnni, &int8_rows_vnni, &int8_row_sum_vnni};
  return {"scalar", &int8_tile_scalar, &int8_rows_scalar, &int8_row_sum_scalar};
}

// Weight row r as int8 values (int4 codes sign-extended), zero padded to `kpad`.
void weight_row(const IntWeight& w, int64_t r, int8_t* dst, int64_t kpad) {
  const uint8_t* row = w.codes + r * w.row_bytes;
  if (w.bits == 8) {
    std::memcpy(dst, row, size_t(w.cols));
  } else {
    for (int64_t k = 0; k < w.cols; ++k) {
      const int nib = (row[k >> 1] >> ((k & 1) * 4)) & 0xF;
      dst[k] = int8_t(nib < 8 ? nib : nib - 16);
    }
  }
  std::memset(dst + w.cols, 0, size_t(kpad - w.cols));
}


// Grow-only scratch of the calling thread: large activation buffers are reused from call
// to call instead of being faulted in again.
template <class T>
T* scratch(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

void store_value(const MutMatrix& y, int64_t m, int64_t n, float v) {
  char* row = static_cast<char*>(y.data) + m * y.ld * int64_t(y.dtype == DType::kF32 ? 4 : 2);
  if (y.dtype == DType::kF32) reinterpret_cast<float*>(row)[n] = v;
  else if (y.dtype == DType::kF16) reinterpret_cast<uint16_t*>(row)[n] = float_to_fp16(v);
  else reinterpret_cast<uint16_t*>(row)[n] = float_to_bf16(v);
}

}  // namespace

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
  const int64_t k4 = (K + 3) / 4, kpad = 4 * k4;
  const int64_t mblocks = (M + kInt8TileM - 1) / kInt8TileM;

  // 1. activation codes, exactly as fake quantization computes them
  QuantSpec spec;
  spec.format = Format::kInt8;
  spec.granularity = act.per_token ? Granularity::kToken : Granularity::kTensor;
  spec.symmetric = act.per_token || act.offset == 0;
  thread_local std::vector<float> sx_buf;
  thread_local std::vector<int32_t> zx_buf;
  thread_local std::vector<uint8_t> codes_buf, nan_buf, xq_buf;
  float* sx = scratch(sx_buf, size_t(act.per_token ? M : 1));
  int32_t* zx = scratch(zx_buf, size_t(act.per_token ? M : 1));
  for (int64_t i = 0; i < (act.per_token ? M : 1); ++i) {
    sx[i] = act.scale;
    zx[i] = act.per_token ? 0 : act.offset;
  }
  if (act.per_token) compute_scales(x, spec, ScaleView{sx, nullptr, nullptr});
  uint8_t* codes = scratch(codes_buf, size_t(M * K));
  pack(x, spec, ScaleView{sx, spec.symmetric ? nullptr : zx, nullptr}, codes, K, false);
  const int32_t zero_shift = 128 + (act.per_token ? 0 : act.offset);

  const Int8Kernels kern = int8_kernels();
  // direct use of the stored int8 rows when they need no padding
  const bool direct = w.bits == 8 && K % 4 == 0;
  // NaN has no int8 code (pack stores 0); the fake-quant reference gives a NaN row, so do we.
  uint8_t* nan_row = scratch(nan_buf, size_t(M));
#pragma omp parallel for schedule(static) if (M * K >= (1 << 16))
  for (int64_t m = 0; m < M; ++m) {
    nan_row[m] = 0;
    const char* row = static_cast<const char*>(x.data) + m * x.ld * int64_t(x.dtype == DType::kF32 ? 4 : 2);
    for (int64_t k = 0; k < K && !nan_row[m]; ++k) {
      float v;
      if (x.dtype == DType::kF32) v = reinterpret_cast<const float*>(row)[k];
      else if (x.dtype == DType::kF16) v = fp16_to_float(reinterpret_cast<const uint16_t*>(row)[k]);
      else v = bf16_to_float(reinterpret_cast<const uint16_t*>(row)[k]);
      nan_row[m] = v != v;
    }
  }
  auto output = [&](int64_t m, int64_t n, int32_t acc, int32_t rsum) {
    if (nan_row[m]) return store_value(y, m, n, __builtin_nanf(""));
    const float sw = w.per_tensor ? w.scale[0] : w.scale[n];
    const float s = (act.per_token ? sx[size_t(m)] : sx[0]) * sw;
    const float v = float(int64_t(acc) - int64_t(zero_shift) * rsum) * s;
    store_value(y, m, n, bias ? v + bias[n] : v);
  };

  if (M <= 4) {  // GEMV: each weight row once against every activation row
    const int64_t kp = (K + 63) / 64 * 64;
    std::vector<uint8_t> xu(size_t(M * kp), 0);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k) xu[size_t(m * kp + k)] = uint8_t(codes[m * K + k] ^ 0x80u);
    constexpr int64_t kRows = 16;
#pragma omp parallel if (N * K >= (1 << 16))
    {
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
    }
    return;
  }

  // Tiles: unsigned codes in quads [mblock][k4][kInt8TileM][4], zero padded
  uint8_t* xq = scratch(xq_buf, size_t(mblocks * k4 * kInt8TileM * 4));
#pragma omp parallel for schedule(static) if (M * K >= (1 << 16))
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
  // Chunks of kChunkTiles weight tiles (64 rows, 256 KiB at K = 4096, L2) visit every
  // block of activation rows: each activation block is reused by all tiles of a chunk.
  constexpr int64_t kChunkTiles = 8;
  const int64_t ntiles = (N + kInt8TileN - 1) / kInt8TileN;
  const int64_t nchunks = (ntiles + kChunkTiles - 1) / kChunkTiles;
  // Work items: (chunk, part of the activation blocks). Few weight rows (a convolution)
  // are spread over the activation rows instead.
  const int64_t threads = omp_get_max_threads();
  const int64_t mparts = std::min(mblocks, std::max<int64_t>(1, (4 * threads + nchunks - 1) / nchunks));
#pragma omp parallel if (M * N * K >= (1 << 18))
  {
    std::vector<int8_t> panel(size_t(kChunkTiles * kInt8TileN * kpad));  // padded copies, one slot per tile
    int32_t acc[kInt8TileN * kInt8TileM], rsum[kChunkTiles][kInt8TileN];
    const int8_t* wp[kChunkTiles];
    int64_t ldw[kChunkTiles];
#pragma omp for schedule(static)
    for (int64_t item = 0; item < nchunks * mparts; ++item) {
      const int64_t ch = item / mparts, part = item % mparts;
      const int64_t mb0 = part * mblocks / mparts, mb1 = (part + 1) * mblocks / mparts;
      const int64_t t0 = ch * kChunkTiles, t1 = std::min(ntiles, t0 + kChunkTiles);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n0 = t * kInt8TileN, rows = std::min(kInt8TileN, N - n0);
        if (direct && rows == kInt8TileN) {
          wp[t - t0] = reinterpret_cast<const int8_t*>(w.codes + n0 * w.row_bytes);
          ldw[t - t0] = w.row_bytes;
        } else {  // int4, K not a multiple of 4, or the last partial tile: one padded copy
          int8_t* dst = panel.data() + (t - t0) * kInt8TileN * kpad;
          for (int64_t i = 0; i < kInt8TileN; ++i) {
            if (i < rows) weight_row(w, n0 + i, dst + i * kpad, kpad);
            else std::memset(dst + i * kpad, 0, size_t(kpad));
          }
          wp[t - t0] = dst;
          ldw[t - t0] = kpad;
        }
        for (int64_t i = 0; i < rows; ++i) rsum[t - t0][i] = kern.row_sum(wp[t - t0] + i * ldw[t - t0], K);
      }
      for (int64_t mb = mb0; mb < mb1; ++mb) {
        const int64_t mend = std::min(kInt8TileM, M - mb * kInt8TileM);
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t n0 = t * kInt8TileN, rows = std::min(kInt8TileN, N - n0);
          kern.tile(wp[t - t0], ldw[t - t0], xq + mb * k4 * kInt8TileM * 4, k4, acc);
          for (int64_t i = 0; i < rows; ++i)
            for (int64_t j = 0; j < mend; ++j)
              output(mb * kInt8TileM + j, n0 + i, acc[i * kInt8TileM + j], rsum[t - t0][i]);
        }
      }
    }
  }
}

}  // namespace lowbit

// INT8 x INT8 deploy product: the activations are quantized here (the same pack kernel
// and scale rule as fake quantization), multiplied with int8 (or int4) weight codes in
// int32, and scaled once per output:
//   y[m, n] = (sum_k u[m, k] w[n, k] - (128 + z) * sum_k w[n, k]) * s_x[m] * s_w[n] + bias[n]
// where u = q + 128 is the activation code made unsigned (what VNNI's vpdpbusd takes).
#include <cpuid.h>
#include <emmintrin.h>
#include <omp.h>

#include <algorithm>
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


// d[t * 4 + r] = col[r][t] for the kInt8TileM rows t: four byte rows into quads
// (SSE2, part of every x86-64 CPU).
void interleave_quads(const uint8_t (*col)[kInt8TileM], uint8_t* d) {
  static_assert(kInt8TileM % 16 == 0, "tile rows");
  for (int64_t h = 0; h < kInt8TileM; h += 16) {
    const __m128i c0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(col[0] + h));
    const __m128i c1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(col[1] + h));
    const __m128i c2 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(col[2] + h));
    const __m128i c3 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(col[3] + h));
    const __m128i lo01 = _mm_unpacklo_epi8(c0, c1), hi01 = _mm_unpackhi_epi8(c0, c1);
    const __m128i lo23 = _mm_unpacklo_epi8(c2, c3), hi23 = _mm_unpackhi_epi8(c2, c3);
    __m128i* out = reinterpret_cast<__m128i*>(d + h * 4);
    _mm_storeu_si128(out + 0, _mm_unpacklo_epi16(lo01, lo23));
    _mm_storeu_si128(out + 1, _mm_unpackhi_epi16(lo01, lo23));
    _mm_storeu_si128(out + 2, _mm_unpacklo_epi16(hi01, hi23));
    _mm_storeu_si128(out + 3, _mm_unpackhi_epi16(hi01, hi23));
  }
}

// Whether n values hold a NaN (exponent all ones, mantissa not zero), in parallel.
bool has_nan(const void* p, DType dtype, int64_t n) {
  int found = 0;
  if (dtype == DType::kF32) {
    const uint32_t* u = static_cast<const uint32_t*>(p);
#pragma omp parallel for reduction(| : found) schedule(static) if (n >= (1 << 16))
    for (int64_t i = 0; i < n; ++i) found |= (u[i] & 0x7FFFFFFFu) > 0x7F800000u;
  } else {
    const uint16_t* u = static_cast<const uint16_t*>(p);
    const uint16_t inf = dtype == DType::kF16 ? 0x7C00 : 0x7F80;
#pragma omp parallel for reduction(| : found) schedule(static) if (n >= (1 << 16))
    for (int64_t i = 0; i < n; ++i) found |= (u[i] & 0x7FFF) > inf;
  }
  return found != 0;
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

// The tiled product: xq holds the unsigned activation codes of M rows in tile order
// ([mblock][k4][kInt8TileM][4]). output(m0, mend, n0, rows, acc, row_sums) receives each
// tile: acc[i * kInt8TileM + j] is row m0 + j (j < mend) times weight row n0 + i (i < rows).
template <class Out>
void int8_tiles(const IntWeight& w, const Int8Kernels& kern, const uint8_t* xq, int64_t M, Out&& output) {
  const int64_t N = w.rows, K = w.cols, k4 = (K + 3) / 4, kpad = 4 * k4;
  const int64_t mblocks = (M + kInt8TileM - 1) / kInt8TileM;
  const bool direct = w.bits == 8 && K % 4 == 0;  // stored rows used as they are
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
          output(mb * kInt8TileM, mend, n0, rows, acc, rsum[t - t0]);
        }
      }
    }
  }
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
  const int64_t k4 = (K + 3) / 4;
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
  int8_tiles(w, kern, xq, M, [&](int64_t m0, int64_t mend, int64_t n0, int64_t rows, const int32_t* acc,
                                 const int32_t* rsum) {
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < mend; ++j) output(m0 + j, n0 + i, acc[i * kInt8TileM + j], rsum[i]);
  });
}

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
  // 1. codes of every input pixel, and where the NaNs are
  QuantSpec spec;
  spec.format = Format::kInt8;
  spec.symmetric = act.offset == 0;
  float sx = act.scale;
  int32_t zx = act.offset;
  thread_local std::vector<uint8_t> codes_buf, nan_buf, xq_buf;
  uint8_t* codes = scratch(codes_buf, size_t(pixels));
  const int64_t plane = a.h * a.w;
  pack(ConstMatrix{a.x, a.dtype, a.n * a.c, plane, plane}, spec, ScaleView{&sx, spec.symmetric ? nullptr : &zx, nullptr},
       codes, plane, false);
  const bool any_nan = has_nan(a.x, a.dtype, pixels);
  // the code of 0.0 (what zero padding quantizes to), made unsigned
  const uint8_t pad_code = uint8_t(uint8_t(int8_t(std::max(-128, std::min(127, zx)))) ^ 0x80u);
  const int32_t zero_shift = 128 + act.offset;
  const Int8Kernels kern = int8_kernels();
  const int64_t k4 = (K + 3) / 4, mblocks = (M + kInt8TileM - 1) / kInt8TileM;
  uint8_t* xq = scratch(xq_buf, size_t(mblocks * k4 * kInt8TileM * 4));
  uint8_t* nan_row = scratch(nan_buf, size_t(M));
  const uint8_t* pix = codes;
  const char* raw = static_cast<const char*>(a.x);
  for (int64_t g = 0; g < a.groups; ++g) {
#pragma omp parallel for schedule(static) if (M * K >= (1 << 16))
    for (int64_t blk = 0; blk < mblocks; ++blk) {
      constexpr int64_t T = kInt8TileM;
      const int64_t m0 = blk * T, mb = std::min(T, M - m0);
      int64_t base[T], iy0[T], ix0[T], run_at[T + 1], runs = 0;
      for (int64_t t = 0; t < mb; ++t) {
        const int64_t m = m0 + t, img = m / L, p = m % L;
        base[t] = (img * a.c + g * a.cg) * plane;
        iy0[t] = (p / a.wo) * a.sy - a.py;
        ix0[t] = (p % a.wo) * a.sx - a.px;
        if (t == 0 || base[t] != base[t - 1] || iy0[t] != iy0[t - 1]) run_at[runs++] = t;
      }
      run_at[runs] = mb;
      // patches as [K][T] bytes (unsigned codes), then interleaved into quads
      uint8_t col[4][T];
      uint8_t* dst = xq + blk * k4 * T * 4;
      int64_t k = 0;
      for (int64_t c = 0; c < a.cg; ++c)
        for (int64_t i = 0; i < a.kh; ++i)
          for (int64_t j = 0; j < a.kw; ++j, ++k) {
            uint8_t* out = col[k & 3];
            const int64_t dyi = i * a.dy, dxj = j * a.dx, cp = c * plane;
            for (int64_t r = 0; r < runs; ++r) {
              int64_t t = run_at[r];
              const int64_t e = run_at[r + 1], iy = iy0[t] + dyi;
              if (uint64_t(iy) >= uint64_t(a.h)) {
                for (; t < e; ++t) out[t] = pad_code;
                continue;
              }
              if (a.sx == 1) {  // consecutive rows read consecutive pixels
                const int64_t lo = std::min(e, std::max(t, t - (ix0[t] + dxj)));
                const int64_t hi = std::max(lo, std::min(e, t + (a.w - (ix0[t] + dxj))));
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
        const char* raw8 = raw;
        for (int64_t t = 0; t < mb; ++t) {
          bool nan = false;
          for (int64_t c = 0; c < a.cg && !nan; ++c)
            for (int64_t i = 0; i < a.kh && !nan; ++i)
              for (int64_t j = 0; j < a.kw && !nan; ++j) {
                const int64_t iy = iy0[t] + i * a.dy, ix = ix0[t] + j * a.dx;
                if (uint64_t(iy) >= uint64_t(a.h) || uint64_t(ix) >= uint64_t(a.w)) continue;
                const int64_t flat = base[t] + c * plane + iy * a.w + ix;
                const float v = a.dtype == DType::kF32 ? reinterpret_cast<const float*>(raw8)[flat]
                                : a.dtype == DType::kF16 ? fp16_to_float(reinterpret_cast<const uint16_t*>(raw8)[flat])
                                                         : bf16_to_float(reinterpret_cast<const uint16_t*>(raw8)[flat]);
                nan = v != v;
              }
          nan_row[m0 + t] = nan;
        }
      } else {
        for (int64_t t = 0; t < mb; ++t) nan_row[m0 + t] = 0;
      }
    }
    IntWeight wg = w;  // this group's output channels
    wg.codes += g * og * w.row_bytes;
    wg.rows = og;
    if (!w.per_tensor) wg.scale += g * og;
    const int64_t es = a.dtype == DType::kF32 ? 4 : 2;
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
          for (int64_t q = 0; q < n; ++q) store_value(out, 0, q, v[j + q]);
          j += n;
        }
      }
    });
  }
}

}  // namespace lowbit

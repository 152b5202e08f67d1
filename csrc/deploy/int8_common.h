// Pieces shared by the INT8 x INT8 Linear (int8_linear.cpp) and Conv2d (int8_conv.cpp):
// kernel choice, weight rows as int8, the tiled product driver, scratch and stores.
// Internal to csrc/deploy; compiled without instruction-set flags (the VNNI code is in
// int8_tile_vnni.cpp).
#pragma once
#include <emmintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "deploy/int8_tile.h"
#include "deploy/packed_linear.h"
#include "deploy/scratch.h"
#include "formats/half.h"
#include "kernels/omp_region.h"

namespace lowbit {
namespace int8_detail {

struct Int8Kernels {
  const char* name;
  Int8TileFn tile;
  Int8RowsFn rows;
  Int8RowSumFn row_sum;
};
inline Int8Kernels int8_kernels_vnni() { return {"avx512_vnni", &int8_tile_vnni, &int8_rows_vnni, &int8_row_sum_vnni}; }
inline Int8Kernels int8_kernels_avx2() { return {"avx2", &int8_tile_avx2, &int8_rows_avx2, &int8_row_sum_avx2}; }
inline Int8Kernels int8_kernels_scalar() { return {"scalar", &int8_tile_scalar, &int8_rows_scalar, &int8_row_sum_scalar}; }
// This family's code per instruction set (avx512 uses the AVX2 tiles: its base).
inline Int8Kernels int8_kernels() {
  static const IsaImpl<Int8Kernels> impls[] = {
      {"avx512_vnni", &int8_kernels_vnni}, {"avx2", &int8_kernels_avx2}, {"scalar", &int8_kernels_scalar}};
  return isa_pick(impls);
}

// The int8 value of column k of a row of codes (int4: two per byte, low nibble first,
// sign-extended).
inline int32_t code_value(const uint8_t* row, int bits, int64_t k) {
  if (bits == 8) return int8_t(row[k]);
  const int nib = (row[k >> 1] >> ((k & 1) * 4)) & 0xF;
  return nib < 8 ? nib : nib - 16;
}

// Weight row r as int8 values (int4 codes sign-extended), zero padded to `kpad`.
inline void weight_row(const IntWeight& w, int64_t r, int8_t* dst, int64_t kpad) {
  const uint8_t* row = w.codes + r * w.row_bytes;
  if (w.bits == 8) {
    std::memcpy(dst, row, size_t(w.cols));
  } else {
    for (int64_t k = 0; k < w.cols; ++k) {
      dst[k] = int8_t(code_value(row, 4, k));
    }
  }
  std::memset(dst + w.cols, 0, size_t(kpad - w.cols));
}


// d[t * 4 + r] = col[r][t] for the kInt8TileM rows t: four byte rows into quads
// (SSE2, part of every x86-64 CPU).
inline void interleave_quads(const uint8_t (*col)[kInt8TileM], uint8_t* d) {
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

// INT8 x INT8 convolution without patches where AVX512-VNNI and the layer allow it
// (output channels per group a multiple of 16, no NaN in the input); false otherwise,
// before or after writing some outputs (int8_conv_direct.cpp). pad_code: the unsigned
// code of 0.
bool conv2d_int8_direct(const Conv2dArgs& a, const Int8Activation& act, const IntWeight& w, const float* bias,
                        uint8_t pad_code);

// Whether n values hold a NaN (exponent all ones, mantissa not zero), in parallel, four or
// eight values per SSE2 compare (SSE2: every x86-64 CPU).
inline bool has_nan(const void* p, DType dtype, int64_t n) {
  int found = 0;
  const bool wide = dtype == DType::kF32;
  const int64_t per = wide ? 4 : 8, vecs = n / per;
  // NaN: the magnitude bits above those of infinity
  const uint32_t abs_bits = wide ? 0x7FFFFFFFu : 0x7FFFu;
  const uint32_t inf_bits = wide ? 0x7F800000u : dtype == DType::kF16 ? 0x7C00u : 0x7F80u;
  const __m128i mask = wide ? _mm_set1_epi32(int(abs_bits)) : _mm_set1_epi16(short(abs_bits));
  const __m128i inf = wide ? _mm_set1_epi32(int(inf_bits)) : _mm_set1_epi16(short(inf_bits));
  const __m128i* v = static_cast<const __m128i*>(p);
  auto chunk_has_nan = [&](int64_t c) {  // chunks of 1024 vectors
    __m128i any = _mm_setzero_si128();
    for (int64_t i = c * 1024; i < std::min(vecs, (c + 1) * 1024); ++i) {
      const __m128i m = _mm_and_si128(_mm_loadu_si128(v + i), mask);
      any = _mm_or_si128(any, wide ? _mm_cmpgt_epi32(m, inf) : _mm_cmpgt_epi16(m, inf));
    }
    return _mm_movemask_epi8(any) != 0;
  };
  const int64_t chunks = (vecs + 1023) / 1024;
  if (n >= (1 << 16)) {  // (no serialized region below: see kernels/omp_region.h)
#pragma omp parallel for reduction(| : found) schedule(static)
    for (int64_t c = 0; c < chunks; ++c) found |= chunk_has_nan(c);
  } else {
    for (int64_t c = 0; c < chunks && !found; ++c) found |= chunk_has_nan(c);
  }
  for (int64_t i = vecs * per; i < n && !found; ++i) {
    const uint32_t u = wide ? static_cast<const uint32_t*>(p)[i] : static_cast<const uint16_t*>(p)[i];
    found = (u & abs_bits) > inf_bits;
  }
  return found != 0;
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
  omp_region(M * N * K >= (1 << 18), [&] {
    thread_local GrowBuffer<int8_t> panel_buf;  // padded copies, one slot per tile (rows fully written)
    int8_t* panel = panel_buf.get(kChunkTiles * kInt8TileN * kpad);
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
          int8_t* dst = panel + (t - t0) * kInt8TileN * kpad;
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
  });
}

}  // namespace int8_detail
}  // namespace lowbit

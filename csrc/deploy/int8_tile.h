// Inner loops of the INT8 x INT8 product, accumulated over the whole K in int32.
//
// Tile (many activation rows): kInt8TileN weight rows x kInt8TileM activation rows.
//   w:  kInt8TileN rows of int8, `ldw` bytes apart, K padded with zeros to whole quads
//   xq: unsigned activation codes in quads: xq[(q * kInt8TileM + j) * 4 + t] = u[j, 4q + t]
//   acc: [kInt8TileN][kInt8TileM] int32, overwritten
// Rows (few activation rows, GEMV): every weight row against M <= 4 activation rows.
//   w: `rows` rows of `k` int8 values, `ldw` bytes apart (no padding needed)
//   xu: M rows of unsigned codes, `kpad` (k rounded up to 64) bytes each, zero padded
//   acc: [rows][M] int32
#pragma once
#include <cstdint>

namespace lowbit {

constexpr int64_t kInt8TileN = 8;
constexpr int64_t kInt8TileM = 32;

using Int8TileFn = void (*)(const int8_t* w, int64_t ldw, const uint8_t* xq, int64_t k4, int32_t* acc);
using Int8RowsFn = void (*)(const int8_t* w, int64_t ldw, int64_t rows, int64_t k, const uint8_t* xu, int64_t M,
                            int64_t kpad, int32_t* acc);

using Int8RowSumFn = int32_t (*)(const int8_t* w, int64_t k);  // sum of k int8 values

int32_t int8_row_sum_scalar(const int8_t* w, int64_t k);
int32_t int8_row_sum_vnni(const int8_t* w, int64_t k);
void int8_tile_scalar(const int8_t* w, int64_t ldw, const uint8_t* xq, int64_t k4, int32_t* acc);
void int8_rows_scalar(const int8_t* w, int64_t ldw, int64_t rows, int64_t k, const uint8_t* xu, int64_t M,
                      int64_t kpad, int32_t* acc);
// AVX2 versions (int16 multiply-adds): call only when the CPU has AVX2.
void int8_tile_avx2(const int8_t* w, int64_t ldw, const uint8_t* xq, int64_t k4, int32_t* acc);
void int8_rows_avx2(const int8_t* w, int64_t ldw, int64_t rows, int64_t k, const uint8_t* xu, int64_t M,
                    int64_t kpad, int32_t* acc);
int32_t int8_row_sum_avx2(const int8_t* w, int64_t k);
// Direct convolution tile (AVX512-VNNI), output channels in the vectors: for TP pixels
// (int8_conv_tile_pixels(mv)) and 16 mv channels (mv = 1, 2, 4),
//   out[p * ldo + ch] = float(sum_q u8x4(px[p] + off[q]) . wt[q][ch] - corr[ch]) * scale[ch] + bias[ch]
// with wt as [nq][16 mv][4] signed bytes (4 input channels of one tap per quad).
struct Int8ConvTile {
  int mv = 1;
  const int8_t* wt = nullptr;
  const int64_t* off = nullptr;
  int64_t nq = 0;
  const uint8_t* const* px = nullptr;
  const int32_t* corr = nullptr;
  const float* scale = nullptr;
  const float* bias = nullptr;
  float* out = nullptr;
  int64_t ldo = 0;
  bool channel_major = false;  // out[ch * ldo + p] instead (an NCHW plane run per channel)
};
inline int int8_conv_tile_pixels(int mv) { return mv == 4 ? 6 : 12; }

// AVX512-VNNI versions: call only when the CPU has it.
void int8_conv_tile_vnni(const Int8ConvTile& t);
void int8_tile_vnni(const int8_t* w, int64_t ldw, const uint8_t* xq, int64_t k4, int32_t* acc);
void int8_rows_vnni(const int8_t* w, int64_t ldw, int64_t rows, int64_t k, const uint8_t* xu, int64_t M,
                    int64_t kpad, int32_t* acc);

}  // namespace lowbit

// Portable int8 tile (any CPU); the reference the VNNI tile is tested against.
#include "deploy/int8_tile.h"

namespace lowbit {

void int8_tile_scalar(const int8_t* w, int64_t ldw, const uint8_t* xq, int64_t k4, int32_t* acc) {
  for (int64_t i = 0; i < kInt8TileN; ++i) {
    for (int64_t j = 0; j < kInt8TileM; ++j) {
      int32_t s = 0;
      for (int64_t q = 0; q < k4; ++q)
        for (int64_t t = 0; t < 4; ++t)
          s += int32_t(w[i * ldw + 4 * q + t]) * int32_t(xq[(q * kInt8TileM + j) * 4 + t]);
      acc[i * kInt8TileM + j] = s;
    }
  }
}

}  // namespace lowbit

namespace lowbit {

int32_t int8_row_sum_scalar(const int8_t* w, int64_t k) {
  int32_t s = 0;
  for (int64_t i = 0; i < k; ++i) s += w[i];
  return s;
}

void int8_rows_scalar(const int8_t* w, int64_t ldw, int64_t rows, int64_t k, const uint8_t* xu, int64_t M,
                      int64_t kpad, int32_t* acc) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t m = 0; m < M; ++m) {
      int32_t s = 0;
      for (int64_t i = 0; i < k; ++i) s += int32_t(w[r * ldw + i]) * int32_t(xu[m * kpad + i]);
      acc[r * M + m] = s;
    }
}

}  // namespace lowbit

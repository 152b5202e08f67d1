// Opt-in 8-bit compute for weight-only INT8 / INT4 Linear layers (convert's
// compute="int8"): the activations are quantized per token inside the op (symmetric,
// scale = absmax / 127: lowbit's per-token INT8 rule and codes), multiplied with the
// weight codes in int32, and each group's integer sums are scaled once.
//
// The arithmetic, which every instruction set follows exactly (so the vector kernels
// equal the scalar reference bit for bit): a row's columns are taken in blocks of 32,
// and in "kernel order" (INT8 weights: as stored; INT4: the block's 16 even columns, then
// its 16 odd ones, as the packed bytes' low and high nibbles give them). Lane j (0..7)
// of a block holds its kernel-order positions 4j .. 4j + 3. For weight row n, activation
// row m and each group g of columns (one scale s_w[n, g]):
//   S_j   = sum over the group's blocks and lane j's positions of q_w * q_x    (exact int32)
//   f_j  <- fma(float(S_j), s_w[n, g], f_j)         (f_j from 0; one rounding: fused multiply-add)
//   r     = ((f_0 + f_4) + (f_2 + f_6)) + ((f_1 + f_5) + (f_3 + f_7))
//   y     = r * s_x[m] + bias[n]
#pragma once
#include <cstdint>

#include "kernels/quant_kernels.h"

namespace lowbit {

// Symmetric INT8 or INT4 weight codes (INT4: two per byte, low nibble first) with one
// scale per group of `group` columns (group = cols: one per row), or one per tensor.
struct GroupedIntWeight {
  const uint8_t* codes = nullptr;
  int64_t rows = 0, cols = 0, row_bytes = 0;
  int bits = 8;
  const float* scale = nullptr;
  int64_t group = 0;        // columns per scale; a multiple of 32 unless it covers the row
  bool per_tensor = false;  // one scale in all
};

// Input features the mode takes at most.
constexpr int64_t kDynamicInt8MaxCols = int64_t(1) << 20;

void linear_dynamic_int8(const ConstMatrix& x, const GroupedIntWeight& w, const float* bias, const MutMatrix& y);

// One call: `rows` weight rows against M activation rows, r (above) into out[i * M + m].
struct DynamicRows {
  const uint8_t* codes;  // weight row 0 of the call; rows `row_bytes` apart
  int64_t row_bytes;
  int bits;
  int64_t rows;
  const int8_t* tails;  // K % 32 != 0: each row's last block, 32 bytes, decoded (below); else nullptr
  const float* scale;   // scale[i * scale_ld + g] (scale_ld 0: one scale)
  int64_t scale_ld;
  int64_t whole;        // whole blocks of 32 columns; blocks = whole + (tails != nullptr)
  int64_t bpg;          // blocks per group (the last group may be shorter)
  const int8_t* x;      // M rows of activation codes in kernel order, `ldx` bytes apart, zero padded
  int64_t ldx, M;
  const int32_t* corr;  // INT4: corr[(m * groups + g) * 8 + j] = 8 * (sum of lane j's x in group g)
  float* out;
};
// Decoded tail blocks: INT8 weights as int8 values, INT4 as q + 8 (0..15), kernel order.
using DynamicRowsFn = void (*)(const DynamicRows&);

void dynamic_rows_scalar(const DynamicRows& a);
void dynamic_rows_avx2(const DynamicRows& a);  // call only when the CPU has AVX2

struct DynamicInt8Kernels {
  const char* name;
  DynamicRowsFn rows;
};
// The selected instruction set's entry (isa_pick): "avx2" on AVX2 and AVX-512 CPUs, else "scalar".
DynamicInt8Kernels dynamic_int8_kernels();

}  // namespace lowbit

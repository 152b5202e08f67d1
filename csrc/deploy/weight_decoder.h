// Decoding packed weights into fp32 tiles for the deploy matrix products.
//
// A decoder writes rows [r0, r1) x columns [k0, k1) of the dequantized weight into an
// fp32 tile. Columns are visited in chunks of 32 (kChunk); k0 is a multiple of 32 and
// columns at or beyond `cols` hold finite filler values (the activations there are 0).
// A decoder may produce the columns in another order (ColumnOrder) when that is what its
// loads give cheaply; the activations are permuted the same way, so the dot products are
// unchanged. Its fused GEMV (dot_rows) may use an order of its own (dot_order).
#pragma once
#include <cstdint>

#include "deploy/packed_linear.h"

namespace lowbit {

constexpr int64_t kChunk = 32;

static inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// (static inline helpers: this header is compiled into every instruction-set unit.)
// Column orders (position of column k in the decoder's output):
//   kNatural:     k.
//   kEvenOdd:     per chunk of 32 columns, the even ones then the odd ones (the low, then
//                 the high nibbles of 16 bytes of 4-bit codes).
//   kNibbleLanes: per block of 128 columns, column 8 l + j at position 16 j + l (nibble j of
//                 32-bit lane l of 64 bytes of 4-bit codes: 8 vectors from one load, no
//                 widening shuffle); only the blocks below `cols` rounded down to 128, the
//                 columns after them as in kEvenOdd. Blocks start at multiples of 128.
enum class ColumnOrder : uint8_t { kNatural, kEvenOdd, kNibbleLanes };
constexpr int64_t kLaneBlock = 128;

static inline int64_t column_position(int64_t k, ColumnOrder order, int64_t cols) {
  if (order == ColumnOrder::kNatural) return k;
  if (order == ColumnOrder::kNibbleLanes && k < cols / kLaneBlock * kLaneBlock) {
    const int64_t c = k % kLaneBlock;
    return k - c + 16 * (c % 8) + c / 8;
  }
  const int64_t base = k - k % kChunk, j = k % kChunk;
  return base + (j % 2 == 0 ? j / 2 : 16 + j / 2);
}

// The kind of stored code a decoder reads, from the format's row: a new format of a known
// kind (an integer of another width in a nibble, another 4-bit value table) needs no
// decoder of its own.
enum class StoredCode : uint8_t {
  kIntNibble,  // two's complement in 4 bits (int4, int3)
  kInt8,       // two's complement in 8 bits
  kTable4,     // 4-bit float codes decoded by a 16-entry table (FP4 E2M1/E1M2, MXFP4)
  kE4M3,       // FP8 E4M3FN (and MXFP8)
  kHiF8,       // HiFloat8
};

static inline StoredCode stored_code(Format f) {
  const FormatInfo& info = format_info(f);
  if (info.is_int()) return info.bits == 4 ? StoredCode::kIntNibble : StoredCode::kInt8;
  if (info.bits == 4) return StoredCode::kTable4;
  return info.code == Code::kHiF8 ? StoredCode::kHiF8 : StoredCode::kE4M3;
}

struct WeightDecoder {
  const PackedWeight* w = nullptr;
  ColumnOrder order = ColumnOrder::kNatural;      // of decode
  ColumnOrder dot_order = ColumnOrder::kNatural;  // of dot_rows
  // scratch: at least decode_scratch_bytes(k1 - k0) bytes, private to the calling thread
  void (*decode)(const WeightDecoder& self, int64_t r0, int64_t r1, int64_t k0, int64_t k1, float* out,
                 int64_t ld, uint8_t* scratch) = nullptr;
  // Optional fused GEMV (decode and multiply without a tile): for rows [r0, r1) and
  // columns [k0, k1) (k0 a multiple of kLaneBlock, k1 of 32), out[(r - r0) * M + m] += sum_k w(r, k) * xp[m * kpad + k],
  // with xp in dot_order. M is one of with_gemv_rows' counts (1, 2, 3, 4 or 8).
  void (*dot_rows)(const WeightDecoder& self, int64_t r0, int64_t r1, const float* xp, int64_t M, int64_t kpad,
                   int64_t k0, int64_t k1, float* out) = nullptr;
  // The same for activations with a NaN/Inf or |x| >= 2^64, where dot_rows may not serve
  // (a dot_rows that scales a row's dot product instead of each weight could overflow
  // where the scaled weights do not); null: dot_rows serves every input.
  void (*dot_rows_huge_x)(const WeightDecoder& self, int64_t r0, int64_t r1, const float* xp, int64_t M,
                          int64_t kpad, int64_t k0, int64_t k1, float* out) = nullptr;
  // Activation rows up to which products run dot_rows (above 8: in passes of 8 rows
  // rather than the blocked GEMM; each pass reads the weight again, which costs less than
  // decoding panels where dot_rows is cheap per row; below 8: where dot_rows is slower
  // than decoding rows for the plain GEMV from that many rows on).
  int64_t dot_rows_max = 8;
  void run(int64_t r0, int64_t r1, int64_t k0, int64_t k1, float* out, int64_t ld, uint8_t* scratch) const {
    decode(*this, r0, r1, k0, k1, out, ld, scratch);
  }
};

static inline int64_t decode_scratch_bytes(int64_t span) { return span + 64; }

// The GEMV's compiled activation-row counts, 1, 2, 3, 4 and 8 (5 to 8 rows run as 8, the
// rows beyond M being zeros): fn(GemvRows<MR>{}) for the count that serves M.
template <int N>
struct GemvRows {
  static constexpr int value = N;
};
template <class Fn>
static inline void with_gemv_rows(int64_t M, Fn&& fn) {
  switch (M) {
    case 1: return fn(GemvRows<1>{});
    case 2: return fn(GemvRows<2>{});
    case 3: return fn(GemvRows<3>{});
    case 4: return fn(GemvRows<4>{});
    default: return fn(GemvRows<8>{});
  }
}

// Post-processing every decoder applies to a decoded row: FP8 x FP4 row scale, then
// rounding to the weight dtype (both exactly as unpack + two_level_weight do).
void finish_row(const PackedWeight& w, int64_t r, float* row, int64_t n);

}  // namespace lowbit

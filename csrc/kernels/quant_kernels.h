// Public entry points of the quantization kernels: scale computation, fake quantization
// (quantize-dequantize), packing to storage bytes and unpacking. Plain C++ on pointers:
// a tensor is seen as a matrix [rows, cols] with a contiguous last axis and a row stride.
// Each call runs the best instruction set of this CPU (AVX-512, AVX2 or scalar), chosen
// at run time; all three give identical bits.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "isa/isa_registry.h"
#include "scales/granule_scale.h"

namespace lowbit {

enum class DType : int { kF32, kF16, kBF16 };

struct ConstMatrix {
  const void* data;
  DType dtype;
  int64_t rows, cols, ld;  // ld: elements between row starts
};
struct MutMatrix {
  void* data;
  DType dtype;
  int64_t rows, cols, ld;
};

// Scale storage, `rows x groups` entries (one entry for kTensor). MX formats use
// `e8m0` only; other formats use `scale` and, when asymmetric, `offset`.
struct ScaleView {
  float* scale = nullptr;
  int32_t* offset = nullptr;
  uint8_t* e8m0 = nullptr;
};

// Throws std::invalid_argument naming the argument, value and allowed values.
void validate_spec(const QuantSpec& spec);
// Scale granules along one row (1 for tensor/channel/token).
int64_t groups_per_row(const QuantSpec& spec, int64_t cols);
// Number of scale entries for a [rows, cols] tensor.
int64_t scale_count(const QuantSpec& spec, int64_t rows, int64_t cols);
// Bytes of one packed row: ceil(cols/2) for 4-bit codes, cols for 8-bit ones; MX rows
// are padded with zero codes to whole blocks of 32.
int64_t packed_row_bytes(const QuantSpec& spec, int64_t cols);

void compute_scales(const ConstMatrix& x, const QuantSpec& spec, ScaleView scales);
void fake_quant(const ConstMatrix& x, const QuantSpec& spec, ScaleView scales, const MutMatrix& out);
// Scales computed from x itself (dynamic), then QDQ; writes scales too when given.
void fake_quant_dynamic(const ConstMatrix& x, const QuantSpec& spec, const MutMatrix& out,
                        ScaleView scales_out = {});
// Codes of every element; `nibbles` packs 4-bit codes two per byte (low nibble = even
// index), otherwise one code per byte. `out_ld` is bytes between output rows.
void pack(const ConstMatrix& x, const QuantSpec& spec, ScaleView scales, uint8_t* out,
          int64_t out_ld, bool nibbles = true);
void unpack(const uint8_t* codes, int64_t codes_ld, const QuantSpec& spec, ScaleView scales,
            const MutMatrix& out, bool nibbles = true);


}  // namespace lowbit

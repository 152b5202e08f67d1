// Turning the statistics of one granule (a tensor, a row, a group or an MX block) into
// its quantization parameters. One scalar function serves every kernel path, so the
// vectorised and scalar paths cannot disagree on a scale.
#pragma once
#include <cstdint>

#include "formats/format.h"

namespace lowbit {

// NaN-ignoring max and min of a granule, plus whether it held a NaN.
// An all-NaN granule has max = -inf, min = +inf.
struct GranuleStats {
  float max_value;
  float min_value;
  bool has_nan;
};

struct QuantSpec {
  Format format = Format::kInt8;
  Granularity granularity = Granularity::kTensor;
  int64_t group_size = 0;  // only with kGroup (and always 32 for MX formats)
  bool symmetric = true;
  MxRule mx_rule = MxRule::kAuto;
  // INT scales rounded to the nearest fp16 value (round to nearest even, kept in
  // [2^-23, 65504]): the grid that a file with fp16 block scales (GGUF Q8_0/Q4_0) holds
  bool fp16_scale = false;
  // Symmetric INT4 scale rule "signed_max" (ggml's Q4_0): s = m / -8, m the granule's
  // value of largest magnitude with its sign (on a tie, the negative one), so code -8
  // lands on m's side; the scale is negative when m is positive
  bool signed_max = false;
  // llama.cpp's K-quant scale grid (scale_dtype "q4_k" / "q6_k", the format row's
  // superblock_scale): symmetric integers in groups of 32, each run of kSuperBlockGroups
  // groups of a row sharing an fp16 d, every group's scale d x sc with sc an integer in
  // [1, superblock_sc_max] (superblock_scales())
  bool superblock_scales = false;
};

// Groups of 32 per Q4_K super-block of 256 columns.
constexpr int64_t kSuperBlockGroups = 8;

// Parameters of one granule. For MX formats `scale` is 2^e (NaN for a 0xFF block)
// and `e8m0` the stored byte; `offset` is non-zero only for asymmetric INT.
struct GranuleParams {
  float scale;
  int32_t offset;
  uint8_t e8m0;
};

// The readable rule. The kernels run an inlined copy (granule_rule.h); tests compare both.
GranuleParams granule_params(const QuantSpec& spec, const GranuleStats& st);

// An INT scale as fp16 would store it: the nearest fp16 value, kept finite and non-zero
// with its sign (magnitudes below 2^-23 are guarded to 1.0 before, so the lower clamp
// never triggers; signed_max scales are negative where the granule's max is positive).
float fp16_scale_value(float s);

// The K-quant scale grid applied to one row's `n` group parameters (absmax scales), in
// runs of kSuperBlockGroups (the last may be shorter): d = fp16(max scale / sc_max), each
// scale becomes d x clamp(round(scale / d), 1, sc_max) (exact in fp32: 11 x 7 bits).
void superblock_scales(GranuleParams* params, int64_t n, int sc_max);

// Splits one run of at most kSuperBlockGroups such scales back into d (an fp16 value) and
// the integers sc in [1, sc_max] with scale == d x sc exactly; false when they are not of
// that form (what a Q4_K / Q6_K block can hold exactly).
bool split_superblock_scales(const float* scales, int64_t n, int sc_max, float* d, uint8_t* sc);

}  // namespace lowbit

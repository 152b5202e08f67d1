// Every numeric format lowbit knows, as one table (format.cpp): one row per format holds
// its storage, its element code, its scale rule and what the config validator allows.
// The codecs, the scale code, the deploy decoders and the validator read the row; Python
// reads the same rows through _C.format_table().
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace lowbit {

enum class Format : int {
  kInt8,
  kInt4,
  kFloat8E4M3FN,
  kHiFloat8,
  kFloat4E2M1,
  kFloat4E1M2,
  kMxFp8E4M3FN,
  kMxFp4E2M1,
  kInt3,
  kInt6,
};

// How scales are shared across a tensor viewed as [rows, K] (K = last axis).
enum class Granularity : int {
  kTensor,   // one scale for everything
  kChannel,  // one scale per row (output channel of a weight)
  kGroup,    // contiguous groups of group_size along K, ragged last group allowed
  kToken,    // one scale per row, dynamic activation rule (absmax / format max)
};

// Which E8M0 shared-exponent rule an MX format uses.
enum class MxRule : int {
  kAuto,    // the row's mx_bump: Ascend for MXFP4, OCP for MXFP8
  kOcp,     // floor(log2 amax) - emax_elem
  kAscend,  // as OCP, plus one when amax / 2^floor(log2 amax) > 1.75
};

// What one stored code means before scaling (each has a reference codec in
// reference.cpp, a vector codec in kernels/codecs.h and a value table in codec_luts.cpp).
enum class Code : int {
  kInt,     // two's complement integer of int_bits
  kE4M3FN,  // OCP FP8 E4M3FN
  kE2M1,    // OCP FP4 E2M1
  kE1M2,    // FP4 E1M2
  kHiF8,    // HiFloat8 (tapered)
};

// How a granule's scale follows from its statistics.
enum class ScaleRule : int {
  kIntRange,  // integer grid: absmax (or max - min) over the code range, optional zero point
  kDivisor,   // absmax / divisor (token_divisor for dynamic per-token activations)
  kE8M0,      // a power of two per block of `block` elements (MX)
};

// Bit mask of granularities.
constexpr unsigned granularity_bit(Granularity g) { return 1u << int(g); }

// One row of the format table.
struct FormatInfo {
  Format format;
  const char* name;
  // storage
  int bits;        // stored bits per code: 8, or 4 (two codes per byte, low nibble first)
  int block;       // elements per E8M0 scale byte (MX; rows padded to whole blocks), else 0
  // element code
  Code code;
  int int_bits;    // kInt: codes span [-2^(int_bits-1), 2^(int_bits-1) - 1]; 0 otherwise
  int nan_code;    // the code that means NaN (-1: none, NaN quantizes like 0)
  int nan_mask;    // bits of a code compared against nan_code (the sign bit is outside it)
  // scales
  ScaleRule scale;
  float divisor;        // kDivisor: static scale = absmax / divisor
  float token_divisor;  // kDivisor: dynamic per-token scale = absmax / token_divisor
  int mx_emax;          // kE8M0: exponent of the element's largest power of two
  bool mx_bump;         // kE8M0: whether MxRule::kAuto means the Ascend bump
  Format element;       // the per-element format (itself, or the scalar format of an MX one)
  // what a config may ask for
  bool as_weight;                   // a weight type (quant_cfg.weights.type)
  bool as_input;                    // an activation type (quant_cfg.inputs.type)
  unsigned weight_granularities;    // granularity_bit() mask allowed for weights
  Granularity default_granularity;  // of weights when the config names none
  int default_group;                // group_size of weights when strategy 'group' names none
  bool allows_asym;                 // a zero point (symmetric: False)
  bool allows_fp16_scale;           // scale_dtype 'float16'
  bool allows_signed_max;           // scale_rule 'signed_max' (ggml's Q4_0 rule)
  // scale_dtype naming llama.cpp's K-quant scale grid for this format ("q4_k": nibble
  // integers, "q6_k": int6; nullptr: none): group scales d x sc, sc in [1, superblock_sc_max]
  const char* superblock_scale;
  int superblock_sc_max;
  // derived
  bool is_mx() const { return block > 0; }
  bool is_int() const { return code == Code::kInt; }
};

const FormatInfo& format_info(Format f);
// Every row, in the table's order (what Python's lowbit.FORMATS lists).
const std::vector<FormatInfo>& format_table();
std::vector<Format> all_formats();
// Bytes of one packed row of `cols` elements: 4-bit codes two per byte, MX rows padded
// to whole blocks (what pack() writes, the deploy kernels read and a saved model holds).
int64_t packed_row_bytes(Format f, int64_t cols);
// The names of the rows that satisfy `pred`, as English ("int8 and int4", "a, b and c").
std::string format_names_where(bool (*pred)(const FormatInfo&));
// The same for the rows whose superblock_scale is `name`.
std::string superblock_format_names(const std::string& name);
// The values of a weights "scale_dtype": float32, float16, then the table's K-quant grids
// ("q4_k", "q6_k"), each once (computed once).
const std::vector<std::string>& scale_dtype_names();
// Each K-quant grid with its formats: "q4_k: int4 and int3; q6_k: int6".
std::string superblock_grid_list();
// The names of the rows that satisfy `pred`, as a list.
std::vector<std::string> format_name_list(bool (*pred)(const FormatInfo&));

// Parsing helpers. They throw std::invalid_argument with a message that names the
// argument, the bad value and the allowed values.
Format parse_format(const std::string& name);
Granularity parse_granularity(const std::string& name);
MxRule parse_mx_rule(const std::string& name);
const char* granularity_name(Granularity g);
const char* code_name(Code c);
const char* scale_rule_name(ScaleRule r);
std::string allowed_format_names();

// MX blocks are always this long.
constexpr int kMxBlock = 32;
// The largest group size of strategy 'group' (kernels size per-thread scratch by it).
constexpr int64_t kMaxGroupSize = int64_t(1) << 20;

}  // namespace lowbit

// Names and fixed properties of every numeric format lowbit knows.
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
  kAuto,    // Ascend for MXFP4, OCP for MXFP8
  kOcp,     // floor(log2 amax) - emax_elem
  kAscend,  // as OCP, plus one when amax / 2^floor(log2 amax) > 1.75
};

// Storage and numeric facts of a format.
struct FormatInfo {
  const char* name;
  int bits;           // bits per stored element code
  bool is_mx;         // E8M0 block scales of 32 elements
  bool is_int;
  bool allows_asym;   // int8/int4 only
};

const FormatInfo& format_info(Format f);
// Bytes of one packed row of `cols` elements: 4-bit codes two per byte, MX rows padded
// to whole blocks of 32 (what pack() writes, the deploy kernels read and a saved model holds).
int64_t packed_row_bytes(Format f, int64_t cols);
// Every format, in the table's order (what Python's lowbit.FORMATS lists).
std::vector<Format> all_formats();

// Parsing helpers. They throw std::invalid_argument with a message that names the
// argument, the bad value and the allowed values.
Format parse_format(const std::string& name);
Granularity parse_granularity(const std::string& name);
MxRule parse_mx_rule(const std::string& name);
const char* granularity_name(Granularity g);
std::string allowed_format_names();

// MX blocks are always this long.
constexpr int kMxBlock = 32;
// The largest group size of strategy 'group' (kernels size per-thread scratch by it).
constexpr int64_t kMaxGroupSize = int64_t(1) << 20;

}  // namespace lowbit

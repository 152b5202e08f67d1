#include "formats/format.h"

#include <algorithm>
#include <stdexcept>

namespace lowbit {

namespace {
constexpr unsigned kTensorBit = granularity_bit(Granularity::kTensor);
constexpr unsigned kChannelBit = granularity_bit(Granularity::kChannel);
constexpr unsigned kGroupBit = granularity_bit(Granularity::kGroup);
constexpr unsigned kWeightAny = kTensorBit | kChannelBit | kGroupBit;

FormatInfo integer(Format f, const char* name, int int_bits, bool as_input, bool signed_max) {
  FormatInfo r{};
  r.format = r.element = f;
  r.name = name;
  r.bits = int_bits > 4 ? 8 : 4;
  r.code = Code::kInt;
  r.int_bits = int_bits;
  r.nan_code = -1;
  r.scale = ScaleRule::kIntRange;
  r.as_weight = true;
  r.as_input = as_input;
  r.weight_granularities = kWeightAny;
  r.default_granularity = Granularity::kChannel;
  r.default_group = 128;
  r.allows_asym = r.allows_fp16_scale = true;
  r.allows_signed_max = signed_max;
  // llama.cpp's K-quant grids: 6-bit scales for 4-bit codes (Q4_K), 8-bit ones for 6-bit codes (Q6_K)
  r.superblock_scale = r.bits == 4 ? "q4_k" : int_bits == 6 ? "q6_k" : nullptr;
  r.superblock_sc_max = r.bits == 4 ? 63 : int_bits == 6 ? 127 : 0;
  return r;
}

// A float element code with scale = absmax / divisor (token_divisor for dynamic tokens).
FormatInfo scaled_float(Format f, const char* name, int bits, Code code, float divisor, float token_divisor,
                        int nan_code, int nan_mask, bool as_input, unsigned granularities) {
  FormatInfo r{};
  r.format = r.element = f;
  r.name = name;
  r.bits = bits;
  r.code = code;
  r.nan_code = nan_code;
  r.nan_mask = nan_mask;
  r.scale = ScaleRule::kDivisor;
  r.divisor = divisor;
  r.token_divisor = token_divisor;
  r.as_weight = true;
  r.as_input = as_input;
  r.weight_granularities = granularities;
  r.default_granularity = granularities & kChannelBit ? Granularity::kChannel : Granularity::kGroup;
  r.default_group = 32;
  return r;
}

// An MX format: `element`'s codes with one E8M0 scale per block of 32.
FormatInfo mx(Format f, const char* name, const FormatInfo& element, int emax, bool bump, bool as_input) {
  FormatInfo r = element;
  r.format = f;
  r.element = element.format;
  r.name = name;
  r.block = kMxBlock;
  r.scale = ScaleRule::kE8M0;
  r.divisor = r.token_divisor = 0.0f;
  r.mx_emax = emax;
  r.mx_bump = bump;
  r.as_input = as_input;
  r.weight_granularities = kGroupBit;
  r.default_granularity = Granularity::kGroup;
  r.default_group = kMxBlock;
  return r;
}

std::vector<FormatInfo> build_table() {
  const FormatInfo e4m3 = scaled_float(Format::kFloat8E4M3FN, "float8_e4m3fn", 8, Code::kE4M3FN, 448.0f, 448.0f,
                                       0x7F, 0x7F, true, kTensorBit | kChannelBit);
  const FormatInfo e2m1 = scaled_float(Format::kFloat4E2M1, "float4_e2m1", 4, Code::kE2M1, 6.0f, 6.0f, -1, 0,
                                       false, kGroupBit);
  return {
      integer(Format::kInt8, "int8", 8, true, false),
      integer(Format::kInt4, "int4", 4, false, true),
      scaled_float(Format::kHiFloat8, "hifloat8", 8, Code::kHiF8, 16.0f, 15.0f, 0x80, 0xFF, true,
                   kTensorBit | kChannelBit),
      e4m3,
      mx(Format::kMxFp8E4M3FN, "mxfp8_e4m3fn", e4m3, 8, false, true),
      mx(Format::kMxFp4E2M1, "mxfp4_e2m1", e2m1, 2, true, false),
      e2m1,
      scaled_float(Format::kFloat4E1M2, "float4_e1m2", 4, Code::kE1M2, 1.75f, 1.75f, -1, 0, false, kGroupBit),
      integer(Format::kInt3, "int3", 3, false, false),  // codes -4..3, stored in nibbles
      integer(Format::kInt6, "int6", 6, false, false),  // codes -32..31, stored in bytes
  };
}

std::string english_list(const std::vector<std::string>& names) {
  std::string s;
  for (size_t i = 0; i < names.size(); ++i) {
    if (i) s += i + 1 == names.size() ? " and " : ", ";
    s += names[i];
  }
  return s;
}
}  // namespace

const std::vector<FormatInfo>& format_table() {
  static const std::vector<FormatInfo> table = build_table();
  return table;
}

const FormatInfo& format_info(Format f) {
  for (const auto& row : format_table())
    if (row.format == f) return row;
  throw std::invalid_argument("format: unknown enum value");
}

int64_t packed_row_bytes(Format f, int64_t cols) {
  const FormatInfo& info = format_info(f);
  const int64_t n = info.is_mx() ? (cols + info.block - 1) / info.block * info.block : cols;
  return (n * info.bits + 7) / 8;
}

std::vector<Format> all_formats() {
  std::vector<Format> v;
  for (const auto& row : format_table()) v.push_back(row.format);
  return v;
}

std::vector<std::string> format_name_list(bool (*pred)(const FormatInfo&)) {
  std::vector<std::string> v;
  for (const auto& row : format_table())
    if (pred(row)) v.push_back(row.name);
  return v;
}

std::string format_names_where(bool (*pred)(const FormatInfo&)) { return english_list(format_name_list(pred)); }

std::string superblock_format_names(const std::string& name) {
  std::vector<std::string> v;
  for (const auto& row : format_table())
    if (row.superblock_scale && name == row.superblock_scale) v.push_back(row.name);
  return english_list(v);
}

const std::vector<std::string>& scale_dtype_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v = {"float32", "float16"};
    for (const auto& row : format_table())
      if (row.superblock_scale && std::find(v.begin(), v.end(), std::string(row.superblock_scale)) == v.end())
        v.push_back(row.superblock_scale);
    return v;
  }();
  return names;
}

std::string superblock_grid_list() {
  std::string s;
  for (size_t i = 2; i < scale_dtype_names().size(); ++i) {
    const std::string& grid = scale_dtype_names()[i];
    s += (s.empty() ? "" : "; ") + grid + ": " + superblock_format_names(grid);
  }
  return s;
}

std::string allowed_format_names() {
  std::string s;
  for (const auto& row : format_table()) {
    if (!s.empty()) s += ", ";
    s += row.name;
  }
  return s;
}

Format parse_format(const std::string& name) {
  for (const auto& row : format_table())
    if (name == row.name) return row.format;
  throw std::invalid_argument("format: '" + name + "' is not a known format; allowed: " +
                              allowed_format_names());
}

Granularity parse_granularity(const std::string& name) {
  if (name == "tensor") return Granularity::kTensor;
  if (name == "channel") return Granularity::kChannel;
  if (name == "group") return Granularity::kGroup;
  if (name == "token") return Granularity::kToken;
  throw std::invalid_argument("granularity: '" + name +
                              "' is not allowed; allowed: tensor, channel, group, token");
}

const char* granularity_name(Granularity g) {
  switch (g) {
    case Granularity::kTensor: return "tensor";
    case Granularity::kChannel: return "channel";
    case Granularity::kGroup: return "group";
    case Granularity::kToken: return "token";
  }
  return "?";
}

const char* code_name(Code c) {
  switch (c) {
    case Code::kInt: return "int";
    case Code::kE4M3FN: return "e4m3fn";
    case Code::kE2M1: return "e2m1";
    case Code::kE1M2: return "e1m2";
    case Code::kHiF8: return "hifloat8";
  }
  return "?";
}

const char* scale_rule_name(ScaleRule r) {
  switch (r) {
    case ScaleRule::kIntRange: return "int_range";
    case ScaleRule::kDivisor: return "divisor";
    case ScaleRule::kE8M0: return "e8m0";
  }
  return "?";
}

MxRule parse_mx_rule(const std::string& name) {
  if (name == "auto") return MxRule::kAuto;
  if (name == "ocp") return MxRule::kOcp;
  if (name == "ascend") return MxRule::kAscend;
  throw std::invalid_argument("mx_rule: '" + name + "' is not allowed; allowed: auto, ocp, ascend");
}

}  // namespace lowbit

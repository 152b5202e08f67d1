#include "formats/format.h"

#include <stdexcept>

namespace lowbit {

namespace {
struct NamedFormat {
  Format fmt;
  FormatInfo info;
};
const NamedFormat kFormats[] = {
    {Format::kInt8, {"int8", 8, false, true, true}},
    {Format::kInt4, {"int4", 4, false, true, true}},
    {Format::kFloat8E4M3FN, {"float8_e4m3fn", 8, false, false, false}},
    {Format::kHiFloat8, {"hifloat8", 8, false, false, false}},
    {Format::kFloat4E2M1, {"float4_e2m1", 4, false, false, false}},
    {Format::kFloat4E1M2, {"float4_e1m2", 4, false, false, false}},
    {Format::kMxFp8E4M3FN, {"mxfp8_e4m3fn", 8, true, false, false}},
    {Format::kMxFp4E2M1, {"mxfp4_e2m1", 4, true, false, false}},
};
}  // namespace

const FormatInfo& format_info(Format f) {
  for (const auto& nf : kFormats)
    if (nf.fmt == f) return nf.info;
  throw std::invalid_argument("format: unknown enum value");
}

int64_t packed_row_bytes(Format f, int64_t cols) {
  const FormatInfo& info = format_info(f);
  const int64_t n = info.is_mx ? (cols + kMxBlock - 1) / kMxBlock * kMxBlock : cols;
  return (n * info.bits + 7) / 8;
}

std::vector<Format> all_formats() {
  std::vector<Format> v;
  for (const auto& nf : kFormats) v.push_back(nf.fmt);
  return v;
}

std::string allowed_format_names() {
  std::string s;
  for (const auto& nf : kFormats) {
    if (!s.empty()) s += ", ";
    s += nf.info.name;
  }
  return s;
}

Format parse_format(const std::string& name) {
  for (const auto& nf : kFormats)
    if (name == nf.info.name) return nf.fmt;
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

MxRule parse_mx_rule(const std::string& name) {
  if (name == "auto") return MxRule::kAuto;
  if (name == "ocp") return MxRule::kOcp;
  if (name == "ascend") return MxRule::kAscend;
  throw std::invalid_argument("mx_rule: '" + name + "' is not allowed; allowed: auto, ocp, ascend");
}

}  // namespace lowbit

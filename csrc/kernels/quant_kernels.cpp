// Argument validation, sizes and run-time choice of the instruction set.
#include "kernels/quant_kernels.h"

#include <cpuid.h>

#include <atomic>
#include <cstdlib>
#include <stdexcept>

#include "kernels/isa_table.h"

namespace lowbit {

void validate_spec(const QuantSpec& spec) {
  const FormatInfo& info = format_info(spec.format);
  const std::string fmt = info.name;
  if (info.is_mx()) {
    if (spec.granularity != Granularity::kGroup || spec.group_size != info.block)
      throw std::invalid_argument("granularity: " + fmt + " uses blocks of " + std::to_string(info.block) +
                                  "; expected granularity 'group' with group_size " + std::to_string(info.block) +
                                  ", got '" + granularity_name(spec.granularity) +
                                  "' with group_size " + std::to_string(spec.group_size));
  }
  if (spec.granularity == Granularity::kGroup) {
    if (spec.group_size <= 0 || spec.group_size % 32 != 0 || spec.group_size > kMaxGroupSize)
      throw std::invalid_argument("group_size: " + std::to_string(spec.group_size) +
                                  " is not a positive multiple of 32 up to " + std::to_string(kMaxGroupSize) +
                                  "; allowed: 32, 64, 96, 128, ...");
  } else if (spec.group_size != 0) {
    throw std::invalid_argument("group_size: " + std::to_string(spec.group_size) +
                                " is only allowed with granularity 'group' (got '" +
                                granularity_name(spec.granularity) + "'); use 0");
  }
  if (!spec.symmetric && !info.allows_asym)
    throw std::invalid_argument("symmetric: False is only allowed for " +
                                format_names_where([](const FormatInfo& f) { return f.allows_asym; }) + "; " + fmt +
                                " is always symmetric");
  if (!spec.symmetric && spec.granularity == Granularity::kToken)
    throw std::invalid_argument("symmetric: False is not allowed with granularity 'token' (dynamic per-token "
                                "scales are symmetric)");
  if (info.is_mx() && spec.granularity == Granularity::kToken)
    throw std::invalid_argument("granularity: 'token' is not allowed for " + fmt);
  if (spec.fp16_scale && (!info.allows_fp16_scale || spec.granularity == Granularity::kToken))
    throw std::invalid_argument("scale_dtype: 'float16' is only allowed for " +
                                format_names_where([](const FormatInfo& f) { return f.allows_fp16_scale; }) +
                                " weight scales (tensor, channel, group); got " + fmt + " with granularity '" +
                                granularity_name(spec.granularity) + "'");
  if (spec.signed_max && (!info.allows_signed_max || !spec.symmetric || spec.granularity == Granularity::kToken))
    throw std::invalid_argument("scale_rule: 'signed_max' is only allowed for symmetric " +
                                format_names_where([](const FormatInfo& f) { return f.allows_signed_max; }) +
                                " weight scales (tensor, channel, group); got " + fmt +
                                (spec.symmetric ? "" : " asymmetric") +
                                " with granularity '" + granularity_name(spec.granularity) + "'");
}

int64_t groups_per_row(const QuantSpec& spec, int64_t cols) {
  if (format_info(spec.format).is_mx()) return (cols + kMxBlock - 1) / kMxBlock;
  if (spec.granularity == Granularity::kGroup) return (cols + spec.group_size - 1) / spec.group_size;
  return 1;
}

int64_t scale_count(const QuantSpec& spec, int64_t rows, int64_t cols) {
  if (spec.granularity == Granularity::kTensor) return 1;
  return rows * groups_per_row(spec, cols);
}

int64_t packed_row_bytes(const QuantSpec& spec, int64_t cols) { return packed_row_bytes(spec.format, cols); }

namespace {
bool cpu_has_avx2() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  const bool f16c = c & (1u << 29), fma = c & (1u << 12);
  return f16c && fma && __builtin_cpu_supports("avx2");
}
bool cpu_has_avx512() {
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

IsaTable table_for(const std::string& name) {
  if (name == "avx512") {
    if (!cpu_has_avx512()) throw std::invalid_argument("isa: 'avx512' is not supported by this CPU");
    return isa_table_avx512();
  }
  if (name == "avx2") {
    if (!cpu_has_avx2()) throw std::invalid_argument("isa: 'avx2' is not supported by this CPU");
    return isa_table_avx2();
  }
  if (name == "scalar") return isa_table_scalar();
  throw std::invalid_argument("isa: '" + name + "' is not allowed; allowed: auto, avx512, avx2, scalar");
}

IsaTable& active() {
  static IsaTable t = [] {
    const char* env = std::getenv("LOWBIT_ISA");
    return table_for(env && *env && std::string(env) != "auto" ? std::string(env) : best_isa());
  }();
  return t;
}
}  // namespace

std::vector<std::string> available_isas() {
  std::vector<std::string> v{"scalar"};
  if (cpu_has_avx2()) v.push_back("avx2");
  if (cpu_has_avx512()) v.push_back("avx512");
  return v;
}
std::string best_isa() { return available_isas().back(); }
std::string current_isa() { return active().name; }
void set_isa(const std::string& name) { active() = table_for(name == "auto" ? best_isa() : name); }

void compute_scales(const ConstMatrix& x, const QuantSpec& spec, ScaleView scales) {
  validate_spec(spec);
  active().compute_scales(x, spec, scales);
}
void fake_quant(const ConstMatrix& x, const QuantSpec& spec, ScaleView scales, const MutMatrix& out) {
  validate_spec(spec);
  active().fake_quant(x, spec, scales, out);
}
void fake_quant_dynamic(const ConstMatrix& x, const QuantSpec& spec, const MutMatrix& out, ScaleView scales_out) {
  validate_spec(spec);
  active().fake_quant_dynamic(x, spec, out, scales_out);
}
void pack(const ConstMatrix& x, const QuantSpec& spec, ScaleView scales, uint8_t* out, int64_t out_ld,
          bool nibbles) {
  validate_spec(spec);
  active().pack(x, spec, scales, out, out_ld, nibbles);
}
void unpack(const uint8_t* codes, int64_t codes_ld, const QuantSpec& spec, ScaleView scales, const MutMatrix& out,
            bool nibbles) {
  validate_spec(spec);
  active().unpack(codes, codes_ld, spec, scales, out, nibbles);
}

}  // namespace lowbit

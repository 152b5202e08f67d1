// Argument validation, sizes and run-time choice of the instruction set.
#include "kernels/quant_kernels.h"

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
  if (spec.superblock_scales &&
      (!info.superblock_scale || !spec.symmetric || spec.granularity != Granularity::kGroup ||
       spec.group_size != 32 || spec.fp16_scale || spec.signed_max))
    throw std::invalid_argument("scale_dtype: a K-quant grid (" + superblock_grid_list() + ") is only allowed for symmetric weights in groups of 32 (granularity 'group', "
                                "group_size 32, scale_rule absmax); got " +
                                fmt + (spec.symmetric ? "" : " asymmetric") + " with granularity '" +
                                granularity_name(spec.granularity) + "' and group_size " +
                                std::to_string(spec.group_size));
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
// This family's code per instruction set (isa/isa_registry.h picks one per call).
const IsaImpl<IsaTable> kQuantImpls[] = {
    {"avx512", &isa_table_avx512}, {"avx2", &isa_table_avx2}, {"scalar", &isa_table_scalar}};
IsaTable active() { return isa_pick(kQuantImpls); }
}  // namespace

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

// torch.ops.lowbit.* : the at::Tensor adapter over the torch-free kernels. This is the
// only place (with python_module.cpp) that sees torch headers.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <stdexcept>
#include <string>

#include "kernels/quant_kernels.h"
#include "ops/tensor_views.h"

namespace lowbit {

const char* ops_library_version() { return "0.1.0"; }

namespace {

std::vector<int64_t> scale_shape(const QuantSpec& spec, at::IntArrayRef shape) {
  std::vector<int64_t> s(shape.begin(), shape.end());
  if (spec.granularity == Granularity::kTensor) {
    for (auto& d : s) d = 1;
  } else {
    s.back() = groups_per_row(spec, shape.back());
  }
  return s;
}

std::tuple<at::Tensor, at::Tensor> quant_scales(const at::Tensor& x, const std::string& format,
                                                const std::string& granularity, int64_t group_size, bool symmetric,
                                                const std::string& mx_rule, const std::string& scale_dtype,
                                                const std::string& scale_rule) {
  check_input(x, "x");
  float_dtype(x, "x");
  QuantSpec spec = make_spec(format, granularity, group_size, symmetric, mx_rule, scale_dtype, scale_rule);
  at::Tensor src = matrix_source(x);
  auto shape = scale_shape(spec, x.sizes());
  const bool mx = format_info(spec.format).is_mx();
  at::Tensor scale = at::empty(shape, x.options().dtype(mx ? at::kByte : at::kFloat));
  at::Tensor offset = at::zeros(shape, x.options().dtype(at::kInt));
  ScaleView sv;
  if (mx) sv.e8m0 = scale.data_ptr<uint8_t>();
  else sv.scale = scale.data_ptr<float>(), sv.offset = offset.data_ptr<int32_t>();
  value_errors([&] { compute_scales(as_const(src), spec, sv); });
  return {scale, offset};
}

at::Tensor& fake_quant_out(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& offset, at::Tensor& out,
                           const std::string& format, const std::string& granularity, int64_t group_size,
                           bool symmetric) {
  check_input(x, "x");
  float_dtype(x, "x");
  float_dtype(out, "out");
  TORCH_CHECK_VALUE(out.sizes() == x.sizes(), "out: shape ", out.sizes(), " does not match x ", x.sizes());
  TORCH_CHECK_VALUE(out.is_contiguous(), "out: must be contiguous");
  QuantSpec spec = make_spec(format, granularity, group_size, symmetric, "auto");
  at::Tensor src = matrix_source(x);
  ConstMatrix cm = as_const(src);
  ScaleArgs sa = scale_args(spec, scale, offset, cm.rows, cm.cols);
  value_errors([&] { fake_quant(cm, spec, sa.view, as_mut(out)); });
  return out;
}

at::Tensor fake_quant_op(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& offset,
                         const std::string& format, const std::string& granularity, int64_t group_size,
                         bool symmetric) {
  check_input(x, "x");
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  return fake_quant_out(x, scale, offset, out, format, granularity, group_size, symmetric);
}

at::Tensor& fake_quant_dynamic_out(const at::Tensor& x, at::Tensor& out, const std::string& format,
                                   const std::string& granularity, int64_t group_size, bool symmetric,
                                   const std::string& mx_rule) {
  check_input(x, "x");
  float_dtype(x, "x");
  float_dtype(out, "out");
  TORCH_CHECK_VALUE(out.sizes() == x.sizes(), "out: shape ", out.sizes(), " does not match x ", x.sizes());
  TORCH_CHECK_VALUE(out.is_contiguous(), "out: must be contiguous");
  QuantSpec spec = make_spec(format, granularity, group_size, symmetric, mx_rule);
  at::Tensor src = matrix_source(x);
  value_errors([&] { fake_quant_dynamic(as_const(src), spec, as_mut(out)); });
  return out;
}

at::Tensor fake_quant_dynamic_op(const at::Tensor& x, const std::string& format, const std::string& granularity,
                                 int64_t group_size, bool symmetric, const std::string& mx_rule) {
  check_input(x, "x");
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  return fake_quant_dynamic_out(x, out, format, granularity, group_size, symmetric, mx_rule);
}

at::Tensor pack_op(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& offset, const std::string& format,
                   const std::string& granularity, int64_t group_size, bool symmetric) {
  check_input(x, "x");
  float_dtype(x, "x");
  QuantSpec spec = make_spec(format, granularity, group_size, symmetric, "auto");
  at::Tensor src = matrix_source(x);
  ConstMatrix cm = as_const(src);
  ScaleArgs sa = scale_args(spec, scale, offset, cm.rows, cm.cols);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = packed_row_bytes(spec, cm.cols);
  at::Tensor out = at::empty(shape, x.options().dtype(at::kByte));
  value_errors([&] { pack(cm, spec, sa.view, out.data_ptr<uint8_t>(), shape.back()); });
  return out;
}

at::Tensor unpack_op(const at::Tensor& packed, const at::Tensor& scale, const at::Tensor& offset,
                     const std::string& format, const std::string& granularity, int64_t group_size, bool symmetric,
                     int64_t cols, at::ScalarType dtype) {
  TORCH_CHECK_TYPE(packed.scalar_type() == at::kByte, "packed: dtype ", packed.scalar_type(),
                   " is not allowed; expected uint8");
  check_input(packed, "packed");
  QuantSpec spec = make_spec(format, granularity, group_size, symmetric, "auto");
  TORCH_CHECK_VALUE(cols > 0, "cols: ", cols, " must be positive");
  const int64_t row_bytes = packed_row_bytes(spec, cols);
  TORCH_CHECK_VALUE(packed.size(-1) == row_bytes, "packed: last dimension ", packed.size(-1), " does not match ",
                    row_bytes, " bytes for cols=", cols, " in ", format);
  at::Tensor src = packed.contiguous();
  std::vector<int64_t> shape(packed.sizes().begin(), packed.sizes().end());
  shape.back() = cols;
  at::Tensor out = at::empty(shape, packed.options().dtype(dtype));
  float_dtype(out, "dtype");
  MutMatrix om = as_mut(out);
  ScaleArgs sa = scale_args(spec, scale, offset, om.rows, cols);
  value_errors([&] { unpack(src.data_ptr<uint8_t>(), row_bytes, spec, sa.view, om); });
  return out;
}

// Element codes with scale 1 (one code per byte): the raw codec, for tests and tools.
QuantSpec element_spec(const std::string& format) {
  QuantSpec spec = make_spec(format, "tensor", 0, true, "auto");
  TORCH_CHECK_VALUE(!format_info(spec.format).is_mx(), "format: '", format,
                    "' is a block format; use pack/unpack with its E8M0 scales");
  return spec;
}

at::Tensor encode_op(const at::Tensor& x, const std::string& format) {
  check_input(x, "x");
  float_dtype(x, "x");
  QuantSpec spec = element_spec(format);
  at::Tensor src = matrix_source(x);
  ConstMatrix cm = as_const(src);
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kByte));
  float one = 1.0f;
  value_errors([&] { pack(cm, spec, ScaleView{&one, nullptr, nullptr}, out.data_ptr<uint8_t>(), cm.cols, false); });
  return out;
}

at::Tensor decode_op(const at::Tensor& codes, const std::string& format) {
  TORCH_CHECK_TYPE(codes.scalar_type() == at::kByte, "codes: dtype ", codes.scalar_type(),
                   " is not allowed; expected uint8");
  check_input(codes, "codes");
  QuantSpec spec = element_spec(format);
  at::Tensor src = codes.contiguous();
  at::Tensor out = at::empty(codes.sizes(), codes.options().dtype(at::kFloat));
  float one = 1.0f;
  MutMatrix om = as_mut(out);
  value_errors([&] { unpack(src.data_ptr<uint8_t>(), om.cols, spec, ScaleView{&one, nullptr, nullptr}, om, false); });
  return out;
}

// K-quant scales [rows, groups] (groups of 32) -> (d float32 [rows, super-blocks], sc uint8
// [rows, groups]) with scale == d * sc, sc in [1, sc_max] (63: Q4_K, 127: Q6_K); ValueError
// naming the first run that is not.
std::tuple<at::Tensor, at::Tensor> split_superblock_scales_op(const at::Tensor& scale, int64_t sc_max) {
  std::string grid, allowed;  // the table's grid with this range
  for (const FormatInfo& row : format_table())
    if (row.superblock_scale) {
      if (row.superblock_sc_max == sc_max) grid = row.superblock_scale;
      if (allowed.find(std::to_string(row.superblock_sc_max)) == std::string::npos)
        allowed += (allowed.empty() ? "" : ", ") + std::to_string(row.superblock_sc_max);
    }
  TORCH_CHECK_VALUE(!grid.empty(), "sc_max: ", sc_max, " is not allowed; allowed: ", allowed);
  TORCH_CHECK_VALUE(scale.dim() == 2 && scale.scalar_type() == at::kFloat, "scale: expected a float32 tensor "
                    "[rows, groups], got ", scale.scalar_type(), " ", scale.sizes());
  const at::Tensor s = scale.contiguous();
  const int64_t rows = s.size(0), groups = s.size(1), runs = (groups + kSuperBlockGroups - 1) / kSuperBlockGroups;
  at::Tensor d = at::empty({rows, runs}, at::kFloat);
  at::Tensor sc = at::empty({rows, groups}, at::kByte);
  const float* sp = s.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < runs; ++b) {
      const int64_t g0 = b * kSuperBlockGroups, len = std::min(kSuperBlockGroups, groups - g0);
      TORCH_CHECK_VALUE(split_superblock_scales(sp + r * groups + g0, len, int(sc_max),
                                                d.data_ptr<float>() + r * runs + b,
                                                sc.data_ptr<uint8_t>() + r * groups + g0),
                        "scales of row ", r, ", super-block ", b, " are not an fp16 d times integers 1..", sc_max,
                        " (the K-quant grid); quantize with weights 'scale_dtype': '", grid, "'");
    }
  return {d, sc};
}

std::string isa_op() { return current_isa(); }
std::vector<std::string> available_isas_op() { return available_isas(); }
void set_isa_op(const std::string& name) {
  value_errors([&] {
    set_isa(name);
    return 0;
  });
}

}  // namespace
}  // namespace lowbit

TORCH_LIBRARY(lowbit, m) {
  using namespace lowbit;
  m.def("quant_scales(Tensor x, str format, str granularity='tensor', int group_size=0, bool symmetric=True, "
        "str mx_rule='auto', str scale_dtype='float32', str scale_rule='absmax') -> (Tensor, Tensor)");
  m.def("fake_quant(Tensor x, Tensor scale, Tensor offset, str format, str granularity='tensor', "
        "int group_size=0, bool symmetric=True) -> Tensor");
  m.def("fake_quant_out(Tensor x, Tensor scale, Tensor offset, Tensor(a!) out, str format, "
        "str granularity='tensor', int group_size=0, bool symmetric=True) -> Tensor(a!)");
  m.def("fake_quant_dynamic(Tensor x, str format, str granularity='tensor', int group_size=0, "
        "bool symmetric=True, str mx_rule='auto') -> Tensor");
  m.def("fake_quant_dynamic_out(Tensor x, Tensor(a!) out, str format, str granularity='tensor', "
        "int group_size=0, bool symmetric=True, str mx_rule='auto') -> Tensor(a!)");
  m.def("pack(Tensor x, Tensor scale, Tensor offset, str format, str granularity='tensor', int group_size=0, "
        "bool symmetric=True) -> Tensor");
  m.def("unpack(Tensor packed, Tensor scale, Tensor offset, str format, str granularity, int group_size, "
        "bool symmetric, int cols, ScalarType dtype) -> Tensor");
  m.def("encode(Tensor x, str format) -> Tensor");
  m.def("decode(Tensor codes, str format) -> Tensor");
  m.def("split_superblock_scales(Tensor scale, int sc_max) -> (Tensor, Tensor)");
  m.def("isa() -> str");
  m.def("set_isa(str name) -> ()");
  m.def("available_isas() -> str[]");
  m.impl("quant_scales", c10::DispatchKey::CPU, TORCH_FN(quant_scales));
  m.impl("fake_quant", c10::DispatchKey::CPU, TORCH_FN(fake_quant_op));
  m.impl("fake_quant_out", c10::DispatchKey::CPU, TORCH_FN(fake_quant_out));
  m.impl("fake_quant_dynamic", c10::DispatchKey::CPU, TORCH_FN(fake_quant_dynamic_op));
  m.impl("fake_quant_dynamic_out", c10::DispatchKey::CPU, TORCH_FN(fake_quant_dynamic_out));
  m.impl("pack", c10::DispatchKey::CPU, TORCH_FN(pack_op));
  m.impl("unpack", c10::DispatchKey::CPU, TORCH_FN(unpack_op));
  m.impl("encode", c10::DispatchKey::CPU, TORCH_FN(encode_op));
  m.impl("decode", c10::DispatchKey::CPU, TORCH_FN(decode_op));
  m.impl("split_superblock_scales", c10::DispatchKey::CPU, TORCH_FN(split_superblock_scales_op));
  m.impl("isa", TORCH_FN(isa_op));
  m.impl("set_isa", TORCH_FN(set_isa_op));
  m.impl("available_isas", TORCH_FN(available_isas_op));
}

// Argument checks, the shared row post-processing, and the choice of instruction set for
// the weight-only (and float-activation) deploy products.
#include "deploy/packed_linear.h"

#include <stdexcept>
#include <string>

#include "deploy/conv_layout.h"
#include "deploy/linear_isa_table.h"
#include "deploy/scratch.h"
#include "deploy/weight_decoder.h"
#include "formats/half.h"

namespace lowbit {

void finish_row(const PackedWeight& w, int64_t r, float* row, int64_t n) {
  if (w.row_scale1) {
    const float s1 = w.row_scale1[r];
    for (int64_t k = 0; k < n; ++k) row[k] = row[k] * s1;
  }
  if (w.value_dtype == DType::kBF16) {
    for (int64_t k = 0; k < n; ++k) row[k] = bf16_to_float(float_to_bf16(row[k]));
  } else if (w.value_dtype == DType::kF16) {
    for (int64_t k = 0; k < n; ++k) row[k] = fp16_to_float(float_to_fp16(row[k]));
  }
}

namespace {

bool g_float8_vbmi_allowed = true;

const IsaImpl<LinearIsaTable> kLinearImpls[] = {
    {"avx512", &linear_table_avx512}, {"avx2", &linear_table_avx2}, {"scalar", &linear_table_scalar}};
LinearIsaTable linear_table() { return isa_pick(kLinearImpls); }

void check_weight(const PackedWeight& w) {
  validate_spec(w.spec);
  if (w.rows <= 0 || w.cols <= 0)
    throw std::invalid_argument("weight: shape [" + std::to_string(w.rows) + ", " + std::to_string(w.cols) +
                                "] must be positive");
  if (w.row_bytes != packed_row_bytes(w.spec, w.cols))
    throw std::invalid_argument("weight: " + std::to_string(w.row_bytes) + " bytes per row do not match " +
                                std::to_string(packed_row_bytes(w.spec, w.cols)) + " for " +
                                std::to_string(w.cols) + " columns of " + format_info(w.spec.format).name);
  if (w.spec.granularity == Granularity::kToken)
    throw std::invalid_argument("weight: granularity 'token' is for activations only");
}

}  // namespace

bool vbmi_decoders_enabled() {
  static const bool has_vbmi = __builtin_cpu_supports("avx512vbmi");
  return has_vbmi && g_float8_vbmi_allowed;
}
void allow_vbmi_decoders(bool allowed) { g_float8_vbmi_allowed = allowed; }

namespace {
// x quantized-dequantized by `act` (in x's dtype), dense, in a per-thread buffer reused
// from call to call (a fresh one would be page-faulted in on every call); x itself when
// `act` is off. Linear and Conv2d products do not nest, so they share the buffer.
ConstMatrix quantized_activations(const ConstMatrix& x, const ActQuant& act) {
  if (!act.enabled || x.rows == 0) return x;
  thread_local GrowBuffer<uint8_t> buf;
  uint8_t* q = buf.get(x.rows * x.cols * dtype_bytes(x.dtype));
  const MutMatrix out{q, x.dtype, x.rows, x.cols, x.cols};
  if (act.dynamic) {
    fake_quant_dynamic(x, act.spec, out);
  } else {
    float s = act.scale;
    int32_t o = act.offset;
    fake_quant(x, act.spec, ScaleView{&s, &o, nullptr}, out);
  }
  return ConstMatrix{q, x.dtype, x.rows, x.cols, x.cols};
}
}  // namespace

void linear_packed(const ConstMatrix& x_in, const PackedWeight& w, const float* bias, const MutMatrix& y,
                   const ActQuant& act) {
  const ConstMatrix x = quantized_activations(x_in, act);  // full quantization: the activations first
  check_weight(w);
  if (x.cols != w.cols)
    throw std::invalid_argument("x: " + std::to_string(x.cols) + " columns, but the weight has " +
                                std::to_string(w.cols));
  if (y.rows != x.rows || y.cols != w.rows)
    throw std::invalid_argument("y: shape [" + std::to_string(y.rows) + ", " + std::to_string(y.cols) +
                                "] does not match [" + std::to_string(x.rows) + ", " + std::to_string(w.rows) + "]");
  if (x.rows == 0) return;
  const LinearIsaTable t = linear_table();
  const WeightDecoder d = t.decoder(w);
  t.linear(x, d, bias, y);
}

PackedWeight weight_rows(const PackedWeight& w, int64_t lo, int64_t hi) {
  PackedWeight r = w;
  r.codes += lo * w.row_bytes;
  r.rows = hi - lo;
  // scale entries per output row: none to skip for one tensor-wide scale
  const int64_t per_row = w.spec.granularity == Granularity::kTensor && !format_info(w.spec.format).is_mx()
                              ? 0 : groups_per_row(w.spec, w.cols);
  if (r.scales.scale) r.scales.scale += lo * per_row;
  if (r.scales.offset) r.scales.offset += lo * per_row;
  if (r.scales.e8m0) r.scales.e8m0 += lo * per_row;
  if (r.row_scale1) r.row_scale1 += lo;
  return r;
}

IntWeight weight_rows(const IntWeight& w, int64_t lo, int64_t hi) {
  IntWeight r = w;
  r.codes += lo * w.row_bytes;
  r.rows = hi - lo;
  if (!w.per_tensor) r.scale += lo;
  return r;
}

void conv2d_packed(const Conv2dArgs& a_in, const PackedWeight& w, const float* bias, const ActQuant& act) {
  Conv2dArgs a = a_in;
  check_weight(w);
  if (a.groups < 1 || a.c % a.groups != 0 || a.cout % a.groups != 0 || a.cg != a.c / a.groups)
    throw std::invalid_argument("groups: " + std::to_string(a.groups) + " must divide the " + std::to_string(a.c) +
                                " input and " + std::to_string(a.cout) + " output channels");
  if (w.rows != a.cout || w.cols != a.cg * a.kh * a.kw)
    throw std::invalid_argument("weight: [" + std::to_string(w.rows) + ", " + std::to_string(w.cols) +
                                "] does not match the convolution's [" + std::to_string(a.cout) + ", " +
                                std::to_string(a.cg * a.kh * a.kw) + "]");
  if (a.n == 0 || a.ho <= 0 || a.wo <= 0) return;
  const LinearIsaTable t = linear_table();
  const int64_t og = a.cout / a.groups;
  if (act.enabled) {  // static per-tensor activation QDQ (elementwise: before the padding)
    if (act.dynamic) throw std::invalid_argument("conv2d_packed: activations must be quantized per tensor");
    if (a.dtype == DType::kF32 && (!a.channels_last || t.conv2d_channels_last(og)) && t.conv2d_direct(a, og)) {
      a.act = &act;  // applied while the direct kernel copies x into its planes
    } else {  // one pass over x's dense memory (either layout keeps its layout)
      const int64_t cols = a.c * a.h * a.w;
      a.x = quantized_activations(ConstMatrix{a.x, a.dtype, a.n, cols, cols}, act).data;
    }
  }
  if (a.channels_last && !t.conv2d_channels_last(og))
    return conv2d_through_nchw(a, [&](const Conv2dArgs& b) { conv2d_packed(b, w, bias); });
  for (int64_t g = 0; g < a.groups; ++g) {
    const PackedWeight wg = weight_rows(w, g * og, (g + 1) * og);  // this group's output channels
    const WeightDecoder d = t.decoder(wg);
    t.conv2d(a, g, d, bias ? bias + g * og : nullptr);
  }
}

void dequant_rows(const PackedWeight& w, int64_t r0, int64_t r1, float* out, int64_t ld) {
  check_weight(w);
  if (r0 < 0 || r1 > w.rows || r0 > r1) throw std::invalid_argument("dequant_rows: bad row range");
  const WeightDecoder d = linear_table().decoder(w);
  const int64_t kpad = (w.cols + 31) / 32 * 32;
  float* tmp = new float[size_t(kpad)];
  uint8_t* scratch = new uint8_t[size_t(kpad + 64)];
  for (int64_t r = r0; r < r1; ++r) {
    d.run(r, r + 1, 0, kpad, tmp, kpad, scratch);
    for (int64_t k = 0; k < w.cols; ++k) {
      out[(r - r0) * ld + k] = tmp[column_position(k, d.order, w.cols)];
    }
  }
  delete[] tmp;
  delete[] scratch;
}

}  // namespace lowbit

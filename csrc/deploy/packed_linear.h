// Matrix products of deploy layers, computed straight from packed low-bit weights (no
// float copy of the whole weight): y[m, n] = sum_k x[m, k] * w(n, k) + bias[n].
//
// Numerical contract: w(n, k) is exactly the value unpack() gives (code value times its
// scale, then the FP8 x FP4 row scale, then rounded to the model's weight dtype), x is
// used as given (activation fake-quantization happens before, in the same C++ op), and
// the sum is accumulated in fp32. Results therefore equal `F.linear(x, unpack(w))` up to
// the order of the fp32 summation. The integer path (INT8 x INT8) is exact in int32 and
// applies s_x * s_w once per output.
//
// Paths: few activation rows (<= 4) run a GEMV that streams each weight row once; more
// rows run a blocked GEMM whose weight panels are decoded into L2-sized fp32 tiles.
// AVX-512 has dedicated decoders for every format (16-entry permute tables for 4-bit
// codes, an fp16 reinterpretation for E4M3); AVX2 and scalar decode through the
// quantization codecs. All paths use OpenMP over output channels.
#pragma once
#include <cstdint>

#include "kernels/quant_kernels.h"

namespace lowbit {

// A weight as pack() wrote it: `rows` output channels of `row_bytes` bytes each.
struct PackedWeight {
  const uint8_t* codes = nullptr;
  int64_t row_bytes = 0;
  int64_t rows = 0, cols = 0;
  QuantSpec spec;
  ScaleView scales;                   // as for unpack()
  const float* row_scale1 = nullptr;  // FP8 x FP4: per-row first-level scale, else null
  DType value_dtype = DType::kF32;    // dequantized values are rounded to this dtype
};

// Output channels [lo, hi) of a weight (views into the same storage).
PackedWeight weight_rows(const PackedWeight& w, int64_t lo, int64_t hi);

// Activation fake quantization applied inside linear_packed (full quantization):
// static per tensor (scale/offset given) or dynamic (per token, MX blocks), with exactly
// the fake-quant kernels' result in x's dtype.
struct ActQuant {
  bool enabled = false;
  QuantSpec spec;
  bool dynamic = false;  // scales from x itself
  float scale = 1.0f;    // static
  int32_t offset = 0;    // static, asymmetric INT
};

// x: [M, K] (fp32/fp16/bf16), y: [M, N] (any float dtype), bias: N floats or null.
// Throws std::invalid_argument on shape mismatches.
void linear_packed(const ConstMatrix& x, const PackedWeight& w, const float* bias, const MutMatrix& y,
                   const ActQuant& act = {});

// A 2-D convolution on NCHW tensors (zero padding), one weight row per output channel of
// cg * kh * kw values (channel, ky, kx: F.unfold's order). The GEMM packs input patches
// straight into its tiles (no im2col matrix) and writes NCHW output.
struct Conv2dArgs {
  const void* x = nullptr;  // [n, c, h, w]
  void* y = nullptr;        // [n, cout, ho, wo], same dtype as x
  DType dtype = DType::kF32;
  int64_t n = 0, c = 0, h = 0, w = 0, cout = 0, groups = 1, cg = 0;
  int64_t kh = 1, kw = 1, sy = 1, sx = 1, py = 0, px = 0, dy = 1, dx = 1, ho = 0, wo = 0;
  bool channels_last = false;  // x and y are laid out [n, h, w, c] (torch's channels_last)
  // Static per-tensor activation QDQ that the kernel applies to x as it reads it (set by
  // conv2d_packed for fp32 inputs of the direct convolution; null: x is used as it is).
  const ActQuant* act = nullptr;
};
// w: all cout rows; bias: cout floats or null. Fills ho/wo-dependent output. `act`
// (static per tensor only): the activations' fake quantization, applied first with
// exactly the fake-quant kernels' result; the direct convolution of an fp32 input does it
// while it copies the input into its padded planes (no separate pass over the input).
void conv2d_packed(const Conv2dArgs& a, const PackedWeight& w, const float* bias, const ActQuant& act = {});

// Dequantized rows [r0, r1) of w into out (fp32, `ld` floats between rows), exactly the
// values linear_packed multiplies with (natural column order). For tests and tools.
void dequant_rows(const PackedWeight& w, int64_t r0, int64_t r1, float* out, int64_t ld);

// With `false`, AVX-512 decodes 8-bit float codes without VBMI even where the CPU has it
// (tests compare both decoders; the default is true).
void allow_vbmi_decoders(bool allowed);

// INT8 x INT8: activations quantized inside the call, per tensor (static scale and
// offset) or per token (dynamic, symmetric, absmax / 127); weights are int8 codes (one per
// byte) or int4 codes (two per byte) with one scale per output channel (or one per tensor).
struct Int8Activation {
  bool per_token = false;
  float scale = 1.0f;  // per tensor only
  int32_t offset = 0;  // per tensor only (asymmetric)
};
struct IntWeight {
  const uint8_t* codes = nullptr;  // as pack() wrote them
  int64_t row_bytes = 0;
  int64_t rows = 0, cols = 0;
  int bits = 8;                     // 8 or 4
  const float* scale = nullptr;     // rows entries, or 1 when per_tensor
  bool per_tensor = false;
};
// bias: float bias added after dequantization (the caller passes the int32-rounded
// bias times s_x * s_w when the model uses one).
void linear_int8(const ConstMatrix& x, const Int8Activation& act, const IntWeight& w, const float* bias,
                 const MutMatrix& y);

// Output channels [lo, hi) of an integer weight.
IntWeight weight_rows(const IntWeight& w, int64_t lo, int64_t hi);

// INT8 x INT8 convolution (static per-tensor activations; weights as for linear_int8).
void conv2d_int8(const Conv2dArgs& a, const Int8Activation& act, const IntWeight& w, const float* bias);

// Which integer kernels linear_int8 uses for the selected instruction set: "avx512_vnni", "avx2" or "scalar".
std::string int8_kernel_name();

}  // namespace lowbit

// The AVX512-VBMI decoder of 8-bit float codes (flags in CMakeLists.txt); chosen by the
// AVX-512 decoder table when the CPU has VBMI (float8_vbmi_enabled in packed_linear.cpp).
#include "simd/vec_avx512.h"
#include "deploy/linear_driver_impl.h"
#include "deploy/weight_decoder_float8_vbmi.h"

namespace lowbit {
WeightDecoder float8_decoder_avx512vbmi(const PackedWeight& w) { return deploy::Float8Vbmi::make(w); }
}  // namespace lowbit

// The AVX512-VBMI decoder of 8-bit float codes (flags in CMakeLists.txt); chosen by the
// AVX-512 decoder table when the CPU has VBMI (vbmi_decoders_enabled in packed_linear.cpp).
#include "simd/vec_avx512.h"
#include "deploy/linear_driver_impl.h"
#include "deploy/weight_decoder_vbmi.h"

namespace lowbit {
WeightDecoder vbmi_decoder_avx512(const PackedWeight& w) { return deploy::VbmiDecoder::make(w); }
}  // namespace lowbit

// Deploy matrix products instantiated for the avx512 instruction set (flags in CMakeLists.txt).
#include "simd/vec_avx512.h"
#include "deploy/linear_driver_impl.h"
#include "deploy/weight_decoder_avx512.h"

namespace lowbit {
LinearIsaTable linear_table_avx512() { return deploy::LinearKernels<VecAvx512>::table(&deploy::Avx512Decoder::make); }
}  // namespace lowbit

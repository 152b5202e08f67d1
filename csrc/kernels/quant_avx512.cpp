// Kernels instantiated for the avx512 instruction set (compile flags set in CMakeLists.txt).
#include "kernels/quant_driver_impl.h"
#include "simd/vec_avx512.h"

namespace lowbit {
IsaTable isa_table_avx512() { return driver::Kernels<VecAvx512>::table(); }
}  // namespace lowbit

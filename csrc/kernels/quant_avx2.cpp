// Kernels instantiated for the avx2 instruction set (compile flags set in CMakeLists.txt).
#include "kernels/quant_driver_impl.h"
#include "simd/vec_avx2.h"

namespace lowbit {
IsaTable isa_table_avx2() { return driver::Kernels<VecAvx2>::table(); }
}  // namespace lowbit

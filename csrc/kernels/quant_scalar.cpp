// Kernels instantiated for the scalar instruction set (compile flags set in CMakeLists.txt).
#include "kernels/quant_driver_impl.h"
#include "simd/vec_scalar.h"

namespace lowbit {
IsaTable isa_table_scalar() { return driver::Kernels<VecScalar>::table(); }
}  // namespace lowbit

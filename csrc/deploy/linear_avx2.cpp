// Deploy matrix products instantiated for the avx2 instruction set (flags in CMakeLists.txt).
#include "simd/vec_avx2.h"
#include "deploy/linear_driver_impl.h"

namespace lowbit {
LinearIsaTable linear_table_avx2() { return deploy::LinearKernels<VecAvx2>::table(); }
}  // namespace lowbit

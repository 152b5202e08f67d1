// Deploy matrix products instantiated for the scalar instruction set (flags in CMakeLists.txt).
#include "simd/vec_scalar.h"
#include "deploy/linear_driver_impl.h"

namespace lowbit {
LinearIsaTable linear_table_scalar() { return deploy::LinearKernels<VecScalar>::table(); }
}  // namespace lowbit

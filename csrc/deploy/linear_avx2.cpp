// Deploy matrix products instantiated for the avx2 instruction set (flags in CMakeLists.txt).
#include "simd/vec_avx2.h"
#include "deploy/linear_driver_impl.h"
#include "deploy/gemv_avx2.h"

namespace lowbit {
LinearIsaTable linear_table_avx2() {
  using K = deploy::LinearKernels<VecAvx2>;
  return K::table(&deploy::Avx2FusedDot::make<K>);
}
}  // namespace lowbit

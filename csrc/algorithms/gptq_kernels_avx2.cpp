// GPTQ's inner loops for avx2 (compiler flags: CMakeLists.txt).
#include "algorithms/gptq_kernels_impl.h"

namespace lowbit {
GptqKernels gptq_kernels_avx2() { return {"avx2", &rank_k_update_loop, &grid_error_loop}; }
}  // namespace lowbit

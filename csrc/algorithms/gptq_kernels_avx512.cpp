// GPTQ's inner loops for avx512 (compiler flags: CMakeLists.txt).
#include "algorithms/gptq_kernels_impl.h"

namespace lowbit {
GptqKernels gptq_kernels_avx512() { return {"avx512", &rank_k_update_loop, &grid_error_loop}; }
}  // namespace lowbit
